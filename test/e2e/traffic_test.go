package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// The canary's traffic policy through a real Envoy (issue 13): testers
// first (canary.match, matchOnly), shadow traffic (mirror steps) and
// sticky users (canary.sessionAffinity).

// vhostRoute is one route of a virtual host as Envoy holds it.
type vhostRoute struct {
	Name    string
	Cluster string            // a route to one cluster
	Weights map[string]uint32 // a weighted route
	Mirror  []string          // request_mirror_policies clusters
	Cookie  bool              // the canary's entry sets a cookie
}

// vhostRoutes reads the routes of virtual host vhost from Envoy's config dump.
func vhostRoutes(ctx context.Context, e *harness.Envoy, vhost string) ([]vhostRoute, error) {
	body, err := e.ConfigDump(ctx, "dynamic_route_configs")
	if err != nil {
		return nil, err
	}
	var dump struct {
		Configs []struct {
			RouteConfig struct {
				VirtualHosts []struct {
					Name   string `json:"name"`
					Routes []struct {
						Name  string `json:"name"`
						Route struct {
							Cluster          string `json:"cluster"`
							WeightedClusters struct {
								Clusters []struct {
									Name                 string          `json:"name"`
									Weight               uint32          `json:"weight"`
									ResponseHeadersToAdd json.RawMessage `json:"response_headers_to_add"`
								} `json:"clusters"`
							} `json:"weighted_clusters"`
							RequestMirrorPolicies []struct {
								Cluster string `json:"cluster"`
							} `json:"request_mirror_policies"`
						} `json:"route"`
					} `json:"routes"`
				} `json:"virtual_hosts"`
			} `json:"route_config"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return nil, err
	}
	for _, c := range dump.Configs {
		for _, vh := range c.RouteConfig.VirtualHosts {
			if vh.Name != vhost {
				continue
			}
			var out []vhostRoute
			for _, r := range vh.Routes {
				vr := vhostRoute{Name: r.Name, Cluster: r.Route.Cluster}
				for _, wc := range r.Route.WeightedClusters.Clusters {
					if vr.Weights == nil {
						vr.Weights = map[string]uint32{}
					}
					vr.Weights[wc.Name] = wc.Weight
					vr.Cookie = vr.Cookie || strings.Contains(string(wc.ResponseHeadersToAdd), "set-cookie")
				}
				for _, m := range r.Route.RequestMirrorPolicies {
					vr.Mirror = append(vr.Mirror, m.Cluster)
				}
				out = append(out, vr)
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("no virtual host %q", vhost)
}

// waitVhost waits until Envoy's routes for vhost satisfy ok.
func waitVhost(t *testing.T, e *harness.Envoy, vhost, what string, ok func([]vhostRoute) bool) []vhostRoute {
	t.Helper()
	var got []vhostRoute
	waitFor(t, harness.DefaultWait, what, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rs, err := vhostRoutes(ctx, e, vhost)
		if err != nil {
			return false, err.Error()
		}
		got = rs
		return ok(rs), fmt.Sprintf("%+v", rs)
	})
	return got
}

// routeNames lists the routes in Envoy's order.
func routeNames(rs []vhostRoute) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

// weighted is the weighted route (named like the rollout), or nil.
func weighted(rs []vhostRoute, name string) *vhostRoute {
	for i := range rs {
		if rs[i].Name == name {
			return &rs[i]
		}
	}
	return nil
}

// loadV2 sends n requests (8 at a time) with header h and returns the result
// and the v2 share of the answers; every request must succeed.
func loadV2(t *testing.T, listen string, n int, h http.Header) (harness.LoadResult, float64) {
	t.Helper()
	return loadV2Path(t, listen, "/", n, h)
}

func loadV2Path(t *testing.T, listen, path string, n int, h http.Header) (harness.LoadResult, float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	res, err := harness.HTTPLoad(ctx, "http://"+listen+path, harness.LoadOptions{Requests: n, Concurrency: 8, Header: h})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failures != 0 || res.Total != n {
		t.Fatalf("%d of %d requests answered, %d failed (first error %q): %v", res.Total, n, res.Failures, res.FirstError, res)
	}
	return res, Share(res, "v2")
}

func abort(t *testing.T, rc shiftplanev1.RolloutServiceClient, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rc.Abort(ctx, &shiftplanev1.AbortRequest{Name: name, Reason: "e2e"}); err != nil {
		t.Fatalf("abort %s: %v", name, err)
	}
}

// Header, cookie and query matchers send testers to v2 at weight 0 (a matchOnly
// step) and keep them there at the first weighted step, while everyone
// else follows the weight; an abort takes the matched routes away.
func TestMatchRoutesTestersFirst(t *testing.T) {
	sp := StartShiftplane(t)
	rc, _ := apiClients(t, sp)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	plan := func(hold string) string {
		return fmt.Sprintf(`name: ab
listener: {address: %q}
stable: {cluster: ab-v1, endpoints: [%q]}
canary:
  cluster: ab-v2
  endpoints: [%q]
  match:
    - {header: x-canary, exact: "true"}
    - {cookie: tester, exact: "1"}
    - {query: preview, present: true}
steps:
  - {matchOnly: {}, hold: %s}
  - {weight: 30, hold: 1h}
  - {weight: 100}
analysis: {stableFor: 1s, staleAfter: 5s}
`, listen, v1.Addr, v2.Addr, hold)
	}
	sp.WritePlan("ab.yaml", plan("1h"))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-ab", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatal(err)
	}
	rs := waitVhost(t, envoy, "ab", "the matchOnly step's routes", func(rs []vhostRoute) bool {
		w := weighted(rs, "ab")
		return len(rs) == 4 && w != nil && w.Weights["ab-v2"] == 0
	})
	t.Logf("matchOnly step: Envoy routes %v, weighted %v", routeNames(rs), weighted(rs, "ab").Weights)
	if fmt.Sprint(routeNames(rs)) != "[ab-match-0 ab-match-1 ab-match-2 ab]" || rs[0].Cluster != "ab-v2" || rs[1].Cluster != "ab-v2" || rs[2].Cluster != "ab-v2" {
		t.Fatalf("routes %+v, want the three match routes to ab-v2 before the weighted one", rs)
	}

	header := http.Header{"X-Canary": {"true"}}
	cookie := http.Header{"Cookie": {"session=abc; tester=1; theme=dark"}}
	notQuite := http.Header{"X-Canary": {"yes"}, "Cookie": {"tester=10; xtester=1"}}
	const n = 2000
	_, hShare := loadV2(t, listen, n, header)
	_, cShare := loadV2(t, listen, n, cookie)
	_, uShare := loadV2(t, listen, n, nil)
	_, nqShare := loadV2Path(t, listen, "/?previews=1&x=preview", n, notQuite)
	_, qShare := loadV2Path(t, listen, "/search?q=x&preview", 500, nil)
	t.Logf("weight 0 (matchOnly): header-matched v2 %.2f%%, cookie-matched v2 %.2f%%, query-matched v2 %.2f%% (500), unmatched v2 %.2f%%, near-misses v2 %.2f%% (%d requests each)",
		100*hShare, 100*cShare, 100*qShare, 100*uShare, 100*nqShare, n)
	if hShare != 1 || cShare != 1 || qShare != 1 || uShare != 0 || nqShare != 0 {
		t.Fatalf("at weight 0: matched %.4f/%.4f/%.4f, unmatched %.4f, near-misses %.4f; want 1, 1, 1, 0, 0", hShare, cShare, qShare, uShare, nqShare)
	}
	// Testers keep sending (the step's evidence: no requests, no hold).
	bgCtx, stopTesters := context.WithCancel(context.Background())
	defer stopTesters()
	testers := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(bgCtx, "http://"+listen+"/", harness.LoadOptions{Duration: 50 * time.Second, Rate: 50, Concurrency: 2, Header: header})
		testers <- res
	}()
	sp.WaitSteady("ab", "PROGRESSING", 2*time.Second, 20*time.Second)
	st := rolloutStatus(t, rc, "ab")
	t.Logf("status during the matchOnly step: %s step %d weight %d: %s", st.GetPhase(), st.GetStepIndex()+1, st.GetCanaryWeight(), st.GetMessage())
	if st.GetPhase() != shiftplanev1.Phase_PHASE_PROGRESSING || st.GetCanaryWeight() != 0 {
		t.Fatalf("matched requests are the step's evidence: want PROGRESSING at 0, got %s at %d: %s", st.GetPhase(), st.GetCanaryWeight(), st.GetMessage())
	}

	// The step's hold is cut to 1s: the rollout moves to weight 30.
	sp.WritePlan("ab.yaml", plan("1s"))
	rs = waitVhost(t, envoy, "ab", "weight 30 with the match routes in front", func(rs []vhostRoute) bool {
		w := weighted(rs, "ab")
		return w != nil && w.Weights["ab-v2"] == 30
	})
	t.Logf("first weighted step: Envoy routes %v, weighted %v", routeNames(rs), weighted(rs, "ab").Weights)
	if len(rs) != 4 {
		t.Fatalf("at weight 30 the routes are %v, want the match routes kept", routeNames(rs))
	}
	_, hShare = loadV2(t, listen, n, header)
	_, cShare = loadV2(t, listen, n, cookie)
	_, uShare = loadV2(t, listen, 3000, nil)
	t.Logf("weight 30: header-matched v2 %.2f%%, cookie-matched v2 %.2f%%, unmatched v2 %.2f%% (3000 requests; want 30 ± 3)", 100*hShare, 100*cShare, 100*uShare)
	if hShare != 1 || cShare != 1 || math.Abs(uShare-0.30) > 0.03 {
		t.Fatalf("at weight 30: matched %.4f/%.4f, unmatched %.4f; want 1, 1, 0.30 ± 0.03", hShare, cShare, uShare)
	}

	stopTesters()
	tres := <-testers
	t.Logf("testers in the background (x-canary: true) until the abort: %d requests, %d failed, v2 share %.2f%%", tres.Total, tres.Failures, 100*Share(tres, "v2"))
	if tres.Failures != 0 || tres.Total == 0 || Share(tres, "v2") != 1 {
		t.Fatalf("background testers: %v, want every answer from v2", tres)
	}
	abort(t, rc, "ab")
	sp.WaitPhase("ab", "ABORTED", 30*time.Second)
	rs = waitVhost(t, envoy, "ab", "the abort's routes", func(rs []vhostRoute) bool { return len(rs) == 1 })
	_, hShare = loadV2(t, listen, 500, header)
	_, cShare = loadV2(t, listen, 500, cookie)
	t.Logf("after abort: Envoy routes %v weighted %v; header-matched v2 %.2f%%, cookie-matched v2 %.2f%%", routeNames(rs), rs[0].Weights, 100*hShare, 100*cShare)
	if hShare != 0 || cShare != 0 || rs[0].Weights["ab-v2"] != 0 {
		t.Fatalf("after abort: matched requests still reach v2 (%.4f, %.4f) or weight %d", hShare, cShare, rs[0].Weights["ab-v2"])
	}
}

// mirrorRig is a mirror-plan rollout behind one Envoy.
type mirrorRig struct {
	sp     *Shiftplane
	rc     shiftplanev1.RolloutServiceClient
	envoy  *harness.Envoy
	v1, v2 *harness.Backend
	listen string
}

func startMirrorRig(t *testing.T, name string, failing bool, steps, analysis string) *mirrorRig {
	t.Helper()
	r := &mirrorRig{sp: StartShiftplane(t), v1: harness.StartBackend(t, "v1"), v2: harness.StartBackend(t, "v2")}
	r.rc, _ = apiClients(t, r.sp)
	if failing {
		r.v2.SetFailing(503)
	}
	r.listen = fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	r.sp.WritePlan(name+".yaml", fmt.Sprintf(`name: %s
listener: {address: %q}
stable: {cluster: %s-v1, endpoints: [%q]}
canary: {cluster: %s-v2, endpoints: [%q]}
steps: %s
analysis: %s
`, name, r.listen, name, r.v1.Addr, name, r.v2.Addr, steps, analysis))
	r.envoy = harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-" + name, Cluster: "e2e", XDSAddr: r.sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.envoy.WaitListener(ctx, r.listen); err != nil {
		t.Fatal(err)
	}
	return r
}

// settled waits until b has received no request for 300 ms (shadow
// copies are sent asynchronously) and returns its count.
func settled(b *harness.Backend) int64 {
	last := b.Requests()
	for i := 0; i < 50; i++ {
		time.Sleep(300 * time.Millisecond)
		n := b.Requests()
		if n == last {
			return n
		}
		last = n
	}
	return last
}

// A mirror step at 50%: clients are answered only by v1, v2 receives half
// of the requests as shadow copies, and those copies are the step's
// evidence (the rollout progresses at weight 0, then moves on).
func TestMirrorStepShadowsHalf(t *testing.T) {
	r := startMirrorRig(t, "mir", false, "[{mirror: 50, hold: 1h}, {weight: 100}]", "{stableFor: 1s, staleAfter: 5s}")
	rs := waitVhost(t, r.envoy, "mir", "the mirror step's route", func(rs []vhostRoute) bool {
		return len(rs) == 1 && len(rs[0].Mirror) == 1
	})
	t.Logf("mirror step: Envoy route %s weights %v mirror to %v", rs[0].Name, rs[0].Weights, rs[0].Mirror)
	if rs[0].Weights["mir-v2"] != 0 || rs[0].Mirror[0] != "mir-v2" {
		t.Fatalf("route %+v, want weight 0 and a mirror to mir-v2", rs[0])
	}
	const n = 4000
	before := settled(r.v2)
	done := make(chan harness.LoadResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		res, _ := harness.HTTPLoad(ctx, "http://"+r.listen+"/", harness.LoadOptions{Requests: n, Rate: 500, Concurrency: 8})
		done <- res
	}()
	// The shadow copies are evidence: the hold counts at weight 0.
	r.sp.WaitSteady("mir", "PROGRESSING", 2*time.Second, 20*time.Second)
	res := <-done
	shadows := settled(r.v2) - before
	share := float64(shadows) / float64(res.Total)
	t.Logf("mirror 50%%: client %d requests, %d failed, answers by version %v; v2 backend received %d shadow copies = %.2f%% (want 50 ± 5)",
		res.Total, res.Failures, res.ByVersion, shadows, 100*share)
	if res.Total != n || res.Failures != 0 || res.ByVersion["v2"] != 0 || res.ByVersion["v1"] != n {
		t.Fatalf("the client must see only v1: %v", res)
	}
	if math.Abs(share-0.5) > 0.05 {
		t.Fatalf("v2 received %.4f of the requests as shadow copies, want 0.50 ± 0.05", share)
	}
	st := rolloutStatus(t, r.rc, "mir")
	t.Logf("status: %s step %d weight %d: %s", st.GetPhase(), st.GetStepIndex()+1, st.GetCanaryWeight(), st.GetMessage())

	// The observed split (from Envoy's stats, which count the shadow
	// copies on mir-v2) shows the copies apart: no user request was
	// answered by the canary. Envoy's stats flush trails the backends.
	var obs *shiftplanev1.StepTraffic
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		obs = rolloutStatus(t, r.rc, "mir").GetObserved()
		if obs != nil && obs.GetStableRequests()+obs.GetTransitionStableRequests()+20 >= uint64(n)*9/10 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("observed mirror step: mirror %d%%, v1 %d (+%d settling), v2 %d, mirrored copies %d, share %.1f%% (set %v)",
		obs.GetMirror(), obs.GetStableRequests(), obs.GetTransitionStableRequests(), obs.GetCanaryRequests(), obs.GetMirroredRequests(), obs.GetCanaryShare(), obs.CanaryShare != nil)
	if obs.GetMirror() != 50 || obs.GetCanaryRequests() != 0 || obs.GetTransitionCanaryRequests() != 0 || (obs.CanaryShare != nil && obs.GetCanaryShare() != 0) {
		t.Errorf("observed mirror step %v: want mirror 50 and no canary user requests (share 0 or unset)", obs)
	}
	// The node's first report is a baseline (not counted), so compare the
	// copies with the stable requests counted alongside them.
	users := obs.GetStableRequests() + obs.GetTransitionStableRequests()
	if m := float64(obs.GetMirroredRequests()) / float64(users); users == 0 || math.Abs(m-0.5) > 0.05 {
		t.Errorf("observed %d mirrored copies for %d stable requests, want 0.50 ± 0.05 of them", obs.GetMirroredRequests(), users)
	}
}

// A mirrored canary that answers 503: the rollout holds at weight 0 (no
// user answer ever comes from v2), and rolls back after rollbackAfter,
// which ends the mirror.
func TestFailingMirroredCanaryHolds(t *testing.T) {
	const rollbackAfter = 10 * time.Second
	r := startMirrorRig(t, "shadow", true, "[{mirror: 50, hold: 2s}, {weight: 50, hold: 1h}, {weight: 100}]",
		fmt.Sprintf("{stableFor: 1s, staleAfter: 5s, rollbackAfter: %s}", rollbackAfter))
	waitVhost(t, r.envoy, "shadow", "the mirror step's route", func(rs []vhostRoute) bool { return len(rs) == 1 && len(rs[0].Mirror) == 1 })

	// Watch Envoy's canary weight the whole time.
	monCtx, stopMon := context.WithCancel(context.Background())
	maxWeight := make(chan uint32, 1)
	go func() {
		var hi uint32
		for monCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(monCtx, 2*time.Second)
			if rs, err := vhostRoutes(ctx, r.envoy, "shadow"); err == nil && len(rs) > 0 {
				hi = max(hi, rs[len(rs)-1].Weights["shadow-v2"])
			}
			cancel()
			time.Sleep(50 * time.Millisecond)
		}
		maxWeight <- hi
	}()
	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	done := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(loadCtx, "http://"+r.listen+"/", harness.LoadOptions{Duration: 50 * time.Second, Rate: 200, Concurrency: 8})
		done <- res
	}()
	var st *shiftplanev1.Rollout
	held := waitFor(t, 20*time.Second, "HOLDING on the shadow copies' failures", func() (bool, string) {
		st = rolloutStatus(t, r.rc, "shadow")
		return st.GetPhase() == shiftplanev1.Phase_PHASE_HOLDING && strings.Contains(st.GetMessage(), "signal firing"), st.GetPhase().String() + ": " + st.GetMessage()
	})
	t.Logf("HOLDING at step %d weight %d: %s", st.GetStepIndex()+1, st.GetCanaryWeight(), st.GetMessage())
	if st.GetStepIndex() != 0 || st.GetCanaryWeight() != 0 || !strings.Contains(st.GetMessage(), "shadow-v2") {
		t.Fatalf("want HOLDING at the mirror step, weight 0, firing on shadow-v2's own stats; got step %d weight %d: %s", st.GetStepIndex()+1, st.GetCanaryWeight(), st.GetMessage())
	}
	rolled := r.sp.WaitPhaseAny("shadow", rollbackAfter+20*time.Second, "ROLLING_BACK", "ROLLED_BACK")
	r.sp.WaitPhase("shadow", "ROLLED_BACK", 20*time.Second)
	rs := waitVhost(t, r.envoy, "shadow", "the rollback's route without a mirror", func(rs []vhostRoute) bool { return len(rs) == 1 && len(rs[0].Mirror) == 0 })
	// After the rollback the mirror is gone: v2 receives nothing more.
	after := settled(r.v2)
	time.Sleep(2 * time.Second)
	late := r.v2.Requests() - after
	stopLoad()
	res := <-done
	stopMon()
	hi := <-maxWeight
	t.Logf("HOLDING → ROLLING_BACK after %s (rollbackAfter %s); highest canary weight Envoy held: %d; client: %d requests, %d failed, by version %v; v2 answered %d shadow copies with 503, %d after the rollback; final route %v mirror %v",
		rolled.Sub(held).Round(100*time.Millisecond), rollbackAfter, hi, res.Total, res.Failures, res.ByVersion, r.v2.Failures(), late, rs[0].Weights, rs[0].Mirror)
	if hi != 0 || res.ByVersion["v2"] != 0 || res.Failures != 0 {
		t.Fatalf("user traffic moved to the failing canary: weight up to %d, v2 answers %d, failures %d", hi, res.ByVersion["v2"], res.Failures)
	}
	if d := rolled.Sub(held); d < rollbackAfter-2*time.Second || d > rollbackAfter+5*time.Second {
		t.Fatalf("rolled back %s after the hold began, want about rollbackAfter (%s)", d, rollbackAfter)
	}
	if r.v2.Failures() == 0 {
		t.Fatal("the canary never saw a shadow copy")
	}
	if late != 0 {
		t.Fatalf("v2 received %d requests after the rollback removed the mirror", late)
	}
}

// stickyUsers are simulated users, each with its own cookie jar, sharing
// one connection pool.
type stickyUsers struct {
	clients []*http.Client
	url     string
	// history[u] is every version user u was answered by, in order.
	history [][]string
	// v2Fails allows v2's answers to be errors (a failing canary).
	v2Fails bool
	failed  int // errors v2 answered while v2Fails
}

func newStickyUsers(t *testing.T, n int, listen string) *stickyUsers {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	u := &stickyUsers{url: "http://" + listen + "/", history: make([][]string, n)}
	for i := 0; i < n; i++ {
		jar, err := cookiejar.New(nil)
		if err != nil {
			t.Fatal(err)
		}
		u.clients = append(u.clients, &http.Client{Transport: tr, Jar: jar, Timeout: 10 * time.Second})
	}
	return u
}

// round sends one request per user (48 at a time) and returns the version
// each was answered by; every request must succeed.
func (u *stickyUsers) round(t *testing.T) []string {
	t.Helper()
	got := make([]string, len(u.clients))
	errs := make([]error, len(u.clients))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 48; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				resp, err := u.clients[i].Get(u.url)
				if err != nil {
					errs[i] = err
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got[i] = resp.Header.Get("X-Version")
				if resp.StatusCode != http.StatusOK && !(u.v2Fails && got[i] == "v2") {
					errs[i] = fmt.Errorf("status %d from %q", resp.StatusCode, got[i])
				}
			}
		}()
	}
	for i := range u.clients {
		next <- i
	}
	close(next)
	wg.Wait()
	if u.v2Fails {
		u.failed += onV2(got)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("user %d: %v", i, err)
		}
		u.history[i] = append(u.history[i], got[i])
	}
	return got
}

// onV2 counts users whose latest answer came from v2.
func onV2(got []string) int {
	n := 0
	for _, v := range got {
		if v == "v2" {
			n++
		}
	}
	return n
}

// Session affinity: 600 users, each with its own cookie jar, through a
// rollout at 10% then 40%: nobody who got v2 gets v1 again, users without the
// cookie reach v2 at the weight; then v2 fails, the rollout rolls back, and
// once Envoy has the rollback every user's next request is answered by v1.
func TestSessionAffinityKeepsUsersOnV2(t *testing.T) {
	sp := StartShiftplane(t)
	rc, _ := apiClients(t, sp)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("sticky.yaml", fmt.Sprintf(`name: sticky
listener: {address: %q}
stable: {cluster: sticky-v1, endpoints: [%q]}
canary:
  cluster: sticky-v2
  endpoints: [%q]
  sessionAffinity: {cookieName: sp-sticky, maxAge: 1h}
steps: [{weight: 10, hold: 0s}, {pause: {}}, {weight: 40, hold: 0s}, {pause: {}}, {weight: 100}]
analysis: {stableFor: 1s, staleAfter: 5s, rollbackAfter: 4s}
`, listen, v1.Addr, v2.Addr))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-sticky", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatal(err)
	}
	const users = 600
	u := newStickyUsers(t, users, listen)
	canaryWeight := func() (uint32, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rs, err := vhostRoutes(ctx, envoy, "sticky")
		if err != nil || len(rs) == 0 {
			return 0, 0
		}
		return rs[len(rs)-1].Weights["sticky-v2"], len(rs)
	}
	// rounds at a steady weight: fresh is the answers to users who had
	// never got v2 before the round.
	type window struct {
		weight        uint32
		fresh, fresh2 int
		rounds        int
		usersOnV2     int
	}
	windows := map[uint32]*window{}
	roundsUntil := func(what string, done func() bool) {
		for i := 0; !done(); i++ {
			if i > 200 {
				t.Fatalf("%s: not reached after 200 rounds", what)
			}
			onBefore := make([]bool, users)
			for j, h := range u.history {
				onBefore[j] = slices.Contains(h, "v2")
			}
			// Paced, so users make a few requests per step rather than
			// hundreds (each request of a cookie-less user is a new draw).
			start := time.Now()
			wb, _ := canaryWeight()
			got := u.round(t)
			wa, _ := canaryWeight()
			time.Sleep(time.Until(start.Add(500 * time.Millisecond)))
			if wb != wa || wb == 0 {
				continue
			}
			w := windows[wb]
			if w == nil {
				w = &window{weight: wb}
				windows[wb] = w
			}
			w.rounds++
			w.usersOnV2 = onV2(got)
			for j, v := range got {
				if !onBefore[j] {
					w.fresh++
					if v == "v2" {
						w.fresh2++
					}
				}
			}
		}
	}
	status := func() *shiftplanev1.Rollout { return rolloutStatus(t, rc, "sticky") }
	pausedAt := func(step int32) func() bool {
		return func() bool {
			st := status()
			return st.GetPhase() == shiftplanev1.Phase_PHASE_PAUSED && st.GetStepIndex() == step
		}
	}
	extra := func(n int) func() bool { k := 0; return func() bool { k++; return k > n } }
	resume := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := rc.Resume(ctx, &shiftplanev1.ResumeRequest{Name: "sticky"}); err != nil {
			t.Fatalf("resume: %v", err)
		}
	}

	roundsUntil("the gate after weight 10", pausedAt(1))
	roundsUntil("3 rounds at the gate", extra(3))
	resume()
	roundsUntil("the gate after weight 40", pausedAt(3))
	roundsUntil("3 rounds at the gate", extra(3))
	// v2 starts failing: sticky users see its 503s until the rollback.
	beforeAbort := len(u.history[0])
	v2.SetFailing(503)
	u.v2Fails = true
	// Rounds until Envoy has the rollback's routes (no cookie route,
	// weight 0), then two more: those must be all v1.
	var firstClean int
	for i := 0; ; i++ {
		if w, n := canaryWeight(); w == 0 && n == 1 {
			firstClean = len(u.history[0])
			break
		}
		if i > 100 {
			t.Fatal("Envoy never got the rollback's routes")
		}
		// Paced like the rounds before: rollbackAfter is 4s.
		time.Sleep(300 * time.Millisecond)
		u.round(t)
	}
	for i := 0; i < 2; i++ {
		u.round(t)
	}
	rolled := status()
	t.Logf("after v2 failed: %s: %s; sticky users got %d 503s from v2 before the rollback reached Envoy (%d rounds)",
		rolled.GetPhase(), rolled.GetMessage(), u.failed, firstClean-beforeAbort)
	if rolled.GetPhase() != shiftplanev1.Phase_PHASE_ROLLED_BACK && rolled.GetPhase() != shiftplanev1.Phase_PHASE_ROLLING_BACK {
		t.Fatalf("phase %s, want a rollback", rolled.GetPhase())
	}

	// No user got v1 after v2 before the rollback: in every round that
	// ended before Envoy had the rollback's routes (the round during which
	// they arrived may mix), failing canary or not.
	violations, everV2 := 0, 0
	for _, h := range u.history {
		seen := false
		for _, v := range h[:firstClean-1] {
			if v == "v2" {
				seen = true
			} else if seen {
				violations++
			}
		}
		if seen {
			everV2++
		}
	}
	afterV2 := 0
	for _, h := range u.history {
		for _, v := range h[firstClean:] {
			if v == "v2" {
				afterV2++
			}
		}
	}
	ws := make([]uint32, 0, len(windows))
	for w := range windows {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	keep := 1.0 // share of users a sticky split leaves on v1 after the rounds so far
	for _, wv := range ws {
		w := windows[wv]
		p := float64(w.weight) / 100
		share := float64(w.fresh2) / float64(max(w.fresh, 1))
		sd := math.Sqrt(p * (1 - p) / float64(max(w.fresh, 1)))
		keep *= math.Pow(1-p, float64(w.rounds))
		t.Logf("weight %d: %d steady rounds; users without the cookie reached v2 in %d of %d requests = %.2f%% (want %d ± %.1f); users on v2 after the last round: %d of %d = %.1f%% (the weights predict about %.1f%%)",
			w.weight, w.rounds, w.fresh2, w.fresh, 100*share, w.weight, 100*math.Max(0.05, 4*sd), w.usersOnV2, users, 100*float64(w.usersOnV2)/users, 100*(1-keep))
		if math.Abs(share-p) > math.Max(0.05, 4*sd) {
			t.Errorf("weight %d: cookie-less users reached v2 at %.4f, want %.2f", w.weight, share, p)
		}
	}
	t.Logf("%d users, %d rounds before v2 failed, %d rounds before the rollback reached Envoy; %d users ever on v2; v1 after v2 in those rounds: %d; after Envoy had the rollback's routes: %d v2 answers in %d requests",
		users, beforeAbort, firstClean-1, everV2, violations, afterV2, users*(len(u.history[0])-firstClean))
	if len(windows) != 2 || windows[10] == nil || windows[40] == nil {
		t.Fatalf("steady windows at weights %v, want 10 and 40", ws)
	}
	if violations != 0 {
		t.Fatalf("%d answers from v1 to users who had got v2", violations)
	}
	if afterV2 != 0 {
		t.Fatalf("%d answers from v2 after the rollback reached Envoy", afterV2)
	}
	if windows[40].usersOnV2 < windows[10].usersOnV2 {
		t.Fatalf("users on v2 fell from %d to %d while the weight rose", windows[10].usersOnV2, windows[40].usersOnV2)
	}
}

// Envoy itself accepts every traffic-policy golden route configuration
// (every matcher kind, the cookie and :path regexes, the mirror and the
// affinity cookie): each is put in a static bootstrap and run through
// `envoy --mode validate`.
func TestTrafficGoldenRoutesEnvoyValidates(t *testing.T) {
	root := harness.RepoRoot(t)
	for _, name := range []string{"match-routes", "match-weighted", "mirror", "affinity"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(root, "xds", "testdata", "out", name+".route.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var rcs []map[string]any
			if err := yaml.Unmarshal(data, &rcs); err != nil || len(rcs) != 1 {
				t.Fatalf("%s: %v (%d route configurations)", name, err, len(rcs))
			}
			rc := rcs[0]
			delete(rc, "name")
			clusters := []any{}
			for _, c := range []string{"checkout-v1", "checkout-v2"} {
				clusters = append(clusters, map[string]any{"name": c, "type": "STATIC", "loadAssignment": map[string]any{
					"clusterName": c, "endpoints": []any{map[string]any{"lbEndpoints": []any{map[string]any{"endpoint": map[string]any{
						"address": map[string]any{"socketAddress": map[string]any{"address": "127.0.0.1", "portValue": 9}}}}}}}}})
			}
			boot := map[string]any{"staticResources": map[string]any{
				"clusters": clusters,
				"listeners": []any{map[string]any{"name": "golden", "address": map[string]any{"socketAddress": map[string]any{"address": "127.0.0.1", "portValue": 9}},
					"filterChains": []any{map[string]any{"filters": []any{map[string]any{"name": "envoy.filters.network.http_connection_manager",
						"typedConfig": map[string]any{
							"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
							"statPrefix":  "golden",
							"routeConfig": rc,
							"httpFilters": []any{map[string]any{"name": "envoy.filters.http.router",
								"typedConfig": map[string]any{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}},
						}}}}}}},
			}}
			js, err := json.Marshal(boot)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), name+".json")
			if err := os.WriteFile(path, js, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := harness.ValidateBootstrap(t, path); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: Envoy accepts the route configuration", name)
		})
	}
}
