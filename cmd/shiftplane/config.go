package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/shiftplane/shiftplane/policy"
)

// Config is the server configuration: file, SHIFTPLANE_* environment and
// flags, in rising precedence.
type Config struct {
	XDS struct {
		Address string `mapstructure:"address"`
	} `mapstructure:"xds"`
	API struct {
		Address   string `mapstructure:"address"`
		Token     string `mapstructure:"token"`
		TokenFile string `mapstructure:"tokenFile"`
		TLS       struct {
			Cert     string `mapstructure:"cert"`
			Key      string `mapstructure:"key"`
			ClientCA string `mapstructure:"clientCA"`
		} `mapstructure:"tls"`
	} `mapstructure:"api"`
	HTTP struct {
		Address string `mapstructure:"address"`
	} `mapstructure:"http"`
	Store struct {
		Path string `mapstructure:"path"`
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
}

// configKeys are every key the config accepts, with defaults and flag help.
var configKeys = []struct {
	key, flag, help string
	def             any
}{
	{"xds.address", "xds-address", "ADS and MetricsService gRPC address", "127.0.0.1:18000"},
	{"api.address", "api-address", "policy API gRPC address", "127.0.0.1:18001"},
	{"api.token", "api-token", "bearer token the policy API requires", ""},
	{"api.tokenFile", "api-token-file", "file holding the policy API bearer token", ""},
	{"api.tls.cert", "api-tls-cert", "policy API TLS certificate file", ""},
	{"api.tls.key", "api-tls-key", "policy API TLS key file", ""},
	{"api.tls.clientCA", "api-tls-client-ca", "CA that policy API clients' certificates must chain to (mTLS)", ""},
	{"http.address", "http-address", "address of /metrics, /healthz, /readyz and the status page", "127.0.0.1:18002"},
	{"store.path", "store-path", "bbolt file holding plans, state, events and the version counter", "shiftplane.db"},
	{"hooks.allowExec", "hooks-allow-exec", "allow plans to run exec hooks on this host", false},
	{"hooks.allowHosts", "hooks-allow-hosts", "hosts webhook hooks may call (default loopback)", []string{}},
	{"signal.adminURLs", "signal-admin-urls", "Envoy admin URLs to poll for stats", []string{}},
	{"signal.scrapeEvery", "signal-scrape-every", "how often to poll signal.adminURLs", time.Second},
	{"engine.tick", "engine-tick", "how often the engine re-evaluates rollouts", 100 * time.Millisecond},
	{"log.level", "log-level", "debug, info, warn or error", "info"},
	{"log.format", "log-format", "text or json", "text"},
}

// addConfigFlags adds --config and the flags of the config keys only (all
// of them when none is named): a command shows the flags it reads.
func addConfigFlags(fs *pflag.FlagSet, only ...string) {
	fs.String("config", "", "config file (YAML)")
	for _, k := range configKeys {
		if len(only) > 0 && !slices.Contains(only, k.key) {
			continue
		}
		switch d := k.def.(type) {
		case string:
			fs.String(k.flag, d, k.help)
		case bool:
			fs.Bool(k.flag, d, k.help)
		case []string:
			fs.StringSlice(k.flag, d, k.help)
		case time.Duration:
			fs.Duration(k.flag, d, k.help)
		}
	}
}

// loadConfig reads the config from its file, the environment and fs. Every
// problem names the key.
func loadConfig(fs *pflag.FlagSet) (Config, error) {
	v := viper.New()
	v.SetEnvPrefix("SHIFTPLANE")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for _, k := range configKeys {
		v.SetDefault(k.key, k.def)
		f := fs.Lookup(k.flag)
		if f == nil {
			continue // a command without this flag (validate)
		}
		if err := v.BindPFlag(k.key, f); err != nil {
			return Config{}, err
		}
	}
	if path, _ := fs.GetString("config"); path != "" {
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
		if err := checkUnknownKeys(v); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
	}
	var c Config
	if err := v.UnmarshalExact(&c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, c.Validate()
}

func checkUnknownKeys(v *viper.Viper) error {
	known := map[string]bool{}
	for _, k := range configKeys {
		known[strings.ToLower(k.key)] = true
	}
	var errs []error
	for _, k := range v.AllKeys() {
		if !known[k] {
			errs = append(errs, fmt.Errorf("%s: unknown key", k))
		}
	}
	return errors.Join(errs...)
}

// Validate checks the config; errors name the key.
func (c Config) Validate() error {
	var errs []error
	for _, a := range []struct{ key, addr string }{{"xds.address", c.XDS.Address}, {"api.address", c.API.Address}, {"http.address", c.HTTP.Address}} {
		if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("%s: must be host:port, got %q", a.key, a.addr))
		}
	}
	if c.Store.Path == "" {
		errs = append(errs, errors.New("store.path: must not be empty"))
	}
	if c.API.TokenFile != "" {
		if _, err := os.Stat(c.API.TokenFile); err != nil {
			errs = append(errs, fmt.Errorf("api.tokenFile: %w", err))
		}
	}
	if (c.API.TLS.Cert == "") != (c.API.TLS.Key == "") {
		errs = append(errs, errors.New("api.tls: cert and key must be given together"))
	}
	if c.API.TLS.ClientCA != "" && c.API.TLS.Cert == "" {
		errs = append(errs, errors.New("api.tls.clientCA: needs api.tls.cert and api.tls.key"))
	}
	if !isLoopback(c.API.Address) && c.API.Token == "" && c.API.TokenFile == "" && c.API.TLS.ClientCA == "" {
		errs = append(errs, fmt.Errorf("api.address: %q is not loopback; set api.token, api.tokenFile or api.tls.clientCA (mTLS) so the policy API is not open", c.API.Address))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: must be debug, info, warn or error, got %q", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: must be text or json, got %q", c.Log.Format))
	}
	if c.Engine.Tick <= 0 {
		errs = append(errs, errors.New("engine.tick: must be > 0"))
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
