package e2e

import (
	"context"
	"encoding/json"
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
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/shiftplane/shiftplane/policy/notify"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/harness"
)

// findChromium returns the browser for the dashboard test: $CHROMIUM_BIN,
// or chromium on PATH (scripts/install-chromium.sh installs it). Missing
// fails under CI=true and skips otherwise, as Envoy does.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM_BIN"); p != "" {
		return p
	}
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	msg := "chromium not found ($CHROMIUM_BIN, PATH); install it with: bash scripts/install-chromium.sh"
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// artifactDir is where screenshots go: $SHIFTPLANE_ARTIFACTS/<test> or a
// temporary folder, logged either way.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if base := os.Getenv("SHIFTPLANE_ARTIFACTS"); base != "" {
		dir = filepath.Join(base, t.Name())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// browser starts a headless Chromium (its own profile, so no cookies are
// shared between calls) and returns a tab context.
func browser(t *testing.T, bin string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // root in CI
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	// The first Run starts the browser, which lives as long as ctx.
	if _, err := chromedp.Run(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium %s: %v", bin, err)
	}
	return ctx
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100) /* 100: PNG */)
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d bytes)", path, len(png))
}

func dashboardPlan(listen string, v1, v2 *harness.Backend) string {
	return fmt.Sprintf(`name: web
listener: {address: %q}
stable: {cluster: web-v1, endpoints: [%q]}
canary: {cluster: web-v2, endpoints: [%q]}
outlierDetection: {consecutive5xx: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}
steps:
  - {weight: 20, hold: 3s}
  - {weight: 40, hold: 3s}
  - {weight: 60, hold: 1m}
  - {weight: 100}
analysis: {stableFor: 1s, staleAfter: 5s, rollbackAfter: 4s, drainTimeout: 3s, maxErrorRate: 0.2}
`, listen, v1.Addr, v2.Addr)
}

// The dashboard against a running shiftplane and a real Envoy during a
// rollout: the list shows it; the rollout page's weight and step move live
// without a reload; without credentials there are no buttons and a forged
// POST is refused; logged in with the API token, Pause pauses the rollout
// (checked through the policy API), Resume resumes, and a failing canary's
// rollback is drawn on the open page. A notification sink configured on the
// same server gets every transition, signed.
func TestDashboardInBrowser(t *testing.T) {
	bin := findChromium(t)
	const token = "dash-e2e-token"
	hook := startReceiver(t, "notify-secret")
	cfg := filepath.Join(t.TempDir(), "shiftplane.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("notifications:\n  - name: e2e\n    url: %s\n    secret: notify-secret\n", hook.url)), 0o644); err != nil {
		t.Fatal(err)
	}
	sp := StartShiftplane(t, "--api-token", token, "--config", cfg)
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("web.yaml", dashboardPlan(listen, v1, v2))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-dash", Cluster: "e2e", XDSAddr: sp.XDSAddr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatal(err)
	}
	// Traffic, so the signal has evidence and holds count.
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		_, _ = harness.HTTPLoad(loadCtx, "http://"+listen+"/", harness.LoadOptions{Duration: 90 * time.Second, Rate: 100, Concurrency: 4})
	}()
	defer func() { stopLoad(); <-loadDone }()
	WaitRouteWeights(t, envoy, "web-v2", 20)

	dir := artifactDir(t)
	base := "http://" + sp.HTTPAddr
	b := browser(t, bin)

	// The list shows the rollout.
	if err := chromedp.Do(b,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#rollouts tr[data-name="web"]`)),
	); err != nil {
		t.Fatalf("rollout list: %v", err)
	}
	listText := text(t, b, `#rollouts tr[data-name="web"]`)
	if !strings.Contains(listText, "web") || !strings.Contains(listText, "%") {
		t.Fatalf("list row %q lacks the rollout's name and weight", listText)
	}
	if n := eval[int](t, b, `document.querySelectorAll('#snapshots tbody tr').length`); n == 0 {
		t.Fatal("the list page shows no recent xDS snapshots")
	}
	paint := firstPaint(t, b)
	t.Logf("list page: first contentful paint %.0f ms", paint)
	if paint < 0 || paint > 1000 {
		t.Fatalf("first contentful paint %.0f ms; want a measured paint well under a second (target 200 ms)", paint)
	}
	screenshot(t, b, dir, "dashboard-list.png")

	// The rollout page moves live: mark the window, then watch the weight
	// and the step change; the mark survives, so the page never reloaded.
	if err := chromedp.Do(b,
		chromedp.Navigate(base+"/rollouts/web"),
		chromedp.WaitVisible(chromedp.CSS(`#weight`)),
	); err != nil {
		t.Fatalf("rollout page: %v", err)
	}
	paint = firstPaint(t, b)
	eval[int](t, b, `window.__noReload = 1; window.addEventListener('error', (e) => { window.__lastErr = String(e.message) }); 1`)
	weight0, step0 := text(t, b, "#weight"), text(t, b, "#step")
	t.Logf("rollout page: first contentful paint %.0f ms; weight %s, step %s", paint, weight0, step0)
	if paint < 0 || paint > 1000 {
		t.Fatalf("rollout page: first contentful paint %.0f ms; want a measured paint well under a second (target 200 ms)", paint)
	}
	if step0 != "1/4" && step0 != "2/4" {
		t.Fatalf("step shows %q; want the CLI's 1-based \"1/4\" or \"2/4\"", step0)
	}
	var weight1, step1 string
	waitFor(t, 30*time.Second, "weight and step to move on the open page", func() (bool, string) {
		weight1, step1 = text(t, b, "#weight"), text(t, b, "#step")
		return weight1 == "60%" && step1 == "3/4", weight1 + " " + step1
	})
	mark := eval[int](t, b, `window.__noReload || 0`)
	hasPause := eval[bool](t, b, `document.querySelector('#btn-pause') !== null`)
	if mark != 1 {
		t.Fatal("the page reloaded to show the change; it must update in place")
	}
	t.Logf("live on the open page: %s step %s → %s step %s", weight0, step0, weight1, step1)
	// The status page shows what the fleet served per step next to the
	// configured weight: the 20% step, which the rollout left, has a share.
	var observed string
	waitFor(t, 15*time.Second, "the observed split of the 20% step on the page", func() (bool, string) {
		observed = eval[string](t, b, `Array.from(document.querySelectorAll('#observed-steps tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent).join('|')).join('; ')`)
		return regexp.MustCompile(`\|20%\|\d+\.\d%\|\d+\|\d+\|`).MatchString(observed), observed
	})
	t.Logf("observed split on the page: %s; this step: %s", observed, text(t, b, "#observed"))
	if hasPause {
		t.Fatal("an unauthenticated page shows the Pause button")
	}
	screenshot(t, b, dir, "dashboard-rollout-readonly.png")

	// A forged POST is refused: from the read-only page itself, from a
	// client with no credentials, and from another origin with a session.
	forged := eval[int](t, b, `fetch('/api/dashboard/rollouts/web/pause', {method: 'POST'}).then(r => r.status)`, chromedp.EvalAwaitPromise)
	if forged != http.StatusUnauthorized {
		t.Fatalf("forged POST from the read-only page: status %d, want 401", forged)
	}
	if code := post(t, base+"/api/dashboard/rollouts/web/pause", nil); code != http.StatusUnauthorized {
		t.Fatalf("POST without credentials: status %d, want 401", code)
	}
	cookie := login(t, base, token)
	if code := post(t, base+"/api/dashboard/rollouts/web/pause", map[string]string{"Cookie": cookie}); code != http.StatusForbidden {
		t.Fatalf("POST with the session cookie but no CSRF token: status %d, want 403", code)
	}
	if code := post(t, base+"/api/dashboard/rollouts/web/pause", map[string]string{"Authorization": "Bearer " + token, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}); code != http.StatusForbidden {
		t.Fatalf("cross-site POST: status %d, want 403", code)
	}
	if code := post(t, base+"/api/dashboard/rollouts/web/pause", map[string]string{"Authorization": "Bearer wrong"}); code != http.StatusUnauthorized {
		t.Fatalf("POST with a wrong token: status %d, want 401", code)
	}
	rc := tokenClient(t, sp, token)
	if p := apiPhase(ctx, t, rc); p != "PROGRESSING" && p != "HOLDING" {
		t.Fatalf("after the refused POSTs the rollout is %s; want it still running", p)
	}

	// Logged in with the API token, the buttons are there and Pause pauses.
	if err := chromedp.Do(b,
		chromedp.WaitVisible(chromedp.CSS(`#login input[name="token"]`)),
		chromedp.SendKeys(chromedp.CSS(`#login input[name="token"]`), token),
		chromedp.Submit(chromedp.CSS(`#login`)),
		chromedp.WaitEnabled(chromedp.CSS(`#btn-pause`)),
	); err != nil {
		t.Fatalf("log in: %v", err)
	}
	screenshot(t, b, dir, "dashboard-rollout.png")
	// The page re-renders on every live update; a click that lands on a
	// button being replaced is lost, so click again until it takes.
	clicks := 0
	lastClick := time.Time{}
	waitFor(t, 15*time.Second, "the rollout to be PAUSED (through the API)", func() (bool, string) {
		p := apiPhase(ctx, t, rc)
		if p != "PAUSED" && time.Since(lastClick) > time.Second {
			if err := chromedp.Do(b, chromedp.Click(chromedp.CSS(`#btn-pause`))); err != nil {
				t.Fatal(err)
			}
			clicks++
			lastClick = time.Now()
		}
		return p == "PAUSED", p
	})
	t.Logf("Pause took %d click(s)", clicks)
	waitFor(t, 10*time.Second, "the page to show PAUSED", func() (bool, string) {
		phase := text(t, b, "#phase")
		return phase == "PAUSED", phase
	})
	screenshot(t, b, dir, "dashboard-rollout-paused.png")

	// Resume, then the canary fails: the open page shows the signal firing,
	// the hold and the rollback.
	if err := chromedp.Do(b, chromedp.WaitEnabled(chromedp.CSS(`#btn-resume`)), chromedp.Click(chromedp.CSS(`#btn-resume`))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the rollout to run again (through the API)", func() (bool, string) {
		p := apiPhase(ctx, t, rc)
		return p == "PROGRESSING" || p == "HOLDING", p
	})
	eval[int](t, b, `window.__noReload = 2`) // logging in loaded the page anew
	time.Sleep(2 * time.Second)              // a stretch of healthy timeline before the failure
	v2.SetFailing(503)
	waitFor(t, 40*time.Second, "the page to show ROLLED_BACK", func() (bool, string) {
		phase := text(t, b, "#phase")
		return phase == "ROLLED_BACK", phase + " conn=" + text(t, b, "#conn") + " err=" + eval[string](t, b, `window.__lastErr || ""`)
	})
	if eval[int](t, b, `window.__noReload || 0`) != 2 {
		t.Fatal("the page reloaded during the rollback")
	}
	if !eval[bool](t, b, `document.querySelector('.mark-rollback') !== null && document.querySelector('.mark-hold') !== null`) {
		t.Fatal("the timeline has no hold and rollback markers")
	}
	if !eval[bool](t, b, `document.querySelector('.band-FIRING') !== null && document.querySelector('#line-errors').getAttribute('d').length > 10`) {
		t.Fatal("the timeline shows no FIRING band or no error-rate line")
	}
	time.Sleep(1500 * time.Millisecond) // one more sample after the rollback
	screenshot(t, b, dir, "dashboard-rollback.png")

	// The notification sink saw the whole story, in order and signed.
	var got []string
	waitFor(t, 10*time.Second, "the ROLLED_BACK notification", func() (bool, string) {
		got = hook.transitions()
		return len(got) > 0 && got[len(got)-1] == "ROLLING_BACK>ROLLED_BACK", strings.Join(got, " ")
	})
	want := []string{">PENDING", "PENDING>PROGRESSING", "PROGRESSING>PAUSED", "PAUSED>PROGRESSING", "ROLLING_BACK>ROLLED_BACK"}
	if !isOrderedSubset(want, got) {
		t.Fatalf("notifications %v; want %v among them, in order", got, want)
	}
	if bad := hook.badSignatures(); bad != 0 {
		t.Fatalf("%d notifications with a bad signature", bad)
	}
	if v := sp.Metric(`shiftplane_notifications_total{result="delivered",sink="e2e"}`); v < float64(len(got)) {
		t.Fatalf("shiftplane_notifications_total delivered = %v, want ≥ %d", v, len(got))
	}
	t.Logf("notifications (phase changes): %s", strings.Join(got, ", "))
}

// receiver is a local notification sink that checks each body's signature.
type receiver struct {
	url    string
	secret string
	mu     sync.Mutex
	phases []string
	bad    int
}

func startReceiver(t *testing.T, secret string) *receiver {
	t.Helper()
	r := &receiver{secret: secret}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.url = "http://" + lis.Addr().String() + "/hook"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if req.Header.Get(notify.SignatureHeader) != notify.Sign([]byte(r.secret), body) {
			r.bad++
			return
		}
		var n notify.Notification
		if json.Unmarshal(body, &n) == nil && n.From != n.To {
			r.phases = append(r.phases, n.From+">"+n.To)
		}
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *receiver) transitions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.phases...)
}

func (r *receiver) badSignatures() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bad
}

// isOrderedSubset reports whether every element of sub appears in seq, in order.
func isOrderedSubset(sub, seq []string) bool {
	i := 0
	for _, s := range seq {
		if i < len(sub) && s == sub[i] {
			i++
		}
	}
	return i == len(sub)
}

// text reads an element's text; "" when it is not there (yet).
func text(t *testing.T, b context.Context, css string) string {
	t.Helper()
	v, _ := chromedp.Run(b, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q)||{}).textContent||""`, css)))
	return v
}

func eval[T any](t *testing.T, b context.Context, js string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	v, err := chromedp.Run(b, chromedp.Evaluate[T](js, opts...))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// firstPaint is the page's first contentful paint in ms after navigation
// start, as the browser measured it.
func firstPaint(t *testing.T, b context.Context) float64 {
	t.Helper()
	return eval[float64](t, b, `new Promise((resolve) => {
		const fcp = (es) => es.find((e) => e.name === 'first-contentful-paint');
		const e = fcp(performance.getEntriesByType('paint'));
		if (e) return resolve(e.startTime);
		new PerformanceObserver((l) => { const e = fcp(l.getEntries()); if (e) resolve(e.startTime); }).observe({type: 'paint', buffered: true});
		setTimeout(() => resolve(-1), 5000);
	})`, chromedp.EvalAwaitPromise)
}

// post sends an empty POST with headers and returns the status.
func post(t *testing.T, u string, headers map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// login posts the token to /login and returns the session cookie header.
func login(t *testing.T, base, token string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.PostForm(base+"/login", url.Values{"token": {token}, "next": {"/"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == "shiftplane_session" && ck.Value != "" {
			if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
				t.Fatalf("session cookie HttpOnly=%v SameSite=%v; want HttpOnly and Strict", ck.HttpOnly, ck.SameSite)
			}
			return ck.Name + "=" + ck.Value
		}
	}
	t.Fatalf("login answered %d without a session cookie", resp.StatusCode)
	return ""
}

func tokenClient(t *testing.T, sp *Shiftplane, token string) shiftplanev1.RolloutServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(sp.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, m string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return inv(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), m, req, reply, cc, o...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return shiftplanev1.NewRolloutServiceClient(cc)
}

func apiPhase(ctx context.Context, t *testing.T, rc shiftplanev1.RolloutServiceClient) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := rc.Get(ctx, &shiftplanev1.GetRequest{Name: "web"})
	if err != nil {
		t.Fatalf("policy API get: %v", err)
	}
	return strings.TrimPrefix(resp.GetRollout().GetPhase().String(), "PHASE_")
}
