package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/boltstore"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// This file holds what the fleet scenarios (scenarios_test.go) share: two
// Envoys on one shiftplane, constant-rate load through each of them with
// every request recorded, and monitors that sample what each Envoy holds
// (routes, clusters) and what shiftplane says (weight, phase) over time.

// fleetRollout is the name of the rollout every scenario runs.
const fleetRollout = "web"

// fleet is one shiftplane, two backends and the Envoys that route between them.
type fleet struct {
	sp     *Shiftplane
	v1, v2 *harness.Backend
	envoys []*harness.Envoy
	listen string // the plan's listener address, on every Envoy
}

// startFleet starts shiftplane (with extra flags), the v1 and v2 backends
// and n Envoys with distinct node ids, all pointed at that shiftplane.
func startFleet(t *testing.T, n int, spArgs ...string) *fleet {
	t.Helper()
	f := &fleet{
		sp:     StartShiftplane(t, spArgs...),
		v1:     harness.StartBackend(t, "v1"),
		v2:     harness.StartBackend(t, "v2"),
		listen: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
	}
	for i := range n {
		f.envoys = append(f.envoys, harness.StartEnvoy(t, harness.EnvoyOptions{
			NodeID:  nodeID(t, i),
			Cluster: "e2e-fleet",
			XDSAddr: f.sp.XDSAddr,
		}))
	}
	return f
}

// nodeID is the node id of the scenario's Envoy i.
func nodeID(t *testing.T, i int) string {
	return fmt.Sprintf("%s-%c", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), 'a'+i)
}

// waitListeners waits until every Envoy accepts connections on the plan's listener.
func (f *fleet) waitListeners(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harness.DefaultWait)
	defer cancel()
	for i, e := range f.envoys {
		if err := e.WaitListener(ctx, f.listen); err != nil {
			t.Fatalf("envoy %d: %v", i, err)
		}
	}
}

// planStep is one weight step of a scenario plan.
type planStep struct {
	Weight int
	Hold   time.Duration
}

// planSpec renders a plan for the fleet: short holds, stableFor 1s,
// staleAfter 5s, drainTimeout 5s, and optional exec hooks.
type planSpec struct {
	Steps        []planStep
	BeforeShift  []string // argv of one exec hook
	AfterPromote []string
}

func (f *fleet) plan(p planSpec) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	qs := func(ss []string) string { b, _ := json.Marshal(ss); return string(b) }
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\n", fleetRollout)
	fmt.Fprintf(&b, "listener: {address: %s}\n", q(f.listen))
	fmt.Fprintf(&b, "stable: {cluster: web-v1, endpoints: [%s]}\n", q(f.v1.Addr))
	fmt.Fprintf(&b, "canary: {cluster: web-v2, endpoints: [%s]}\n", q(f.v2.Addr))
	b.WriteString("steps:\n")
	for _, s := range p.Steps {
		if s.Hold == 0 {
			fmt.Fprintf(&b, "  - {weight: %d}\n", s.Weight)
			continue
		}
		fmt.Fprintf(&b, "  - {weight: %d, hold: %s}\n", s.Weight, s.Hold)
	}
	b.WriteString("analysis: {stableFor: 1s, staleAfter: 5s, drainTimeout: 5s}\n")
	if p.BeforeShift != nil || p.AfterPromote != nil {
		b.WriteString("hooks:\n")
		if p.BeforeShift != nil {
			fmt.Fprintf(&b, "  beforeShift: [{exec: %s, timeout: 30s}]\n", qs(p.BeforeShift))
		}
		if p.AfterPromote != nil {
			fmt.Fprintf(&b, "  afterPromote: [{exec: %s, timeout: 30s}]\n", qs(p.AfterPromote))
		}
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Load: vegeta at a constant rate through each Envoy, every request kept.

// reqRecord is one request of the load.
type reqRecord struct {
	Envoy   int
	Start   time.Time
	Latency time.Duration
	Code    int
	Version string // X-Version of the answer (the body if the header is missing)
	Err     string
}

func (r reqRecord) End() time.Time { return r.Start.Add(r.Latency) }

// Failed reports a transport error or a non-2xx answer.
func (r reqRecord) Failed() bool { return r.Err != "" || r.Code < 200 || r.Code > 299 }

// fleetLoad drives one vegeta attack per Envoy and records every result.
// Its methods are safe for concurrent use.
type fleetLoad struct {
	rate int

	mu      sync.Mutex
	recs    []reqRecord
	attacks map[int]*loadAttack
}

type loadAttack struct {
	atk  *vegeta.Attacker
	done chan struct{}
}

// startLoad starts rate requests/s through the fleet's listener on every
// Envoy. It is stopped in t.Cleanup if the test does not stop it.
func (f *fleet) startLoad(t *testing.T, rate int) *fleetLoad {
	t.Helper()
	l := &fleetLoad{rate: rate, attacks: map[int]*loadAttack{}}
	for i := range f.envoys {
		l.start(t, i, "http://"+f.listen+"/")
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

// start begins the attack through Envoy i (after stopOne, it starts anew).
func (l *fleetLoad) start(t *testing.T, i int, target string) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		t.Fatalf("load target %q: only loopback targets are allowed", target)
	}
	client := &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil, // never through a proxy from the environment
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 10000,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	atk := vegeta.NewAttacker(vegeta.Client(client), vegeta.Workers(16), vegeta.MaxWorkers(2000), vegeta.MaxBody(1024))
	a := &loadAttack{atk: atk, done: make(chan struct{})}
	l.mu.Lock()
	if old := l.attacks[i]; old != nil {
		l.mu.Unlock()
		t.Fatalf("load through envoy %d is already running", i)
	}
	l.attacks[i] = a
	l.mu.Unlock()
	results := atk.Attack(vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodGet, URL: target}),
		vegeta.Rate{Freq: l.rate, Per: time.Second}, 0, fmt.Sprintf("envoy-%d", i))
	go func() {
		defer close(a.done)
		defer client.CloseIdleConnections()
		for r := range results {
			rec := reqRecord{Envoy: i, Start: r.Timestamp, Latency: r.Latency, Code: int(r.Code), Err: r.Error}
			if rec.Code >= 200 && rec.Code < 400 {
				rec.Err = "" // vegeta's Error for a status is the status line; Code keeps it
			}
			if v := r.Headers.Get("X-Version"); v != "" {
				rec.Version = v
			} else {
				rec.Version = string(r.Body)
			}
			l.mu.Lock()
			l.recs = append(l.recs, rec)
			l.mu.Unlock()
		}
	}()
}

// stopOne stops the attack through Envoy i and waits for its requests in
// flight to finish (they are not cut short).
func (l *fleetLoad) stopOne(i int) {
	l.mu.Lock()
	a := l.attacks[i]
	delete(l.attacks, i)
	l.mu.Unlock()
	if a == nil {
		return
	}
	a.atk.Stop()
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
	}
}

// Stop stops every attack and returns all records, sorted by start time.
func (l *fleetLoad) Stop() []reqRecord {
	l.mu.Lock()
	var ids []int
	for i := range l.attacks {
		ids = append(ids, i)
	}
	l.mu.Unlock()
	for _, i := range ids {
		l.stopOne(i)
	}
	return l.Records()
}

// Records returns a copy of what was recorded so far, sorted by start time.
func (l *fleetLoad) Records() []reqRecord {
	l.mu.Lock()
	out := append([]reqRecord(nil), l.recs...)
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// loadSummary counts requests, failures and answers per version.
type loadSummary struct {
	Total, Failed int
	ByVersion     map[string]int
	FirstFailures []string
}

func summarize(recs []reqRecord) loadSummary {
	s := loadSummary{ByVersion: map[string]int{}}
	for _, r := range recs {
		s.Total++
		if r.Failed() {
			s.Failed++
			if len(s.FirstFailures) < 5 {
				s.FirstFailures = append(s.FirstFailures, fmt.Sprintf("envoy %d at %s: code %d err %q (version %q, latency %s)",
					r.Envoy, r.Start.Format("15:04:05.000"), r.Code, r.Err, r.Version, r.Latency.Round(time.Millisecond)))
			}
			continue
		}
		s.ByVersion[r.Version]++
	}
	return s
}

// envoyRates returns, per Envoy, its requests and the lowest and mean
// number of requests started per whole second of its load.
func envoyRates(recs []reqRecord, envoys int) string {
	var parts []string
	for e := range envoys {
		buckets := map[int64]int{}
		var first, last time.Time
		n := 0
		for _, r := range recs {
			if r.Envoy != e {
				continue
			}
			if n == 0 || r.Start.Before(first) {
				first = r.Start
			}
			if r.Start.After(last) {
				last = r.Start
			}
			n++
			buckets[r.Start.Unix()]++
		}
		low := -1
		for sec, c := range buckets {
			if sec == first.Unix() || sec == last.Unix() {
				continue // partial seconds
			}
			if low < 0 || c < low {
				low = c
			}
		}
		mean := 0.0
		if d := last.Sub(first).Seconds(); d > 0 {
			mean = float64(n) / d
		}
		parts = append(parts, fmt.Sprintf("envoy %d: %d requests, %.0f req/s mean, %d req/s lowest second", e, n, mean, low))
	}
	return strings.Join(parts, "; ")
}

// requireNoFailures fails the test if any request failed.
func requireNoFailures(t *testing.T, what string, recs []reqRecord) loadSummary {
	t.Helper()
	s := summarize(recs)
	if s.Failed > 0 {
		t.Errorf("%s: %d of %d requests failed; first: %s", what, s.Failed, s.Total, strings.Join(s.FirstFailures, "; "))
	}
	if s.Total == 0 {
		t.Errorf("%s: no requests were made", what)
	}
	return s
}

// ---------------------------------------------------------------------------
// Monitors: what each Envoy holds, and what shiftplane says, over time.

// routeSample is one read of an Envoy's dynamic route configuration. The
// configuration was captured at some moment between Sent and At.
type routeSample struct {
	Sent    time.Time
	At      time.Time
	Envoy   int
	Err     bool
	V2      int    // canary weight (percent); -1: no route configuration at all
	Version string // version_info of the route configuration
	Config  string // the route configurations, canonical JSON
}

// clusterSample is one read of an Envoy's active dynamic clusters,
// captured at some moment between Sent and At.
type clusterSample struct {
	Sent     time.Time
	At       time.Time
	Envoy    int
	Err      bool
	Clusters map[string]bool
}

// engineSample is one read of shiftplane's /metrics for the rollout.
type engineSample struct {
	At     time.Time
	Err    bool
	Weight int
	Phase  string
}

// monitor samples the fleet in the background until stopped.
type monitor struct {
	f      *fleet
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	routes   []routeSample
	clusters []clusterSample
	engine   []engineSample
}

// startMonitor samples every Envoy's routes every 20 ms, with clusters
// too if withClusters, and shiftplane's weight and phase every 50 ms.
func (f *fleet) startMonitor(t *testing.T, withClusters bool) *monitor {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m := &monitor{f: f, cancel: cancel}
	for i, e := range f.envoys {
		m.loop(ctx, 20*time.Millisecond, func() {
			s := readRoutes(ctx, e, i)
			m.mu.Lock()
			m.routes = append(m.routes, s)
			m.mu.Unlock()
		})
		if withClusters {
			m.loop(ctx, 20*time.Millisecond, func() {
				s := readClusters(ctx, e, i)
				m.mu.Lock()
				m.clusters = append(m.clusters, s)
				m.mu.Unlock()
			})
		}
	}
	m.loop(ctx, 50*time.Millisecond, func() {
		s := readEngine(ctx, f.sp.HTTPAddr)
		m.mu.Lock()
		m.engine = append(m.engine, s)
		m.mu.Unlock()
	})
	t.Cleanup(m.Stop)
	return m
}

func (m *monitor) loop(ctx context.Context, every time.Duration, read func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for ctx.Err() == nil {
			read()
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}()
}

// Stop ends sampling; stopping twice is fine.
func (m *monitor) Stop() {
	m.cancel()
	m.wg.Wait()
}

func (m *monitor) Routes() []routeSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]routeSample(nil), m.routes...)
}

func (m *monitor) Clusters() []clusterSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]clusterSample(nil), m.clusters...)
}

func (m *monitor) Engine() []engineSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]engineSample(nil), m.engine...)
}

// readRoutes reads Envoy e's route configurations.
func readRoutes(ctx context.Context, e *harness.Envoy, idx int) routeSample {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := routeSample{Envoy: idx, Sent: time.Now()}
	body, err := e.ConfigDump(ctx, "dynamic_route_configs")
	s.At = time.Now()
	if err != nil {
		if strings.Contains(err.Error(), ": 404 ") {
			s.V2 = -1
			return s
		}
		s.Err = true
		return s
	}
	v2, version, canon, err := parseRouteDump(body)
	if err != nil {
		s.Err = true
		return s
	}
	s.V2, s.Version, s.Config = v2, version, canon
	return s
}

// parseRouteDump returns the canary weight over the dump's routes (-1 with
// no route configuration), the route configurations' version_info and the
// configurations themselves as canonical JSON (without version or time).
func parseRouteDump(body []byte) (v2 int, version, canon string, err error) {
	var doc struct {
		Configs []struct {
			VersionInfo string          `json:"version_info"`
			RouteConfig json.RawMessage `json:"route_config"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return 0, "", "", err
	}
	if len(doc.Configs) == 0 {
		return -1, "", "", nil
	}
	var versions []string
	var configs []any
	v2 = -1
	for _, c := range doc.Configs {
		versions = append(versions, c.VersionInfo)
		var rc struct {
			VirtualHosts []struct {
				Routes []struct {
					Route *struct {
						Cluster          string `json:"cluster"`
						WeightedClusters *struct {
							Clusters []struct {
								Name   string `json:"name"`
								Weight int    `json:"weight"`
							} `json:"clusters"`
						} `json:"weighted_clusters"`
					} `json:"route"`
				} `json:"routes"`
			} `json:"virtual_hosts"`
		}
		if err := json.Unmarshal(c.RouteConfig, &rc); err != nil {
			return 0, "", "", err
		}
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				switch {
				case r.Route == nil:
				case r.Route.WeightedClusters != nil:
					total, canary := 0, 0
					for _, wc := range r.Route.WeightedClusters.Clusters {
						total += wc.Weight
						if wc.Name == "web-v2" {
							canary = wc.Weight
						}
					}
					if total > 0 {
						v2 = canary * 100 / total
					}
				case r.Route.Cluster == "web-v2":
					v2 = 100
				case r.Route.Cluster == "web-v1":
					v2 = 0
				}
			}
		}
		var generic any
		if err := json.Unmarshal(c.RouteConfig, &generic); err != nil {
			return 0, "", "", err
		}
		configs = append(configs, generic)
	}
	b, err := json.Marshal(configs) // maps marshal with sorted keys: canonical
	if err != nil {
		return 0, "", "", err
	}
	return v2, strings.Join(versions, ","), string(b), nil
}

// readClusters reads Envoy e's active dynamic clusters.
func readClusters(ctx context.Context, e *harness.Envoy, idx int) clusterSample {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := clusterSample{Envoy: idx, Sent: time.Now(), Clusters: map[string]bool{}}
	body, err := e.ConfigDump(ctx, "dynamic_active_clusters")
	s.At = time.Now()
	if err != nil {
		if !strings.Contains(err.Error(), ": 404 ") {
			s.Err = true
		}
		return s
	}
	var doc struct {
		Configs []struct {
			Cluster struct {
				Name string `json:"name"`
			} `json:"cluster"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		s.Err = true
		return s
	}
	for _, c := range doc.Configs {
		s.Clusters[c.Cluster.Name] = true
	}
	return s
}

var metricsClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}

// readEngine reads the rollout's weight and phase from shiftplane's /metrics.
func readEngine(ctx context.Context, httpAddr string) engineSample {
	s := engineSample{Weight: -1}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	resp, err := metricsClient.Do(req)
	s.At = time.Now()
	if err != nil {
		s.Err = true
		return s
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		s.Err = true
		return s
	}
	s.Weight, s.Phase = parseEngineMetrics(string(body), fleetRollout)
	return s
}

// parseEngineMetrics finds the rollout's canary weight (-1 if absent) and
// its phase ("" if absent) in a Prometheus text exposition.
func parseEngineMetrics(body, rollout string) (int, string) {
	weight, phase := -1, ""
	label := fmt.Sprintf("rollout=%q", rollout)
	for _, line := range strings.Split(body, "\n") {
		switch {
		case strings.HasPrefix(line, "shiftplane_rollout_canary_weight{") && strings.Contains(line, label):
			if f := strings.Fields(line); len(f) == 2 {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					weight = int(v)
				}
			}
		case strings.HasPrefix(line, "shiftplane_rollout_phase{") && strings.Contains(line, label) && strings.HasSuffix(line, " 1"):
			if i := strings.Index(line, `phase="`); i >= 0 {
				rest := line[i+len(`phase="`):]
				phase = rest[:strings.IndexByte(rest, '"')]
			}
		}
	}
	return weight, phase
}

// engineWeights is the sequence of distinct weights shiftplane reported, in order.
func engineWeights(ss []engineSample) []int {
	var out []int
	for _, s := range ss {
		if s.Err || s.Weight < 0 {
			continue
		}
		if len(out) == 0 || out[len(out)-1] != s.Weight {
			out = append(out, s.Weight)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Step windows and the observed split.

// segment is a stretch of consecutive samples of one Envoy with one
// weight: the Envoy surely held it from First to Last (the first sample's
// answer, the last sample's request).
type segment struct {
	Envoy       int
	V2          int
	First, Last time.Time
}

// routeSegments compresses each Envoy's route samples into segments of
// equal weight, in time order. Failed reads are skipped.
func routeSegments(ss []routeSample) []segment {
	sort.SliceStable(ss, func(i, j int) bool { return ss[i].At.Before(ss[j].At) })
	var out []segment
	cur := map[int]int{} // envoy → index in out of its open segment
	for _, s := range ss {
		if s.Err {
			continue
		}
		if i, ok := cur[s.Envoy]; ok && out[i].V2 == s.V2 {
			out[i].Last = s.Sent
			continue
		}
		out = append(out, segment{Envoy: s.Envoy, V2: s.V2, First: s.At, Last: s.Sent})
		cur[s.Envoy] = len(out) - 1
	}
	return out
}

// logTimeline logs every Envoy's route segments and shiftplane's weight
// and phase changes, for a failed scenario.
func logTimeline(t *testing.T, m *monitor) {
	t.Helper()
	var b strings.Builder
	b.WriteString("timeline (route segments per Envoy; shiftplane weight/phase changes):\n")
	for _, s := range routeSegments(m.Routes()) {
		fmt.Fprintf(&b, "    envoy %d  v2=%-4d %s .. %s\n", s.Envoy, s.V2, s.First.Format("15:04:05.000"), s.Last.Format("15:04:05.000"))
	}
	last := ""
	for _, s := range m.Engine() {
		cur := fmt.Sprintf("weight=%d phase=%s err=%v", s.Weight, s.Phase, s.Err)
		if cur != last {
			fmt.Fprintf(&b, "    shiftplane %s at %s\n", cur, s.At.Format("15:04:05.000"))
			last = cur
		}
	}
	t.Log(strings.TrimRight(b.String(), "\n"))
}

// envoyWeights is the sequence of distinct weights Envoy i held.
func envoyWeights(segs []segment, i int) []int {
	var out []int
	for _, s := range segs {
		if s.Envoy == i && (len(out) == 0 || out[len(out)-1] != s.V2) {
			out = append(out, s.V2)
		}
	}
	return out
}

// windowMargin is cut from the start of a step window: the admin endpoint
// shows a new route configuration a moment before the worker thread that
// routes requests has it.
const windowMargin = 50 * time.Millisecond

// stepWindow is when every Envoy held one weight.
type stepWindow struct {
	V2         int
	From, To   time.Time
	Ok         bool // every Envoy held the weight at the same time
	envoysSeen int
}

// stepWindows returns, for each weight, the time every Envoy held it (the
// intersection of each Envoy's longest segment at that weight), trimmed by
// windowMargin at both ends.
func stepWindows(segs []segment, envoys int, weights []int) []stepWindow {
	var out []stepWindow
	for _, w := range weights {
		win := stepWindow{V2: w}
		for e := range envoys {
			var best *segment
			for i := range segs {
				s := &segs[i]
				if s.Envoy == e && s.V2 == w && (best == nil || s.Last.Sub(s.First) > best.Last.Sub(best.First)) {
					best = s
				}
			}
			if best == nil {
				continue
			}
			win.envoysSeen++
			if win.From.IsZero() || best.First.After(win.From) {
				win.From = best.First
			}
			if win.To.IsZero() || best.Last.Before(win.To) {
				win.To = best.Last
			}
		}
		win.From = win.From.Add(windowMargin)
		win.Ok = win.envoysSeen == envoys && win.To.After(win.From)
		out = append(out, win)
	}
	return out
}

// stepSplit is the observed split in one step window.
type stepSplit struct {
	Window   stepWindow
	Requests int
	Failed   int
	V2       int
}

func (s stepSplit) Share() float64 {
	if ok := s.Requests - s.Failed; ok > 0 {
		return float64(s.V2) / float64(ok)
	}
	return math.NaN()
}

// splitGuard is cut from the end of a window for request starts: a request
// reaches Envoy within moments of its start, and Envoy routes it then.
const splitGuard = 100 * time.Millisecond

// inWindow says whether Envoy routed r inside w: r started after w began
// and at least splitGuard before it ended, and, if it was quick, also ended
// before w did (a quick request that ended late may have been held up
// before Envoy saw it). A slow answer (a backend that takes seconds) was
// routed at its start like any other; only its answer waited. The rule
// treats v1 and v2 alike, so a slow version does not bias the share.
func inWindow(r reqRecord, w stepWindow) bool {
	if r.Start.Before(w.From) || r.Start.After(w.To.Add(-splitGuard)) {
		return false
	}
	return r.Latency >= time.Second || !r.End().After(w.To)
}

// splits counts, per window, the requests Envoy routed inside it.
func splits(recs []reqRecord, wins []stepWindow) []stepSplit {
	out := make([]stepSplit, len(wins))
	for i, w := range wins {
		out[i].Window = w
		if !w.Ok {
			continue
		}
		for _, r := range recs {
			if !inWindow(r, w) {
				continue
			}
			out[i].Requests++
			switch {
			case r.Failed():
				out[i].Failed++
			case r.Version == "v2":
				out[i].V2++
			}
		}
	}
	return out
}

// logSplitTable logs a scenario's figures: requests, failures, and the
// observed v2 share per step window.
func logSplitTable(t *testing.T, title string, recs []reqRecord, envoys int, ss []stepSplit) {
	t.Helper()
	sum := summarize(recs)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d requests through %d Envoys, %d failed, v1=%d v2=%d\n    (%s)\n",
		title, sum.Total, envoys, sum.Failed, sum.ByVersion["v1"], sum.ByVersion["v2"], envoyRates(recs, envoys))
	fmt.Fprintf(&b, "    %-8s %-9s %-9s %-7s %-9s %-8s\n", "weight", "window", "requests", "failed", "v2 share", "delta")
	for _, s := range ss {
		if !s.Window.Ok {
			fmt.Fprintf(&b, "    %-8s %-9s (not held by every Envoy at once)\n", fmt.Sprintf("%d%%", s.Window.V2), "-")
			continue
		}
		share := s.Share()
		fmt.Fprintf(&b, "    %-8s %-9s %-9d %-7d %-9s %+.1fpp\n",
			fmt.Sprintf("%d%%", s.Window.V2), s.Window.To.Sub(s.Window.From).Round(10*time.Millisecond),
			s.Requests, s.Failed, fmt.Sprintf("%.1f%%", 100*share), 100*share-float64(s.Window.V2))
	}
	t.Log(strings.TrimRight(b.String(), "\n"))
}

// ---------------------------------------------------------------------------
// Policy API and waits.

// apiClients dials shiftplane's policy API (loopback, no token). The client
// reconnects by itself after shiftplane restarts on the same address.
func apiClients(t *testing.T, sp *Shiftplane) (shiftplanev1.RolloutServiceClient, shiftplanev1.FleetServiceClient) {
	t.Helper()
	cc, err := grpc.NewClient(sp.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return shiftplanev1.NewRolloutServiceClient(cc), shiftplanev1.NewFleetServiceClient(cc)
}

// getRollout fetches the rollout's status through the API.
func getRollout(ctx context.Context, rc shiftplanev1.RolloutServiceClient) (*shiftplanev1.Rollout, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := rc.Get(ctx, &shiftplanev1.GetRequest{Name: fleetRollout})
	if err != nil {
		return nil, err
	}
	return resp.GetRollout(), nil
}

// waitFor polls cond every 20 ms until it holds, and fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return time.Now()
		}
		if state != "" {
			last = state
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s (last: %s)", what, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEngine waits until shiftplane's /metrics shows the rollout in phase
// (any phase if "") at weight (any weight if < 0).
func waitEngine(t *testing.T, sp *Shiftplane, timeout time.Duration, phase string, weight int) time.Time {
	t.Helper()
	return waitFor(t, timeout, fmt.Sprintf("rollout phase %q weight %d", phase, weight), func() (bool, string) {
		s := readEngine(context.Background(), sp.HTTPAddr)
		if s.Err {
			return false, "metrics unreachable"
		}
		return (phase == "" || s.Phase == phase) && (weight < 0 || s.Weight == weight), fmt.Sprintf("phase %s weight %d", s.Phase, s.Weight)
	})
}

// waitFleetWeight waits until every Envoy's routes give v2 the weight w.
func (f *fleet) waitFleetWeight(t *testing.T, timeout time.Duration, w int) time.Time {
	t.Helper()
	return waitFor(t, timeout, fmt.Sprintf("every Envoy at v2 weight %d", w), func() (bool, string) {
		var got []string
		all := true
		for i, e := range f.envoys {
			s := readRoutes(context.Background(), e, i)
			got = append(got, fmt.Sprintf("envoy %d: %d", i, s.V2))
			if s.Err || s.V2 != w {
				all = false
			}
		}
		return all, strings.Join(got, ", ")
	})
}

// statValue reads one Envoy counter or gauge (0 if Envoy has not created it).
func statValue(ctx context.Context, e *harness.Envoy, name string) (float64, error) {
	stats, err := e.Stats(ctx, "^"+regexp.QuoteMeta(name)+"$")
	if err != nil {
		return 0, err
	}
	return stats[name], nil
}

// storedRollout reads the rollout from a stopped shiftplane's store.
func storedRollout(t *testing.T, path string) policy.Rollout {
	t.Helper()
	st, err := boltstore.Open(path)
	if err != nil {
		t.Fatalf("open the store of the stopped shiftplane: %v", err)
	}
	defer st.Close()
	rs, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Plan.Name == fleetRollout {
			return r
		}
	}
	t.Fatalf("rollout %q not in the store", fleetRollout)
	return policy.Rollout{}
}

// listNodes returns "id:converged" for every node the fleet API lists.
func listNodes(ctx context.Context, fc shiftplanev1.FleetServiceClient) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := fc.ListNodes(ctx, &shiftplanev1.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range resp.GetNodes() {
		out = append(out, fmt.Sprintf("%s:%v", n.GetId(), n.GetConverged()))
	}
	return out, nil
}

// routeAck is when a node first ACKed a route version at or above a floor.
type routeAck struct {
	version string
	at      time.Time
}

const routeTypeURL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

// waitRouteAcks polls the fleet API until every node in ids has ACKed a
// route version >= floor, and returns, per node, the first such version
// seen and when.
func waitRouteAcks(t *testing.T, fc shiftplanev1.FleetServiceClient, ids []string, floor string, timeout time.Duration) map[string]routeAck {
	t.Helper()
	min, err := strconv.ParseUint(floor, 10, 64)
	if err != nil {
		t.Fatalf("route version %q: %v", floor, err)
	}
	out := map[string]routeAck{}
	waitFor(t, timeout, "every Envoy ACKs the restarted shiftplane's routes", func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		resp, err := fc.ListNodes(ctx, &shiftplanev1.ListNodesRequest{})
		if err != nil {
			return false, err.Error()
		}
		now := time.Now()
		for _, n := range resp.GetNodes() {
			for _, ts := range n.GetTypes() {
				if ts.GetTypeUrl() != routeTypeURL {
					continue
				}
				if v, err := strconv.ParseUint(ts.GetAckedVersion(), 10, 64); err == nil && v >= min {
					if _, seen := out[n.GetId()]; !seen {
						out[n.GetId()] = routeAck{version: ts.GetAckedVersion(), at: now}
					}
				}
			}
		}
		for _, id := range ids {
			if _, ok := out[id]; !ok {
				return false, fmt.Sprintf("acked so far: %v", out)
			}
		}
		return true, ""
	})
	return out
}
