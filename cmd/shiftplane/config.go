package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/notify"
)

// Config is the server configuration: file, SHIFTPLANE_* environment and
// flags, in rising precedence.
type Config struct {
	XDS struct {
		Address string `mapstructure:"address"`
		TLS     struct {
			Cert     string `mapstructure:"cert"`
			Key      string `mapstructure:"key"`
			ClientCA string `mapstructure:"clientCA"`
		} `mapstructure:"tls"`
		// Insecure allows a non-loopback xds.address without mTLS.
		Insecure   bool          `mapstructure:"insecure"`
		ReadyGrace time.Duration `mapstructure:"readyGrace"`
		// LoadReportingInterval is the load_reporting_interval sent to LRS
		// clients (proxyless gRPC).
		LoadReportingInterval time.Duration `mapstructure:"loadReportingInterval"`
		Limits                struct {
			MaxMessageBytes         int `mapstructure:"maxMessageBytes"`
			MaxStreamsPerConnection int `mapstructure:"maxStreamsPerConnection"`
			MaxStreamsPerSource     int `mapstructure:"maxStreamsPerSource"`
			MaxStreams              int `mapstructure:"maxStreams"`
		} `mapstructure:"limits"`
		// AllowEmptyAtStart publishes an empty configuration when the
		// server starts with no rollouts (policy.HoldEmptyAtStart).
		AllowEmptyAtStart bool `mapstructure:"allowEmptyAtStart"`
	} `mapstructure:"xds"`
	API struct {
		Address   string `mapstructure:"address"`
		Token     string `mapstructure:"token"`
		TokenFile string `mapstructure:"tokenFile"`
		// Insecure allows a token over plain text off loopback.
		Insecure bool `mapstructure:"insecure"`
		TLS      struct {
			Cert     string `mapstructure:"cert"`
			Key      string `mapstructure:"key"`
			ClientCA string `mapstructure:"clientCA"`
		} `mapstructure:"tls"`
	} `mapstructure:"api"`
	HTTP struct {
		Address      string `mapstructure:"address"`
		MetricsToken string `mapstructure:"metricsToken"`
	} `mapstructure:"http"`
	Store struct {
		// Backend is bbolt (one machine, Path) or etcd (several replicas).
		Backend string     `mapstructure:"backend"`
		Path    string     `mapstructure:"path"`
		Etcd    EtcdConfig `mapstructure:"etcd"`
	} `mapstructure:"store"`
	Hooks struct {
		AllowExec  bool     `mapstructure:"allowExec"`
		AllowHosts []string `mapstructure:"allowHosts"`
	} `mapstructure:"hooks"`
	Signal struct {
		// AdminURLs are Envoy admin endpoints polled for stats, for Envoys
		// run without the MetricsService sink.
		AdminURLs   []string      `mapstructure:"adminURLs"`
		ScrapeEvery time.Duration `mapstructure:"scrapeEvery"`
	} `mapstructure:"signal"`
	Engine struct {
		Tick time.Duration `mapstructure:"tick"`
	} `mapstructure:"engine"`
	Log struct {
		Level  string `mapstructure:"level"`
		Format string `mapstructure:"format"`
	} `mapstructure:"log"`
	// Notifications are the webhook sinks told about rollout events (config
	// file only: a list has no flag).
	Notifications []notify.SinkConfig `mapstructure:"notifications"`
	Notify        struct {
		AllowHosts []string `mapstructure:"allowHosts"`
	} `mapstructure:"notify"`
}

// configKeys are every key the config accepts, with defaults and flag help.
var configKeys = []struct {
	key, flag, help string
	def             any
}{
	{"xds.address", "xds-address", "ADS and MetricsService gRPC address", "127.0.0.1:18000"},
	{"xds.tls.cert", "xds-tls-cert", "xDS port TLS certificate file (reloaded when it changes)", ""},
	{"xds.tls.key", "xds-tls-key", "xDS port TLS key file", ""},
	{"xds.tls.clientCA", "xds-tls-client-ca", "CA every Envoy's client certificate must chain to (mTLS); the certificate's SAN must name the node.id", ""},
	{"xds.insecure", "xds-insecure", "allow a non-loopback xds.address without mTLS (anyone who reaches it reads config and reports stats)", false},
	{"xds.readyGrace", "xds-ready-grace", "how long a stream that has ACKed nothing, or a stats-only node, still holds back convergence", 10 * time.Second},
	{"xds.loadReportingInterval", "xds-load-reporting-interval", "how often proxyless gRPC clients report their per-cluster load (LRS) to the signal gate", time.Second},
	{"xds.limits.maxMessageBytes", "xds-max-message-bytes", "largest gRPC message read on the xDS port (a stats flush)", 4 << 20},
	{"xds.limits.maxStreamsPerConnection", "xds-max-streams-per-connection", "concurrent streams per HTTP/2 connection on the xDS port", 16},
	{"xds.limits.maxStreamsPerSource", "xds-max-streams-per-source", "open xDS and stats streams per client IP address", 256},
	{"xds.limits.maxStreams", "xds-max-streams", "open xDS and stats streams overall", 20000},
	{"api.address", "api-address", "policy API gRPC address", "127.0.0.1:18001"},
	{"api.token", "api-token", "bearer token the policy API requires", ""},
	{"api.tokenFile", "api-token-file", "file holding the policy API bearer token", ""},
	{"api.tls.cert", "api-tls-cert", "policy API TLS certificate file", ""},
	{"api.tls.key", "api-tls-key", "policy API TLS key file", ""},
	{"api.tls.clientCA", "api-tls-client-ca", "CA that policy API clients' certificates must chain to (mTLS)", ""},
	{"api.insecure", "api-insecure", "allow api.token off loopback without api.tls (the token crosses the network in clear text)", false},
	{"http.address", "http-address", "address of /metrics, /healthz, /readyz and the dashboard", "127.0.0.1:18002"},
	{"http.metricsToken", "http-metrics-token", "bearer token that may read /metrics off loopback (besides the API token)", ""},
	{"store.backend", "store-backend", "bbolt (one machine) or etcd (several replicas, one leader)", "bbolt"},
	{"store.path", "store-path", "bbolt file holding plans, state, events and the version counter", "shiftplane.db"},
	{"store.etcd.endpoints", "store-etcd-endpoints", "etcd client URLs (store.backend: etcd)", []string{}},
	{"store.etcd.prefix", "store-etcd-prefix", "key prefix of this shiftplane's state in etcd", "/shiftplane/"},
	{"store.etcd.dialTimeout", "store-etcd-dial-timeout", "how long to wait for an etcd connection", 5 * time.Second},
	{"store.etcd.requestTimeout", "store-etcd-request-timeout", "bound of each etcd request", 5 * time.Second},
	{"store.etcd.sessionTTL", "store-etcd-session-ttl", "lease of a replica's etcd session: a leader that cannot renew it this long loses leadership (whole seconds)", 5 * time.Second},
	{"store.etcd.reportEvery", "store-etcd-report-every", "how often at most a replica writes its nodes' ACK state and stats to etcd", 500 * time.Millisecond},
	{"store.etcd.advertise", "store-etcd-advertise", "policy API address the other replicas forward calls to (default api.address)", ""},
	{"store.etcd.tls.ca", "store-etcd-tls-ca", "CA that etcd's server certificates chain to", ""},
	{"store.etcd.tls.cert", "store-etcd-tls-cert", "client certificate for etcd", ""},
	{"store.etcd.tls.key", "store-etcd-tls-key", "client key for etcd", ""},
	{"xds.allowEmptyAtStart", "xds-allow-empty-at-start", "with no rollouts at start, publish an empty configuration (Envoys of an earlier run drop theirs); by default nothing is published until a plan arrives", false},
	{"hooks.allowExec", "hooks-allow-exec", "allow plans to run exec hooks on this host", false},
	{"hooks.allowHosts", "hooks-allow-hosts", "hosts webhook hooks may call (default loopback)", []string{}},
	{"signal.adminURLs", "signal-admin-urls", "Envoy admin URLs to poll for stats", []string{}},
	{"signal.scrapeEvery", "signal-scrape-every", "how often to poll signal.adminURLs", time.Second},
	{"engine.tick", "engine-tick", "the engine's safety tick: events act at once, this re-evaluates every rollout as a backstop", time.Second},
	{"log.level", "log-level", "debug, info, warn or error", "info"},
	{"log.format", "log-format", "text or json", "text"},
	{"notify.allowHosts", "notify-allow-hosts", "hosts notification sinks may call (default loopback)", []string{}},
}

// fileOnlyKeys are keys only a config file can set.
var fileOnlyKeys = []string{"notifications"}

// addConfigFlags adds --config and the flags of the config keys only (all
// of them when none is named): a command shows the flags it reads.
func addConfigFlags(fs *pflag.FlagSet, only ...string) {
	fs.String("config", "", "config file (YAML); default $"+configEnv)
	for _, k := range configKeys {
		if len(only) > 0 && !slices.Contains(only, k.key) {
			continue
		}
		switch d := k.def.(type) {
		case string:
			fs.String(k.flag, d, k.help)
		case bool:
			fs.Bool(k.flag, d, k.help)
		case int:
			fs.Int(k.flag, d, k.help)
		case []string:
			fs.StringSlice(k.flag, d, k.help)
		case time.Duration:
			// Kept as text so a flag's bad duration gets the same error as
			// the file's and the environment's.
			v := durationText(d.String())
			fs.Var(&v, k.flag, k.help)
		default:
			panic(fmt.Sprintf("config key %s: no flag for a default of type %T", k.key, k.def))
		}
	}
}

// configEnv names the config file when --config is not given.
const configEnv = "SHIFTPLANE_CONFIG"

// durationText is a duration flag parsed by loadConfig, not by pflag.
type durationText string

func (d *durationText) String() string     { return string(*d) }
func (d *durationText) Set(s string) error { *d = durationText(s); return nil }
func (d *durationText) Type() string       { return "duration" }

// envNames are the environment variables that set a key: the flag's name
// (SHIFTPLANE_HOOKS_ALLOW_EXEC) and the key's own spelling that earlier
// releases read (SHIFTPLANE_HOOKS_ALLOWEXEC); one name when both agree.
func envNames(key, flag string) []string {
	names := []string{"SHIFTPLANE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
	if old := "SHIFTPLANE_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_")); old != names[0] {
		names = append(names, old)
	}
	return names
}

// keyError is a problem with one key's value; loadConfig adds where the
// value came from.
type keyError struct {
	key string // the key whose source the message is completed with
	msg string // the whole message, starting with the key
}

func (e *keyError) Error() string { return e.msg }

func keyErrorf(key, format string, args ...any) error {
	return &keyError{key: key, msg: fmt.Sprintf(format, args...)}
}

// loadConfig reads the config from its file (--config or $SHIFTPLANE_CONFIG),
// the environment (SHIFTPLANE_*) and fs, in rising precedence. Every problem
// names the key, the value and where it came from. The values are converted
// here, not by viper: viper would take a bare number as nanoseconds.
func loadConfig(fs *pflag.FlagSet) (Config, error) {
	file := viper.New()
	path, _ := fs.GetString("config")
	pathFrom := "--config"
	if path == "" {
		path, pathFrom = os.Getenv(configEnv), configEnv
	}
	if path != "" {
		file.SetConfigFile(path)
		if err := file.ReadInConfig(); err != nil {
			return Config{}, fmt.Errorf("config file %s (from %s): %w", path, pathFrom, err)
		}
		if err := checkUnknownKeys(file, path); err != nil {
			return Config{}, err
		}
	}
	out := viper.New()
	from := map[string]string{}
	var errs []error
	for _, k := range configKeys {
		raw, src, err := lookupKey(k.key, k.flag, fs, file, path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		from[k.key] = src
		if src == "" {
			from[k.key] = "the default"
			out.Set(k.key, k.def)
			continue
		}
		val, err := convert(k.def, raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s from %s: %w", k.key, showValue(raw), src, err))
			continue
		}
		out.Set(k.key, val)
	}
	for _, k := range fileOnlyKeys {
		if file.IsSet(k) {
			out.Set(k, file.Get(k))
			from[k] = path
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	var c Config
	if err := out.UnmarshalExact(&c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, withSources(err, from)
	}
	return c, nil
}

// lookupKey returns a key's raw value and where it came from (a flag, an
// environment variable, the file), or "" for the default.
func lookupKey(key, flag string, fs *pflag.FlagSet, file *viper.Viper, path string) (any, string, error) {
	if f := fs.Lookup(flag); f != nil && f.Changed {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			return sv.GetSlice(), "--" + flag, nil
		}
		return f.Value.String(), "--" + flag, nil
	}
	var setName, setVal string
	for _, name := range envNames(key, flag) {
		val, ok := os.LookupEnv(name)
		if !ok || val == "" {
			continue
		}
		if setName != "" && val != setVal {
			return nil, "", fmt.Errorf("%s: %s=%q and %s=%q disagree; set one of them", key, setName, setVal, name, val)
		}
		if setName == "" {
			setName, setVal = name, val
		}
	}
	if setName != "" {
		return setVal, setName, nil
	}
	if file.IsSet(key) {
		return file.Get(key), path, nil
	}
	return nil, "", nil
}

// convert turns a raw value (text from a flag or the environment, or what
// YAML decoded) into the type of the key's default.
func convert(def, raw any) (any, error) {
	switch def.(type) {
	case string:
		switch r := raw.(type) {
		case string:
			return r, nil
		case int, int64, uint64, float64, bool:
			return fmt.Sprint(r), nil
		}
		return nil, errors.New("not a string")
	case bool:
		switch r := raw.(type) {
		case bool:
			return r, nil
		case string:
			if b, err := strconv.ParseBool(r); err == nil {
				return b, nil
			}
		}
		return nil, errors.New("not true or false")
	case int:
		switch r := raw.(type) {
		case int:
			return r, nil
		case string:
			if n, err := strconv.Atoi(r); err == nil {
				return n, nil
			}
		}
		return nil, errors.New("not a whole number")
	case []string:
		switch r := raw.(type) {
		case []string:
			return r, nil
		case string: // the environment: comma-separated
			var list []string
			for _, s := range strings.Split(r, ",") {
				if s = strings.TrimSpace(s); s != "" {
					list = append(list, s)
				}
			}
			return list, nil
		case []any:
			list := make([]string, 0, len(r))
			for i, e := range r {
				switch e.(type) {
				case string, int, float64, bool:
					list = append(list, fmt.Sprint(e))
				default:
					return nil, fmt.Errorf("[%d] is not a string", i)
				}
			}
			return list, nil
		}
		return nil, errors.New("not a list of strings")
	case time.Duration:
		s, ok := raw.(string)
		if !ok {
			if _, isNum := raw.(int); isNum || isFloat(raw) {
				return nil, errors.New("a bare number is not a duration (write e.g. 100ms or 1s)")
			}
			return nil, errors.New("not a duration (write e.g. 100ms or 1s)")
		}
		if _, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil {
			return nil, errors.New("a bare number is not a duration (write e.g. 100ms or 1s)")
		}
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return nil, errors.New("not a duration (write e.g. 100ms or 1s)")
		}
		return d, nil
	}
	return nil, fmt.Errorf("no conversion to %T", def)
}

func isFloat(v any) bool { _, ok := v.(float64); return ok }

// showValue prints a raw value the way a user wrote it: text quoted,
// numbers bare.
func showValue(raw any) string {
	switch r := raw.(type) {
	case string:
		return strconv.Quote(r)
	case []string:
		return fmt.Sprintf("%q", r)
	}
	return fmt.Sprint(raw)
}

// withSources completes each key error from Validate with where the key's
// value came from.
func withSources(err error, from map[string]string) error {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	out := make([]error, 0, len(list))
	for _, e := range list {
		var ke *keyError
		if errors.As(e, &ke) && from[ke.key] != "" {
			e = fmt.Errorf("%w (%s from %s)", e, ke.key, from[ke.key])
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func checkUnknownKeys(v *viper.Viper, path string) error {
	known := map[string]bool{}
	for _, k := range configKeys {
		known[strings.ToLower(k.key)] = true
	}
	for _, k := range fileOnlyKeys {
		known[k] = true
	}
	var errs []error
	for _, k := range v.AllKeys() {
		if !known[k] {
			errs = append(errs, fmt.Errorf("%s: unknown key in %s (set to %s)", k, path, showValue(v.Get(k))))
		}
	}
	return errors.Join(errs...)
}

// Validate checks the config; errors name the key and the value (loadConfig
// adds where the value came from).
func (c Config) Validate() error {
	var errs []error
	for _, a := range []struct{ key, addr string }{{"xds.address", c.XDS.Address}, {"api.address", c.API.Address}, {"http.address", c.HTTP.Address}} {
		if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "" {
			errs = append(errs, keyErrorf(a.key, "%s: must be host:port, got %q", a.key, a.addr))
		}
	}
	errs = append(errs, c.validateXDS()...)
	switch c.Store.Backend {
	case "bbolt":
		if c.Store.Path == "" {
			errs = append(errs, keyErrorf("store.path", `store.path: must not be empty, got ""`))
		}
	case "etcd":
		errs = append(errs, c.Store.Etcd.validate()...)
	default:
		errs = append(errs, keyErrorf("store.backend", "store.backend: must be bbolt or etcd, got %q", c.Store.Backend))
	}
	if c.API.TokenFile != "" {
		if _, err := os.Stat(c.API.TokenFile); err != nil {
			errs = append(errs, keyErrorf("api.tokenFile", "api.tokenFile: %q: %v", c.API.TokenFile, err))
		}
	}
	if (c.API.TLS.Cert == "") != (c.API.TLS.Key == "") {
		key := "api.tls.cert"
		if c.API.TLS.Cert == "" {
			key = "api.tls.key"
		}
		errs = append(errs, keyErrorf(key, "api.tls: cert and key must be given together, got cert %q and key %q", c.API.TLS.Cert, c.API.TLS.Key))
	}
	if c.API.TLS.ClientCA != "" && c.API.TLS.Cert == "" {
		errs = append(errs, keyErrorf("api.tls.clientCA", "api.tls.clientCA: %q needs api.tls.cert and api.tls.key", c.API.TLS.ClientCA))
	}
	if !isLoopback(c.API.Address) && c.API.Token == "" && c.API.TokenFile == "" && c.API.TLS.ClientCA == "" {
		errs = append(errs, keyErrorf("api.address", "api.address: %q is not loopback; set api.token, api.tokenFile or api.tls.clientCA (mTLS) so the policy API is not open", c.API.Address))
	}
	hasToken := c.API.Token != "" || c.API.TokenFile != ""
	if !isLoopback(c.API.Address) && hasToken && c.API.TLS.Cert == "" && !c.API.Insecure {
		errs = append(errs, keyErrorf("api.address", "api.address: %q is not loopback and api.tls.cert is not set: the bearer token would cross the network in clear text; set api.tls.cert and api.tls.key, or api.insecure: true", c.API.Address))
	}
	if !isLoopback(c.HTTP.Address) && !hasToken {
		errs = append(errs, keyErrorf("http.address", "http.address: %q is not loopback: the dashboard and /metrics then need a token; set api.token or api.tokenFile (and http.metricsToken for scrapers, if wanted)", c.HTTP.Address))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, keyErrorf("log.level", "log.level: must be debug, info, warn or error, got %q", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, keyErrorf("log.format", "log.format: must be text or json, got %q", c.Log.Format))
	}
	if c.Engine.Tick <= 0 {
		errs = append(errs, keyErrorf("engine.tick", "engine.tick: must be > 0, got %s", c.Engine.Tick))
	}
	if c.Signal.ScrapeEvery <= 0 {
		errs = append(errs, keyErrorf("signal.scrapeEvery", "signal.scrapeEvery: must be > 0, got %s", c.Signal.ScrapeEvery))
	}
	if err := notify.Validate(c.Notifications, c.Notify.AllowHosts); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ValidateOptions returns what the config lets plans do.
func (c Config) ValidateOptions() policy.ValidateOptions {
	return policy.ValidateOptions{AllowExec: c.Hooks.AllowExec, AllowHosts: c.Hooks.AllowHosts}
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validateXDS checks the xds.* keys: TLS files given together, limits
// positive, and no open xDS port off loopback unless xds.insecure says so.
func (c Config) validateXDS() []error {
	var errs []error
	x := c.XDS
	if (x.TLS.Cert == "") != (x.TLS.Key == "") {
		key := "xds.tls.cert"
		if x.TLS.Cert == "" {
			key = "xds.tls.key"
		}
		errs = append(errs, keyErrorf(key, "xds.tls: cert and key must be given together, got cert %q and key %q", x.TLS.Cert, x.TLS.Key))
	}
	if x.TLS.ClientCA != "" && x.TLS.Cert == "" {
		errs = append(errs, keyErrorf("xds.tls.clientCA", "xds.tls.clientCA: %q needs xds.tls.cert and xds.tls.key", x.TLS.ClientCA))
	}
	for _, f := range []struct{ key, path string }{{"xds.tls.cert", x.TLS.Cert}, {"xds.tls.key", x.TLS.Key}, {"xds.tls.clientCA", x.TLS.ClientCA}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, keyErrorf(f.key, "%s: %q: %v", f.key, f.path, err))
		}
	}
	if !isLoopback(x.Address) && x.TLS.ClientCA == "" && !x.Insecure {
		errs = append(errs, keyErrorf("xds.address", "xds.address: %q is not loopback and xds.tls.clientCA is not set: any client that reaches it could read every cluster and route and forge canary stats; set xds.tls.cert, xds.tls.key and xds.tls.clientCA (mTLS), or xds.insecure: true", x.Address))
	}
	if x.ReadyGrace <= 0 {
		errs = append(errs, keyErrorf("xds.readyGrace", "xds.readyGrace: must be > 0, got %s", x.ReadyGrace))
	}
	if x.LoadReportingInterval < 100*time.Millisecond || x.LoadReportingInterval > time.Minute {
		errs = append(errs, keyErrorf("xds.loadReportingInterval", "xds.loadReportingInterval: must be 100ms..1m, got %s", x.LoadReportingInterval))
	}
	for _, l := range []struct {
		key string
		v   int
	}{
		{"xds.limits.maxMessageBytes", x.Limits.MaxMessageBytes},
		{"xds.limits.maxStreamsPerConnection", x.Limits.MaxStreamsPerConnection},
		{"xds.limits.maxStreamsPerSource", x.Limits.MaxStreamsPerSource},
		{"xds.limits.maxStreams", x.Limits.MaxStreams},
	} {
		if l.v <= 0 {
			errs = append(errs, keyErrorf(l.key, "%s: must be > 0, got %d", l.key, l.v))
		}
	}
	if x.Limits.MaxMessageBytes > 0 && x.Limits.MaxMessageBytes < 64<<10 {
		errs = append(errs, keyErrorf("xds.limits.maxMessageBytes", "xds.limits.maxMessageBytes: must be at least 65536 (an Envoy's stats flush), got %d", x.Limits.MaxMessageBytes))
	}
	return errs
}
