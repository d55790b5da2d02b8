package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodPlan = `name: web
listener: {address: 127.0.0.1:10000}
stable: {cluster: web-v1, endpoints: ["127.0.0.1:8081"]}
canary: {cluster: web-v2, endpoints: ["127.0.0.1:8082"]}
steps: [{weight: 10, hold: 30s}, {weight: 100}]
`

func TestValidateExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	out, err := runCLI(t, append([]string{"validate"}, files...)...)
	if err != nil || out != "" {
		t.Fatalf("validate examples: err %v, output %q; want silent success", err, out)
	}
}

func TestValidateReportsEachProblem(t *testing.T) {
	dir := t.TempDir()
	tests := map[string]struct {
		files map[string]string
		want  []string
	}{
		"bad weight": {
			files: map[string]string{"p.yaml": strings.Replace(goodPlan, "weight: 10,", "weight: 120,", 1)},
			want:  []string{"p.yaml: steps[0].weight: must be within 0..100, got 120"},
		},
		"unknown field": {
			files: map[string]string{"p.yaml": goodPlan + "colour: blue\n"},
			want:  []string{"p.yaml: colour: unknown field"},
		},
		"duplicate cluster across files": {
			files: map[string]string{
				"a.yaml": goodPlan,
				"b.yaml": strings.NewReplacer("name: web", "name: shop", "10000", "10001").Replace(goodPlan),
			},
			want: []string{`b.yaml: stable.cluster: cluster "web-v1" is already used by plan "web"`},
		},
		"unparsable endpoint": {
			files: map[string]string{"p.yaml": strings.Replace(goodPlan, `"127.0.0.1:8082"`, `"127.0.0.1"`, 1)},
			want:  []string{`p.yaml: canary.endpoints[0]: must be host:port, got "127.0.0.1"`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			sub := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			var paths []string
			for f, body := range tc.files {
				paths = append(paths, writeFile(t, sub, f, body))
			}
			sort.Strings(paths) // a later file is blamed for a clash with an earlier one
			out, err := runCLI(t, append([]string{"validate"}, paths...)...)
			if !errors.Is(err, errProblems) {
				t.Fatalf("err = %v, want the problems error (non-zero exit)", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestValidateVerbosePrintsGeneratedSteps(t *testing.T) {
	p := writeFile(t, t.TempDir(), "lin.yaml", strings.Replace(goodPlan, "steps: [{weight: 10, hold: 30s}, {weight: 100}]", "linear: {step: 40, every: 1m}", 1))
	out, err := runCLI(t, "validate", "-v", p)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"steps[0]: weight 40, hold 1m0s", "steps[1]: weight 80, hold 1m0s", "steps[2]: weight 100, hold 0s"} {
		if !strings.Contains(out, w) {
			t.Errorf("validate -v lacks %q:\n%s", w, out)
		}
	}
}

func TestBadConfigNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	tests := map[string]struct {
		config string
		env    map[string]string
		args   []string
		want   string
	}{
		"unknown key":                        {config: "xds:\n  adress: 127.0.0.1:1\n", want: "xds.adress: unknown key"},
		"bad address":                        {config: "http:\n  address: nowhere\n", want: `http.address: must be host:port, got "nowhere"`},
		"open API off loopback":              {args: []string{"--api-address", "0.0.0.0:18001"}, want: "api.address: \"0.0.0.0:18001\" is not loopback; set api.token"},
		"bad log level from env":             {env: map[string]string{"SHIFTPLANE_LOG_LEVEL": "loud"}, want: `log.level: must be debug, info, warn or error, got "loud"`},
		"tls half given":                     {args: []string{"--api-tls-cert", "c.pem"}, want: "api.tls: cert and key must be given together"},
		"notification off the allowed hosts": {config: "notifications:\n  - url: https://hooks.example.com/x\n", want: `notifications[0].url: host "hooks.example.com" is not in notify.allowHosts`},
		"notification unknown field":         {config: "notifications:\n  - url: http://127.0.0.1:9/\n    evnts: [hold]\n", want: "evnts"},
		"notification bad event":             {config: "notifications:\n  - url: http://127.0.0.1:9/\n    events: [holds]\n", want: `notifications[0].events[0]: unknown event "holds"`},
		"unknown backend":                    {config: "store:\n  backend: zookeeper\n", want: `store.backend: must be bbolt or etcd, got "zookeeper"`},
		"etcd without endpoints":             {args: []string{"--store-backend", "etcd"}, want: "store.etcd.endpoints: at least one endpoint is needed"},
		"etcd endpoint not a URL": {
			config: "store:\n  backend: etcd\n  etcd:\n    endpoints: [\"127.0.0.1:2379\"]\n",
			want:   `store.etcd.endpoints[0]: must be an http:// or https:// URL, got "127.0.0.1:2379"`,
		},
		"etcd https without ca": {
			args: []string{"--store-backend", "etcd", "--store-etcd-endpoints", "https://127.0.0.1:2379"},
			want: `store.etcd.endpoints[0]: "https://127.0.0.1:2379" is https; set store.etcd.tls.ca`,
		},
		"etcd ttl not whole seconds": {
			args: []string{"--store-backend", "etcd", "--store-etcd-endpoints", "http://127.0.0.1:2379", "--store-etcd-session-ttl", "1500ms"},
			want: "store.etcd.sessionTTL: must be whole seconds, at least 1s, got 1.5s",
		},
		"etcd prefix relative": {
			config: "store:\n  backend: etcd\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    prefix: shiftplane/\n",
			want:   `store.etcd.prefix: must start with /, got "shiftplane/"`,
		},
		"etcd tls key alone": {
			args: []string{"--store-backend", "etcd", "--store-etcd-endpoints", "http://127.0.0.1:2379", "--store-etcd-tls-key", "k.pem"},
			want: "store.etcd.tls: cert and key must be given together",
		},
		"etcd unknown key": {config: "store:\n  etcd:\n    endpoint: [\"http://127.0.0.1:2379\"]\n", want: "store.etcd.endpoint: unknown key"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			store := filepath.Join(t.TempDir(), "s.db")
			args := append([]string{"serve", "--store-path", store}, tc.args...)
			if tc.config != "" {
				args = append(args, "--config", writeFile(t, dir, strings.ReplaceAll(name, " ", "-")+".yaml", tc.config))
			}
			_, err := runCLI(t, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if _, statErr := os.Stat(store); statErr == nil {
				t.Errorf("a bad config created the store %s; it must change nothing", store)
			}
		})
	}
}

// A corrupt store stops the start with a clear error, before anything listens.
func TestCorruptStoreStopsStart(t *testing.T) {
	store := filepath.Join(t.TempDir(), "s.db")
	if err := os.WriteFile(store, []byte("this is not a bbolt file, it is long enough to have a header page......"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, store)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := serve(ctx, cfg, nil, slog.New(slog.DiscardHandler), nil)
	if err == nil || !strings.Contains(err.Error(), store) {
		t.Fatalf("serve on a corrupt store: %v; want an error naming the store", err)
	}
	// Nothing listens: the xDS address is still free.
	l, err := net.Listen("tcp", cfg.XDS.Address)
	if err != nil {
		t.Fatalf("xds.address taken after a failed start: %v", err)
	}
	l.Close()
}

func testConfig(t *testing.T, store string) Config {
	t.Helper()
	ports, err := freePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	c.XDS.Address = "127.0.0.1:" + strconv.Itoa(ports[0])
	c.API.Address = "127.0.0.1:" + strconv.Itoa(ports[1])
	c.HTTP.Address = "127.0.0.1:" + strconv.Itoa(ports[2])
	c.Store.Path = store
	c.Engine.Tick = 100 * time.Millisecond
	c.Signal.ScrapeEvery = time.Second
	c.Log.Level, c.Log.Format = "info", "text"
	return c
}
