package dashboard_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/dashboard"
	"github.com/shiftplane/shiftplane/policy/signal"
)

// engine is a fake at the dashboard's Engine boundary: one rollout whose
// operations are recorded, and updates the test sends.
type engine struct {
	mu       sync.Mutex
	st       policy.Status
	calls    []string
	watchers []chan policy.Update
}

func newEngine() *engine {
	w, full := 20, 100
	plan := policy.Plan{Name: "web", Steps: []policy.Step{{Weight: &w, Hold: policy.Duration(time.Minute)}, {Weight: &full}}}
	plan.Stable.Cluster, plan.Canary.Cluster = "web-v1", "web-v2"
	return &engine{st: policy.Status{Rollout: policy.Rollout{Plan: plan, State: policy.State{Phase: policy.PhaseProgressing, StepIndex: 0, Weight: 20}},
		Signal: policy.Signal{State: policy.SignalClear}, StepCount: 2}}
}

func (e *engine) List() []policy.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return []policy.Status{e.st}
}
func (e *engine) Get(name string) (policy.Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if name != e.st.Plan.Name {
		return policy.Status{}, fmt.Errorf("%w: %q", policy.ErrNotFound, name)
	}
	return e.st, nil
}
func (e *engine) History(string, int) ([]policy.Event, error) {
	return []policy.Event{{Time: time.Now(), From: policy.PhasePending, To: policy.PhaseProgressing, Reason: "step 1: weight 20", Weight: 20}}, nil
}
func (e *engine) Subscribe() (<-chan policy.Update, func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ch := make(chan policy.Update, 16)
	e.watchers = append(e.watchers, ch)
	return ch, func() {}
}
func (e *engine) set(phase policy.Phase, weight, step int) {
	e.mu.Lock()
	e.st.State.Phase, e.st.State.Weight, e.st.State.StepIndex = phase, weight, step
	st, ws := e.st, append([]chan policy.Update(nil), e.watchers...)
	e.mu.Unlock()
	for _, w := range ws {
		w <- policy.Update{Status: st}
	}
}
func (e *engine) op(verb string) (policy.Status, error) {
	e.mu.Lock()
	e.calls = append(e.calls, verb)
	e.mu.Unlock()
	return e.Get("web")
}
func (e *engine) Pause(string, ...policy.OpOption) (policy.Status, error) {
	return e.op("pause")
}
func (e *engine) Resume(string, ...policy.OpOption) (policy.Status, error) {
	return e.op("resume")
}
func (e *engine) Promote(string, ...policy.OpOption) (policy.Status, error) {
	return e.op("promote")
}
func (e *engine) Abort(_ string, opts ...policy.OpOption) (policy.Status, error) {
	var in policy.Input
	for _, o := range opts {
		o(&in)
	}
	reason := in.Reason
	return e.op("abort:" + reason)
}
func (e *engine) ops() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.calls...)
}

const token = "t0ken"

func server(t *testing.T, auth dashboard.Auth) (*engine, *httptest.Server) {
	t.Helper()
	e := newEngine()
	d := dashboard.New(dashboard.Options{Engine: e, Auth: auth, SampleEvery: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	go d.Run(ctx)
	srv := httptest.NewServer(d)
	t.Cleanup(func() { srv.Close(); cancel() })
	return e, srv
}

func tokenAuth() dashboard.Auth {
	h := sha256.Sum256([]byte(token))
	return dashboard.Auth{TokenHash: &h}
}

func do(t *testing.T, method, u string, headers map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp, b.String()
}

func pageData(t *testing.T, u string, headers map[string]string) dashboard.PageData {
	t.Helper()
	_, body := do(t, "GET", u, headers)
	var pd dashboard.PageData
	if err := json.Unmarshal([]byte(body), &pd); err != nil {
		t.Fatalf("%s: %v: %s", u, err, body)
	}
	return pd
}

func loginCookie(t *testing.T, srv *httptest.Server, tok string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.PostForm(srv.URL+"/login", url.Values{"token": {tok}, "next": {"/rollouts/web"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == dashboard.SessionCookie {
			return ck.Name + "=" + ck.Value
		}
	}
	return ""
}

func TestPageDataNumbersStepsFromOne(t *testing.T) {
	_, srv := server(t, tokenAuth())
	pd := pageData(t, srv.URL+"/api/dashboard?rollout=web", nil)
	if len(pd.Rollouts) != 1 || pd.Rollouts[0].Step != 1 || pd.Rollouts[0].StepCount != 2 {
		t.Fatalf("rollouts %+v; want web at step 1 of 2", pd.Rollouts)
	}
	if pd.Rollout == nil || len(pd.Rollout.Steps) != 2 || pd.Rollout.Steps[0].N != 1 || pd.Rollout.Steps[0].State != "current" {
		t.Fatalf("steps %+v; want step 1 current", pd.Rollout)
	}
	if pd.Auth.CanAct || pd.Auth.CSRF != "" || !pd.Auth.Login {
		t.Fatalf("anonymous auth view %+v; want read-only with a login", pd.Auth)
	}
	if resp, _ := do(t, "GET", srv.URL+"/rollouts/nope", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing rollout page: %d, want 404", resp.StatusCode)
	}
}

func TestActionsNeedCredentialsAndCSRF(t *testing.T) {
	e, srv := server(t, tokenAuth())
	pause := srv.URL + "/api/dashboard/rollouts/web/pause"
	cookie := loginCookie(t, srv, token)
	if cookie == "" {
		t.Fatal("login with the right token set no session cookie")
	}
	csrf := pageData(t, srv.URL+"/api/dashboard", map[string]string{"Cookie": cookie}).Auth.CSRF
	if csrf == "" {
		t.Fatal("a logged-in page got no CSRF token")
	}
	for name, tc := range map[string]struct {
		headers map[string]string
		want    int
	}{
		"no credentials":         {nil, http.StatusUnauthorized},
		"wrong bearer":           {map[string]string{"Authorization": "Bearer nope"}, http.StatusUnauthorized},
		"wrong login":            {map[string]string{"Cookie": loginCookie(t, srv, "nope")}, http.StatusUnauthorized},
		"cookie without csrf":    {map[string]string{"Cookie": cookie}, http.StatusForbidden},
		"cookie with wrong csrf": {map[string]string{"Cookie": cookie, dashboard.CSRFHeader: "x"}, http.StatusForbidden},
		"cross-site with csrf":   {map[string]string{"Cookie": cookie, dashboard.CSRFHeader: csrf, "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		"other origin":           {map[string]string{"Cookie": cookie, dashboard.CSRFHeader: csrf, "Origin": "http://evil.example"}, http.StatusForbidden},
		"cookie with csrf":       {map[string]string{"Cookie": cookie, dashboard.CSRFHeader: csrf, "Sec-Fetch-Site": "same-origin"}, http.StatusOK},
		"bearer":                 {map[string]string{"Authorization": "Bearer " + token}, http.StatusOK},
	} {
		t.Run(name, func(t *testing.T) {
			before := len(e.ops())
			resp, body := do(t, "POST", pause, tc.headers)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.want)
			}
			if called := len(e.ops()) > before; called != (tc.want == http.StatusOK) {
				t.Fatalf("engine called = %v for status %d", called, resp.StatusCode)
			}
		})
	}
	if resp, _ := do(t, "POST", srv.URL+"/api/dashboard/rollouts/web/abort", map[string]string{"Authorization": "Bearer " + token}); resp.StatusCode != 200 {
		t.Fatalf("abort: %d", resp.StatusCode)
	}
	if ops := e.ops(); ops[len(ops)-1] != "abort:from the dashboard" {
		t.Fatalf("abort reached the engine as %q", ops[len(ops)-1])
	}
}

// With no credentials configured anywhere (loopback, open API) the page
// hands out a session whose CSRF token the actions still need.
func TestOpenModeStillNeedsCSRF(t *testing.T) {
	_, srv := server(t, dashboard.Auth{Open: true})
	resp, _ := do(t, "GET", srv.URL+"/", nil)
	var cookie string
	for _, ck := range resp.Cookies() {
		if ck.Name == dashboard.SessionCookie {
			if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
				t.Fatalf("cookie HttpOnly=%v SameSite=%v", ck.HttpOnly, ck.SameSite)
			}
			cookie = ck.Name + "=" + ck.Value
		}
	}
	if cookie == "" {
		t.Fatal("open mode page set no session cookie")
	}
	pause := srv.URL + "/api/dashboard/rollouts/web/pause"
	if resp, _ := do(t, "POST", pause, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("open mode POST without CSRF: %d, want 403", resp.StatusCode)
	}
	csrf := pageData(t, srv.URL+"/api/dashboard", map[string]string{"Cookie": cookie}).Auth.CSRF
	if resp, body := do(t, "POST", pause, map[string]string{"Cookie": cookie, dashboard.CSRFHeader: csrf}); resp.StatusCode != http.StatusOK {
		t.Fatalf("open mode POST with CSRF: %d %s", resp.StatusCode, body)
	}
}

// The stream sends a fresh copy when the engine reports a change.
func TestStreamFollowsUpdates(t *testing.T) {
	e, srv := server(t, tokenAuth())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/dashboard/stream?rollout=web", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	next := func() dashboard.PageData {
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var pd dashboard.PageData
				if err := json.Unmarshal([]byte(line), &pd); err != nil {
					t.Fatal(err)
				}
				return pd
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return dashboard.PageData{}
	}
	if pd := next(); pd.Rollout == nil || pd.Rollout.Weight != 20 {
		t.Fatalf("first event: %+v", pd.Rollout)
	}
	e.set(policy.PhaseProgressing, 50, 1)
	for i := 0; i < 20; i++ {
		pd := next()
		if pd.Rollout != nil && pd.Rollout.Weight == 50 && pd.Rollout.Step == 2 {
			if n := len(pd.Rollout.Series); n == 0 || pd.Rollout.Series[n-1].Weight != 50 {
				t.Fatalf("timeline does not end at the new weight: %+v", pd.Rollout.Series)
			}
			return
		}
	}
	t.Fatal("the stream never showed weight 50 at step 2")
}

type stats []signal.NodeReport

func (s stats) Reports() []signal.NodeReport { return s }

// The timeline's observed share and error rate come from the stats' last
// interval, summed over nodes; a node without a previous report is not read.
func TestTimelineObservesShareAndErrors(t *testing.T) {
	e := newEngine()
	now := time.Now()
	src := stats{
		{Node: "a", At: now, PrevAt: now.Add(-time.Second),
			Latest: map[string]float64{"cluster.web-v2.upstream_rq_completed": 30, "cluster.web-v2.upstream_rq_5xx": 3, "cluster.web-v1.upstream_rq_completed": 100},
			Prev:   map[string]float64{"cluster.web-v2.upstream_rq_completed": 10, "cluster.web-v2.upstream_rq_5xx": 1, "cluster.web-v1.upstream_rq_completed": 40}},
		{Node: "b", At: now, PrevAt: now.Add(-time.Second),
			Latest: map[string]float64{"cluster.web-v2.upstream_rq_2xx": 15, "cluster.web-v2.upstream_rq_5xx": 5, "cluster.web-v1.upstream_rq_2xx": 60},
			Prev:   map[string]float64{"cluster.web-v2.upstream_rq_2xx": 15, "cluster.web-v2.upstream_rq_5xx": 5, "cluster.web-v1.upstream_rq_2xx": 40}},
		{Node: "first-report", At: now, Latest: map[string]float64{"cluster.web-v2.upstream_rq_completed": 1e6}},
	}
	d := dashboard.New(dashboard.Options{Engine: e, Stats: []signal.StatsSource{src}, SampleEvery: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	srv := httptest.NewServer(d)
	defer srv.Close()
	time.Sleep(100 * time.Millisecond)
	pd := pageData(t, srv.URL+"/api/dashboard?rollout=web", nil)
	ss := pd.Rollout.Series
	if len(ss) == 0 {
		t.Fatal("no samples")
	}
	last := ss[len(ss)-1]
	// canary 20 of 20+60+20 = 20%; 5xx 2 of 20 = 10%.
	if last.Share == nil || *last.Share != 20 || last.Errors == nil || *last.Errors != 10 {
		t.Fatalf("last sample share %v errors %v, want 20 and 10", deref(last.Share), deref(last.Errors))
	}
}

func deref(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

// Open streams end when Run's context does, so a graceful HTTP shutdown
// does not wait for browsers.
func TestStreamsEndWithRun(t *testing.T) {
	d := dashboard.New(dashboard.Options{Engine: newEngine()})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); d.Run(ctx) }()
	srv := httptest.NewServer(d)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/dashboard/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	if !sc.Scan() {
		t.Fatal("no first event")
	}
	cancel()
	<-ran
	ended := make(chan struct{})
	go func() {
		for sc.Scan() {
		}
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(3 * time.Second):
		t.Fatal("the stream stayed open after Run ended")
	}
}

// countLimiter allows burst failures per source, then refuses.
type countLimiter struct {
	mu     sync.Mutex
	burst  int
	failed map[string]int
}

func (l *countLimiter) Allow(src string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed[src] < l.burst, time.Second
}

func (l *countLimiter) Failed(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed[src]++
}

// Wrong tokens at the login form are reported to the limiter, and a source
// over its limit is refused with 429 before the token is even read.
func TestLoginIsRateLimited(t *testing.T) {
	lim := &countLimiter{burst: 3, failed: map[string]int{}}
	auth := tokenAuth()
	auth.Limiter = lim
	_, srv := server(t, auth)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	codes := []int{}
	for i := 0; i < 5; i++ {
		resp, err := c.PostForm(srv.URL+"/login", url.Values{"token": {"wrong"}, "next": {"/"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	want := []int{http.StatusSeeOther, http.StatusSeeOther, http.StatusSeeOther, http.StatusTooManyRequests, http.StatusTooManyRequests}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("login answers %v, want %v", codes, want)
	}
	if lim.failed["127.0.0.1"] != 3 {
		t.Errorf("limiter saw %d failures, want 3", lim.failed["127.0.0.1"])
	}
	if ck := loginCookie(t, srv, token); ck != "" {
		t.Errorf("the right token from a limited source got a session")
	}
}

// During a mirror step the canary cluster's completed requests are the
// shadow copies Envoy sends it: the timeline's observed share of users is
// 0, not the copies' share of the counts.
func TestTimelineMirrorStepIsNotCanaryShare(t *testing.T) {
	zero, full := 0, 100
	plan := policy.Plan{Name: "web", Steps: []policy.Step{{Weight: &zero, Mirror: 50, Hold: policy.Duration(time.Minute)}, {Weight: &full}}}
	plan.Stable.Cluster, plan.Canary.Cluster = "web-v1", "web-v2"
	e := &engine{st: policy.Status{Rollout: policy.Rollout{Plan: plan, State: policy.State{Phase: policy.PhaseProgressing, StepIndex: 0, Weight: 0,
		CanaryPublished: true, StablePublished: true}}, Signal: policy.Signal{State: policy.SignalClear}, StepCount: 2}}
	now := time.Now()
	src := stats{{Node: "a", At: now, PrevAt: now.Add(-time.Second),
		Latest: map[string]float64{"cluster.web-v2.upstream_rq_completed": 50, "cluster.web-v1.upstream_rq_completed": 100},
		Prev:   map[string]float64{}}}
	d := dashboard.New(dashboard.Options{Engine: e, Stats: []signal.StatsSource{src}, SampleEvery: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	srv := httptest.NewServer(d)
	defer srv.Close()
	time.Sleep(100 * time.Millisecond)
	ss := pageData(t, srv.URL+"/api/dashboard?rollout=web", nil).Rollout.Series
	if len(ss) == 0 {
		t.Fatal("no samples")
	}
	if last := ss[len(ss)-1]; last.Share == nil || *last.Share != 0 {
		t.Fatalf("mirror step: observed share %v, want 0 (the 50 canary requests are mirrored copies)", deref(last.Share))
	}
}
