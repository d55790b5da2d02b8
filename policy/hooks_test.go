package policy_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// hookServer is a local webhook target that records each call.
type hookServer struct {
	*httptest.Server
	mu    sync.Mutex
	calls []time.Time
}

func (s *hookServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// startHookServer serves h on addr ("127.0.0.1:0", "127.0.0.2:0"); tls
// picks https.
func startHookServer(t *testing.T, addr string, tls bool, h func(n int, w http.ResponseWriter, r *http.Request)) *hookServer {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &hookServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.calls = append(s.calls, time.Now())
		n := len(s.calls)
		s.mu.Unlock()
		h(n, w, r)
	}))
	s.Listener.Close()
	s.Listener = l
	if tls {
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	return s
}

func answer(code int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func redirectTo(url string) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, url, http.StatusTemporaryRedirect)
	}
}

func runWebhook(t *testing.T, runner policy.CommandHooks, h policy.Hook, timeout time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runner.Run(ctx, h, []byte(`{"name":"web"}`))
}

func webhook(url string) policy.Hook { return policy.Hook{Webhook: &policy.Webhook{URL: url}} }

func TestWebhookRedirects(t *testing.T) {
	// 127.0.0.2 is loopback too, but not in the default hooks.allowHosts
	// (127.0.0.1, ::1, localhost): HostAllowed tells them apart by name.
	if policy.HostAllowed("127.0.0.2", nil) || !policy.HostAllowed("127.0.0.1", nil) {
		t.Fatal("fixture: the default allow list must take 127.0.0.1 and refuse 127.0.0.2")
	}
	outside := startHookServer(t, "127.0.0.2:0", false, answer(http.StatusOK))
	inside := startHookServer(t, "127.0.0.1:0", false, answer(http.StatusOK))
	plain := startHookServer(t, "127.0.0.1:0", false, answer(http.StatusOK))

	t.Run("to an allowed host is followed", func(t *testing.T) {
		from := startHookServer(t, "127.0.0.1:0", false, redirectTo(inside.URL+"/done"))
		before := inside.count()
		if _, err := runWebhook(t, policy.CommandHooks{}, webhook(from.URL), 5*time.Second); err != nil {
			t.Fatalf("redirect to an allowed host: %v", err)
		}
		if inside.count() != before+1 {
			t.Errorf("the allowed target got %d calls, want 1", inside.count()-before)
		}
	})
	t.Run("to a host outside allowHosts is refused", func(t *testing.T) {
		from := startHookServer(t, "127.0.0.1:0", false, redirectTo(outside.URL+"/steal"))
		h := webhook(from.URL)
		h.Retries, h.RetryBackoff = 3, policy.Duration(time.Millisecond)
		_, err := runWebhook(t, policy.CommandHooks{}, h, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), `redirect refused: to host "127.0.0.2", not in hooks.allowHosts`) {
			t.Fatalf("err = %v, want the redirect refused naming the host", err)
		}
		if n := outside.count(); n != 0 {
			t.Errorf("the disallowed server was called %d times", n)
		}
		if n := from.count(); n != 1 {
			t.Errorf("a refused redirect was retried: %d calls, want 1", n)
		}
	})
	t.Run("from https down to http is refused", func(t *testing.T) {
		from := startHookServer(t, "127.0.0.1:0", true, redirectTo(plain.URL+"/x"))
		_, err := runWebhook(t, policy.CommandHooks{Client: from.Client()}, webhook(from.URL), 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "redirect refused: from https down to http://") {
			t.Fatalf("err = %v, want the downgrade refused", err)
		}
		if n := plain.count(); n != 0 {
			t.Errorf("the http target was called %d times", n)
		}
	})
	t.Run("more than three hops are refused", func(t *testing.T) {
		var loop *hookServer
		loop = startHookServer(t, "127.0.0.1:0", false, func(n int, w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, loop.URL+"/hop/"+strconv.Itoa(n), http.StatusTemporaryRedirect)
		})
		_, err := runWebhook(t, policy.CommandHooks{}, webhook(loop.URL), 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "redirect refused: more than 3 redirects") {
			t.Fatalf("err = %v, want the hop limit", err)
		}
		if n := loop.count(); n != 4 {
			t.Errorf("the loop was called %d times, want 4 (the first request and 3 redirects)", n)
		}
	})
}

func TestWebhookRetries(t *testing.T) {
	const backoff = 20 * time.Millisecond
	tests := map[string]struct {
		retries int
		answer  func(n int, w http.ResponseWriter, r *http.Request)
		wantErr string // "" for success
		calls   int
	}{
		"5xx retried until 2xx": {retries: 3, calls: 3, answer: func(n int, w http.ResponseWriter, _ *http.Request) {
			if n < 3 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}},
		"5xx until retries run out": {retries: 2, calls: 3, answer: answer(http.StatusBadGateway), wantErr: "status 502 (after 3 attempts)"},
		"4xx never retried":         {retries: 5, calls: 1, answer: answer(http.StatusForbidden), wantErr: "status 403"},
		"no retries by default":     {retries: 0, calls: 1, answer: answer(http.StatusInternalServerError), wantErr: "status 500"},
		"network error retried": {retries: 2, calls: 3, answer: func(n int, w http.ResponseWriter, _ *http.Request) {
			if n < 3 { // the connection dies without an answer
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close()
				}
			}
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := startHookServer(t, "127.0.0.1:0", false, tc.answer)
			h := webhook(s.URL)
			h.Retries, h.RetryBackoff = tc.retries, policy.Duration(backoff)
			_, err := runWebhook(t, policy.CommandHooks{}, h, 10*time.Second)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if n := s.count(); n != tc.calls {
				t.Errorf("%d calls, want %d", n, tc.calls)
			}
			// The waits double: call i+1 comes at least backoff·2^(i-1) after call i.
			s.mu.Lock()
			defer s.mu.Unlock()
			for i := 1; i < len(s.calls); i++ {
				if gap, min := s.calls[i].Sub(s.calls[i-1]), backoff<<(i-1); gap < min {
					t.Errorf("retry %d came %v after the previous call, want >= %v", i, gap, min)
				}
			}
		})
	}
}

// Retries stop when the hook's timeout would end before the next one.
func TestWebhookRetriesBoundedByHookTimeout(t *testing.T) {
	s := startHookServer(t, "127.0.0.1:0", false, answer(http.StatusServiceUnavailable))
	h := webhook(s.URL)
	h.Retries, h.RetryBackoff = 10, policy.Duration(40*time.Millisecond)
	start := time.Now()
	_, err := runWebhook(t, policy.CommandHooks{}, h, 400*time.Millisecond)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "the hook's timeout ends before the next retry") {
		t.Fatalf("err = %v, want the retries cut by the hook's timeout", err)
	}
	// Waits 40+80+160 ms fit in 400 ms, the next 320 ms does not: 4 calls.
	if n := s.count(); n != 4 {
		t.Errorf("%d calls, want 4", n)
	}
	if took >= 400*time.Millisecond {
		t.Errorf("took %v, past the hook's 400ms timeout", took)
	}
}
