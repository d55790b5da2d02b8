package signal

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/test/fakeclock"
)

// fakeAdmin serves /stats?format=json like Envoy's admin: the values a test
// sets, plus a histogram entry, a text readout and stats the scraper must
// ignore.
type fakeAdmin struct {
	t      *testing.T
	mu     sync.Mutex
	stats  map[string]float64
	status int           // 0: 200
	block  chan struct{} // non-nil: hold requests until it closes or they are cancelled
	hits   int
}

func (a *fakeAdmin) set(stats map[string]float64, status int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stats, a.status = stats, status
}

func (a *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.hits++
	stats, status, block := a.stats, a.status, a.block
	a.mu.Unlock()
	if r.URL.Path != "/stats" || r.URL.Query().Get("format") != "json" || r.URL.Query().Get("filter") != AdminFilter {
		a.t.Errorf("unexpected request %s", r.URL)
		http.NotFound(w, r)
		return
	}
	if block != nil {
		select {
		case <-block:
		case <-r.Context().Done():
			return
		}
	}
	if status != 0 {
		http.Error(w, "admin unhappy", status)
		return
	}
	entries := []any{
		map[string]any{"name": "cluster.app-v2.upstream_cx_active", "value": 4}, // filtered out by the gate's choice
		map[string]any{"name": "cluster.app-v2.version_text", "value": "v2"},
		map[string]any{"histograms": map[string]any{
			"supported_quantiles": []float64{0, 50, 100},
			"computed_quantiles": []any{map[string]any{
				"name":   "cluster.app-v2.upstream_rq_time",
				"values": []any{map[string]any{"interval": nil, "cumulative": 3}},
			}},
		}},
	}
	for name, v := range stats {
		entries = append(entries, map[string]any{"name": name, "value": v})
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(map[string]any{"stats": entries}); err != nil {
		a.t.Error(err)
	}
}

func newAdmin(t *testing.T, stats map[string]float64) (*fakeAdmin, string) {
	t.Helper()
	a := &fakeAdmin{t: t, stats: stats}
	srv := httptest.NewServer(a) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return a, srv.URL
}

func TestAdminScraper(t *testing.T) {
	a1, url1 := newAdmin(t, map[string]float64{detected: 1, done: 10, rqActive: 2})
	_, url2 := newAdmin(t, map[string]float64{rqActive: 1})
	clock := fakeclock.New(t0)
	s, err := NewAdminScraper(AdminScraperConfig{
		Targets: []AdminTarget{{URL: url1}, {URL: url2 + "/", Name: "envoy-2"}},
		Timeout: time.Second,
		Client:  &http.Client{},
		Now:     clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	byNode := func() map[string]NodeReport {
		t.Helper()
		m := map[string]NodeReport{}
		for _, r := range s.Reports() {
			m[r.Node] = r
		}
		if len(m) != 2 {
			t.Fatalf("reports for %d nodes, want 2: %v", len(m), m)
		}
		return m
	}

	s.Poll(ctx)
	r := byNode()[url1]
	if r.Prev != nil || !r.At.Equal(t0) {
		t.Errorf("first poll: %+v, want no previous report, at t0", r)
	}
	want := map[string]float64{detected: 1, done: 10, rqActive: 2}
	if fmt.Sprint(r.Latest) != fmt.Sprint(want) {
		t.Errorf("latest = %v, want %v (no histogram, text readout or unwanted stat)", r.Latest, want)
	}
	if r := byNode()["envoy-2"]; r.Latest[rqActive] != 1 {
		t.Errorf("named target: %+v", r)
	}

	// Counters rise: a window to read.
	clock.Advance(time.Second)
	a1.set(map[string]float64{detected: 3, done: 20, rqActive: 0}, 0)
	s.Poll(ctx)
	r = byNode()[url1]
	if r.Prev[detected] != 1 || r.Latest[detected] != 3 || !r.PrevAt.Equal(t0) || !r.At.Equal(t0.Add(time.Second)) {
		t.Errorf("second poll: %+v", r)
	}

	// The admin fails: the last report stays, and goes stale by its age.
	clock.Advance(time.Second)
	a1.set(map[string]float64{detected: 9}, http.StatusServiceUnavailable)
	s.Poll(ctx)
	if r := byNode()[url1]; !r.At.Equal(t0.Add(time.Second)) || r.Latest[detected] != 3 {
		t.Errorf("after a failed poll: %+v, want the previous report kept", r)
	}

	// Envoy restarted: a counter went down, so there is no window.
	clock.Advance(time.Second)
	a1.set(map[string]float64{detected: 1, done: 25}, 0)
	s.Poll(ctx)
	if r := byNode()[url1]; r.Prev != nil || r.Latest[detected] != 1 {
		t.Errorf("after a restart: %+v, want a new baseline", r)
	}

	// The scraper feeds a gate.
	a1.set(map[string]float64{detected: 1, done: 25, active: 1}, 0)
	clock.Advance(time.Second)
	s.Poll(ctx)
	g := NewGate(nil, s)
	sig := g.Evaluate(clock.Now(), query(policy.Analysis{}))
	if sig.State != policy.SignalFiring || sig.Reason != "node "+url1+": "+active+"=1" {
		t.Errorf("gate over the scraper: %s (%s), want FIRING on %s", sig.State, sig.Reason, url1)
	}
	if n, known := g.ActiveRequests(clock.Now(), "app-v2"); n != 1 || !known {
		t.Errorf("ActiveRequests = %g, %v; want 1 from envoy-2", n, known)
	}
}

func TestAdminScraperTimeout(t *testing.T) {
	a, url := newAdmin(t, map[string]float64{done: 1})
	clock := fakeclock.New(t0)
	s, err := NewAdminScraper(AdminScraperConfig{Targets: []AdminTarget{{URL: url}}, Timeout: 50 * time.Millisecond, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	a.mu.Lock()
	a.block = release
	a.mu.Unlock()
	defer close(release)

	done := make(chan struct{})
	go func() { s.Poll(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Poll did not give up on a hanging admin")
	}
	if rs := s.Reports(); len(rs) != 0 {
		t.Errorf("reports after a timed-out poll: %v", rs)
	}
}

func TestAdminScraperRun(t *testing.T) {
	a, url := newAdmin(t, map[string]float64{done: 1})
	clock := fakeclock.New(t0)
	s, err := NewAdminScraper(AdminScraperConfig{Targets: []AdminTarget{{URL: url}}, Interval: 5 * time.Millisecond, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	deadline := time.After(10 * time.Second)
	for {
		a.mu.Lock()
		hits := a.hits
		a.mu.Unlock()
		if hits >= 3 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("Run polled %d times in 10s", hits)
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if rs := s.Reports(); len(rs) != 1 || rs[0].Latest[done] != 1 {
		t.Errorf("reports after Run: %v", rs)
	}
}

func TestNewAdminScraperRejectsBadConfig(t *testing.T) {
	now := func() time.Time { return t0 }
	tests := map[string]struct {
		cfg  AdminScraperConfig
		want string
	}{
		"no clock":      {cfg: AdminScraperConfig{}, want: "now: must be set"},
		"no scheme":     {cfg: AdminScraperConfig{Now: now, Targets: []AdminTarget{{URL: "127.0.0.1:9901"}}}, want: "targets[0].url"},
		"ftp":           {cfg: AdminScraperConfig{Now: now, Targets: []AdminTarget{{URL: "ftp://127.0.0.1:9901"}}}, want: "targets[0].url"},
		"duplicate":     {cfg: AdminScraperConfig{Now: now, Targets: []AdminTarget{{URL: "http://127.0.0.1:9901", Name: "a"}, {URL: "http://127.0.0.1:9902", Name: "a"}}}, want: `targets[1].name: "a" is used twice`},
		"negative wait": {cfg: AdminScraperConfig{Now: now, Interval: -time.Second}, want: "interval: must not be negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewAdminScraper(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewAdminScraper error = %v, want one naming %q", err, tc.want)
			}
		})
	}
}
