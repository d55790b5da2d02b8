package harness

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	envoyconfigs "github.com/shiftplane/shiftplane/envoy-configs"
)

// proxyBootstrap is a StaticBootstrap: listener "direct" routes everything
// to app-v1; listener "weighted" takes its routes over file-based RDS, so
// they show up under dynamic_route_configs like routes from shiftplane do.
const proxyBootstrap = `
node: {id: {{json .NodeID}}, cluster: {{json .Cluster}}}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{.AdminPort}}}}
static_resources:
  listeners:
  - name: direct
    address: {socket_address: {address: 127.0.0.1, port_value: %[1]d}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: direct
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: app-v1}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: weighted
    address: {socket_address: {address: 127.0.0.1, port_value: %[2]d}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: weighted
          rds:
            route_config_name: weighted
            config_source:
              resource_api_version: V3
              path_config_source: {path: %[3]q}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: app-v1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app-v1
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[4]d}}}}]}]
  - name: app-v2
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app-v2
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[5]d}}}}]}]
`

const weightedRoutes = `
version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: weighted
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {prefix: /}
      route:
        weighted_clusters:
          clusters: [{name: app-v1, weight: 80}, {name: app-v2, weight: 20}]
`

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestEnvoyProxiesToBackend(t *testing.T) {
	v1 := StartBackend(t, "v1")
	v2 := StartBackend(t, "v2")
	direct, weighted := FreePort(t), FreePort(t)
	rds := filepath.Join(t.TempDir(), "rds.yaml")
	if err := os.WriteFile(rds, []byte(weightedRoutes), 0o644); err != nil {
		t.Fatal(err)
	}
	e := StartEnvoy(t, EnvoyOptions{
		StaticBootstrap: fmt.Sprintf(proxyBootstrap, direct, weighted, rds, v1.Port, v2.Port),
	})
	ctx := ctxFor(t, time.Minute)
	directAddr := fmt.Sprintf("127.0.0.1:%d", direct)
	if err := e.WaitListener(ctx, directAddr); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitLive(ctx); err != nil {
		t.Fatal(err)
	}

	res, err := HTTPLoad(ctx, "http://"+directAddr+"/", LoadOptions{Requests: 50, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Total != 50 || res.OK != 50 || res.ByVersion["v1"] != 50 || res.Failures != 0 {
		t.Fatalf("through envoy: %v; want 50 OK from v1", res)
	}
	if got := v1.Requests(); got != 50 {
		t.Errorf("backend v1 saw %d requests, want 50", got)
	}
	if v1.FirstRequest().IsZero() || v1.LastRequest().Before(v1.FirstRequest()) {
		t.Errorf("backend v1 timestamps: first %v last %v", v1.FirstRequest(), v1.LastRequest())
	}
	// Envoy counts a request as completed a moment after the client has
	// read the response, hence the wait.
	const completed = "cluster.app-v1.upstream_rq_completed"
	if _, err := e.WaitStat(ctx, completed, func(v float64) bool { return v >= 50 }); err != nil {
		t.Fatal(err)
	}
	stats, err := e.Stats(ctx, `^cluster\.app-v1\.upstream_rq_`)
	if err != nil {
		t.Fatal(err)
	}
	if stats[completed] < 50 || stats["cluster.app-v1.upstream_rq_200"] < 50 || len(stats) < 3 {
		t.Fatalf("stats %v: want %s and upstream_rq_200 ≥ 50", stats, completed)
	}
	for name := range stats {
		if !strings.HasPrefix(name, "cluster.app-v1.upstream_rq_") {
			t.Fatalf("filter let %s through", name)
		}
	}

	t.Run("route weights from RDS", func(t *testing.T) {
		w, err := e.RouteWeights(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(w) != 2 || w["app-v1"] != 80 || w["app-v2"] != 20 {
			t.Fatalf("RouteWeights = %v, want app-v1:80 app-v2:20", w)
		}
		res, err := HTTPLoad(ctx, fmt.Sprintf("http://127.0.0.1:%d/", weighted), LoadOptions{Requests: 200, Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		// P(no v2 in 200 draws at 20%) ≈ 4e-20.
		if res.OK != 200 || res.ByVersion["v1"] == 0 || res.ByVersion["v2"] == 0 {
			t.Fatalf("weighted split: %v; want 200 OK from both versions", res)
		}
	})

	t.Run("failing backend", func(t *testing.T) {
		v1.SetFailing(http.StatusServiceUnavailable)
		defer v1.SetFailing(0)
		res, err := HTTPLoad(ctx, "http://"+directAddr+"/", LoadOptions{Requests: 10})
		if err != nil {
			t.Fatal(err)
		}
		if res.Failures != 10 || res.ByVersionStatus[VersionStatus{"v1", 503}] != 10 {
			t.Fatalf("%v; want 10 × 503 from v1", res)
		}
	})

	t.Run("restart keeps admin URL", func(t *testing.T) {
		oldPID := e.PID()
		if err := e.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if e.PID() == oldPID {
			t.Fatalf("PID %d unchanged after Restart", oldPID)
		}
		if err := e.WaitListener(ctx, directAddr); err != nil {
			t.Fatal(err)
		}
		res, err := HTTPLoad(ctx, "http://"+directAddr+"/", LoadOptions{Requests: 5})
		if err != nil || res.OK != 5 {
			t.Fatalf("after restart: %v, %v", res, err)
		}
		if _, err := e.Stats(ctx, "upstream_rq_completed"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kill", func(t *testing.T) {
		if err := e.Kill(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-e.Done():
		default:
			t.Fatal("Done not closed after Kill")
		}
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := e.Stats(short, ""); err == nil {
			t.Fatal("admin still answers after Kill")
		}
	})
}

func TestBootstrapValidates(t *testing.T) {
	dir := t.TempDir()
	tests := map[string]envoyconfigs.Bootstrap{
		"sotw":  {NodeID: "test-node-1", Cluster: "test-fleet", AdminPort: FreePort(t), XDSAddress: "127.0.0.1:18123"},
		"delta": {NodeID: "test-node-2", Cluster: "test-fleet", AdminPort: 0, XDSAddress: "127.0.0.1:18124", UseDelta: true},
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			out, err := b.Render()
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, name+".yaml")
			if err := os.WriteFile(p, out, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := ValidateBootstrap(t, p); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("committed envoy.yaml", func(t *testing.T) {
		if err := ValidateBootstrap(t, filepath.Join(RepoRoot(t), "envoy-configs", "envoy.yaml")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("committed envoy-ha.yaml", func(t *testing.T) {
		if err := ValidateBootstrap(t, filepath.Join(RepoRoot(t), "envoy-configs", "envoy-ha.yaml")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a broken bootstrap is rejected", func(t *testing.T) {
		out, err := envoyconfigs.Default().Render()
		if err != nil {
			t.Fatal(err)
		}
		bad := strings.Replace(string(out), "emit_tags_as_labels", "emit_tags_as_labelz", 1)
		p := filepath.Join(dir, "bad.yaml")
		if err := os.WriteFile(p, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := ValidateBootstrap(t, p); err == nil || !strings.Contains(err.Error(), "emit_tags_as_labelz") {
			t.Fatalf("err = %v, want a rejection naming the bad field", err)
		}
	})
}

// An ADS Envoy with nothing to talk to still starts and serves admin, and
// gets the node it was given.
func TestStartEnvoyADS(t *testing.T) {
	for name, delta := range map[string]bool{"sotw": false, "delta": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := StartEnvoy(t, EnvoyOptions{NodeID: "ads-" + name, XDSAddr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), Delta: delta})
			dump, err := e.ConfigDump(ctxFor(t, 30*time.Second), "")
			if err != nil {
				t.Fatal(err)
			}
			want := []string{`"id": "ads-` + name + `"`, `"cluster": "shiftplane-fleet"`}
			if delta {
				want = append(want, "DELTA_GRPC")
			}
			for _, w := range want {
				if !strings.Contains(string(dump), w) {
					t.Errorf("config_dump lacks %s", w)
				}
			}
			// Envoy answers 404 for a resource type it holds none of.
			w, err := e.RouteWeights(ctxFor(t, 30*time.Second))
			if err != nil || len(w) != 0 {
				t.Errorf("RouteWeights with no routes = %v, %v; want empty", w, err)
			}
			_, err = e.WaitStat(ctxFor(t, 200*time.Millisecond), "no.such.stat", func(float64) bool { return true })
			if err == nil || !strings.Contains(err.Error(), "absent") {
				t.Errorf("WaitStat of a missing stat: %v; want a timeout saying absent", err)
			}
		})
	}
}

func TestBackend(t *testing.T) {
	b := StartBackend(t, "v7")
	ctx := ctxFor(t, 30*time.Second)
	res, err := HTTPLoad(ctx, b.URL, LoadOptions{Requests: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 3 || res.ByVersion["v7"] != 3 {
		t.Fatalf("%v; want 3 OK from v7", res)
	}

	b.SetFailing(500)
	res, _ = HTTPLoad(ctx, b.URL, LoadOptions{Requests: 2})
	if res.ByVersionStatus[VersionStatus{"v7", 500}] != 2 || res.Failures != 2 || b.Failures() != 2 {
		t.Fatalf("failing: %v, backend failures %d; want 2 × 500", res, b.Failures())
	}
	b.SetFailing(0)

	b.SetDelay(300 * time.Millisecond)
	res, _ = HTTPLoad(ctx, b.URL, LoadOptions{Requests: 4, Concurrency: 4})
	if res.OK != 4 || b.MaxInFlight() < 2 || res.Elapsed < 300*time.Millisecond {
		t.Fatalf("slow: %v, max in flight %d; want 4 OK, ≥ 2 at once, ≥ 300ms", res, b.MaxInFlight())
	}
	if b.InFlight() != 0 || b.Requests() != 9 {
		t.Fatalf("in flight %d, requests %d; want 0 and 9", b.InFlight(), b.Requests())
	}

	// A request cut off by the client's timeout is a transport error.
	b.SetDelay(time.Minute)
	res, _ = HTTPLoad(ctx, b.URL, LoadOptions{Requests: 1, Timeout: 100 * time.Millisecond})
	if res.TransportErrors != 1 || res.Failures != 1 || res.FirstError == "" {
		t.Fatalf("timeout: %v; want one transport error", res)
	}

	// Close abandons delayed requests; the port is then refused.
	b.Close()
	res, _ = HTTPLoad(ctx, b.URL, LoadOptions{Requests: 1})
	if res.TransportErrors != 1 {
		t.Fatalf("after Close: %v; want a transport error", res)
	}
	// The same address can be taken again.
	again := StartBackend(t, "v8", WithAddr(b.Addr))
	if res, _ := HTTPLoad(ctx, again.URL, LoadOptions{Requests: 1}); res.ByVersion["v8"] != 1 {
		t.Fatalf("restarted backend: %v", res)
	}
}

func TestHTTPLoadBounds(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	for name, target := range map[string]string{
		"not loopback": "http://192.0.2.1/",
		"bad scheme":   "ftp://127.0.0.1/",
	} {
		if _, err := HTTPLoad(ctx, target, LoadOptions{Requests: 1}); err == nil {
			t.Errorf("%s: HTTPLoad(%s) did not refuse", name, target)
		}
	}
	b := StartBackend(t, "v1")
	if _, err := HTTPLoad(ctx, b.URL, LoadOptions{}); err == nil {
		t.Error("HTTPLoad without Requests or Duration did not refuse")
	}
	if b.Requests() != 0 {
		t.Fatalf("refused runs sent %d requests", b.Requests())
	}

	// Rate and Duration bound the run: 50/s for 400ms is about 20 requests.
	res, err := HTTPLoad(ctx, b.URL, LoadOptions{Duration: 400 * time.Millisecond, Rate: 50, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Total < 1 || res.Total > 25 || res.Failures != 0 {
		t.Fatalf("rate-limited run: %v; want 1..25 requests, no failures", res)
	}
	if res.Elapsed > 2*time.Second {
		t.Fatalf("Duration 400ms run took %v", res.Elapsed)
	}
}

func TestProcess(t *testing.T) {
	bin := BuildBinary(t, "./test/harness/testdata/sleeper")
	if again := BuildBinary(t, "./test/harness/testdata/sleeper"); again != bin {
		t.Fatalf("second build gave %s, want cached %s", again, bin)
	}
	ctx := ctxFor(t, 30*time.Second)
	waitOutput := func(p *Process, want string) {
		t.Helper()
		for !strings.Contains(p.Output(), want) {
			select {
			case <-ctx.Done():
				t.Fatalf("output %q never contained %q", p.Output(), want)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}

	t.Run("stop", func(t *testing.T) {
		p := StartProcess(t, bin, nil, []string{"SLEEPER_GREETING=hello"})
		waitOutput(p, "ready hello")
		if err := p.Stop(); err != nil {
			t.Fatal(err)
		}
		code, err := p.Wait(ctx)
		if err != nil || code != 3 || !strings.Contains(p.Output(), "got SIGTERM") {
			t.Fatalf("exit %d, %v, output %q; want 3 after SIGTERM", code, err, p.Output())
		}
	})
	t.Run("stop escalates to kill", func(t *testing.T) {
		p := StartProcess(t, bin, []string{"-ignore-term"}, nil)
		waitOutput(p, "ready")
		if err := p.p.stop(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("stop of a process ignoring SIGTERM: %v; want killed", err)
		}
		if code, _ := p.Wait(ctx); code != -1 {
			t.Fatalf("exit %d, want -1 (signal)", code)
		}
	})
	t.Run("kill and wait", func(t *testing.T) {
		p := StartProcess(t, bin, nil, nil)
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := p.Wait(short); err == nil {
			t.Fatal("Wait returned before the process exited")
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		if code, err := p.Wait(ctx); err != nil || code != -1 {
			t.Fatalf("after Kill: exit %d, %v", code, err)
		}
	})
	t.Run("exits by itself", func(t *testing.T) {
		p := StartProcess(t, bin, []string{"-max", "10ms"}, nil)
		if code, err := p.Wait(ctx); err != nil || code != 0 {
			t.Fatalf("exit %d, %v; want 0", code, err)
		}
	})
}

func TestParseRouteWeights(t *testing.T) {
	tests := map[string]struct {
		dump    string
		want    map[string]uint32
		wantErr bool
	}{
		"empty": {dump: `{}`, want: map[string]uint32{}},
		"weighted and plain": {
			dump: `{"configs":[{"route_config":{"name":"a","virtual_hosts":[{"routes":[
				{"route":{"weighted_clusters":{"clusters":[{"name":"x-v1","weight":90},{"name":"x-v2","weight":10}]}}},
				{"route":{"cluster":"y"}},
				{"redirect":{}}]}]}}]}`,
			want: map[string]uint32{"x-v1": 90, "x-v2": 10, "y": 100},
		},
		"zero weight omitted by protojson": {
			dump: `{"configs":[{"route_config":{"virtual_hosts":[{"routes":[{"route":{"weighted_clusters":{"clusters":[{"name":"a","weight":100},{"name":"b"}]}}}]}]}}]}`,
			want: map[string]uint32{"a": 100, "b": 0},
		},
		"same weight twice is fine": {
			dump: `{"configs":[{"route_config":{"virtual_hosts":[{"routes":[{"route":{"cluster":"a"}}]},{"routes":[{"route":{"cluster":"a"}}]}]}}]}`,
			want: map[string]uint32{"a": 100},
		},
		"conflicting weights": {
			dump:    `{"configs":[{"route_config":{"virtual_hosts":[{"routes":[{"route":{"cluster":"a"}},{"route":{"weighted_clusters":{"clusters":[{"name":"a","weight":5}]}}}]}]}}]}`,
			wantErr: true,
		},
		"a route that matches nothing is left out": {
			dump: `{"configs":[{"route_config":{"virtual_hosts":[{"routes":[
				{"match":{"headers":[{"name":"h","present_match":true},{"name":"h","present_match":false}]},"route":{"cluster":"a"}},
				{"match":{"headers":[{"name":"h","present_match":true}]},"route":{"cluster":"c"}},
				{"route":{"weighted_clusters":{"clusters":[{"name":"a","weight":5},{"name":"b","weight":95}]}}}]}]}}]}`,
			want: map[string]uint32{"a": 5, "b": 95, "c": 100},
		},
		"not json": {dump: `<html>`, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseRouteWeights([]byte(tc.dump))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFreePortIsUnique(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if seen[p] || p <= 0 {
			t.Fatalf("FreePort returned %d twice or invalid", p)
		}
		seen[p] = true
	}
}
