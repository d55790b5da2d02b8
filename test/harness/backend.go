package harness

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Backend is an in-process HTTP server standing in for one version of a
// service. It answers every path with 200, body Version and header
// "X-Version: Version", unless switched to fail or to be slow. Its methods
// may be called from any goroutine.
type Backend struct {
	Version string
	Addr    string // 127.0.0.1:port
	Port    int
	URL     string // http://127.0.0.1:port

	srv      *http.Server
	closing  chan struct{}
	closeOne sync.Once

	failCode    atomic.Int64 // 0: healthy
	delay       atomic.Int64 // time.Duration
	requests    atomic.Int64
	failures    atomic.Int64
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
	firstNanos  atomic.Int64 // unix nanos; 0 until the first request
	lastNanos   atomic.Int64
}

type backendConfig struct{ addr string }

// BackendOption configures StartBackend.
type BackendOption func(*backendConfig)

// WithAddr makes the backend listen on addr (a loopback host:port), for
// example to bring a backend back on the address it had.
func WithAddr(addr string) BackendOption {
	return func(c *backendConfig) { c.addr = addr }
}

// StartBackend starts a Backend on a free 127.0.0.1 port (or WithAddr's)
// and closes it in t.Cleanup.
func StartBackend(t testing.TB, version string, opts ...BackendOption) *Backend {
	t.Helper()
	cfg := backendConfig{addr: "127.0.0.1:0"}
	for _, o := range opts {
		o(&cfg)
	}
	if host, _, err := net.SplitHostPort(cfg.addr); err != nil || !isLoopbackHost(host) {
		t.Fatalf("harness: backend %s: address %q must be a loopback host:port", version, cfg.addr)
	}
	l, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		t.Fatalf("harness: backend %s: listen %s: %v", version, cfg.addr, err)
	}
	b := &Backend{Version: version, closing: make(chan struct{})}
	b.Addr = l.Addr().String()
	b.Port = l.Addr().(*net.TCPAddr).Port
	b.URL = "http://" + b.Addr
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = b.srv.Serve(l) }()
	t.Cleanup(b.Close)
	return b
}

func (b *Backend) serve(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UnixNano()
	b.firstNanos.CompareAndSwap(0, now)
	b.lastNanos.Store(now)
	b.requests.Add(1)
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	for {
		m := b.maxInFlight.Load()
		if n <= m || b.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	if d := time.Duration(b.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-b.closing:
			return
		}
	}
	w.Header().Set("X-Version", b.Version)
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(b.Version)))
	if code := int(b.failCode.Load()); code != 0 {
		b.failures.Add(1)
		w.WriteHeader(code)
	}
	_, _ = w.Write([]byte(b.Version))
}

// SetFailing makes every following request answer with code; 0 (or 200)
// makes the backend healthy again. It panics on a code outside 100..599.
func (b *Backend) SetFailing(code int) {
	if code == http.StatusOK {
		code = 0
	}
	if code != 0 && (code < 100 || code > 599) {
		panic(fmt.Sprintf("harness: backend %s: SetFailing(%d): not an HTTP status", b.Version, code))
	}
	b.failCode.Store(int64(code))
}

// SetDelay makes every following request wait d before it is answered
// (0: no delay). A waiting request ends early if the client goes away or the
// backend is closed.
func (b *Backend) SetDelay(d time.Duration) { b.delay.Store(int64(d)) }

// Requests is the number of requests received so far.
func (b *Backend) Requests() int64 { return b.requests.Load() }

// Failures is the number of requests answered with the SetFailing code.
func (b *Backend) Failures() int64 { return b.failures.Load() }

// InFlight is the number of requests being handled now.
func (b *Backend) InFlight() int64 { return b.inFlight.Load() }

// MaxInFlight is the highest InFlight seen so far.
func (b *Backend) MaxInFlight() int64 { return b.maxInFlight.Load() }

// FirstRequest is when the first request arrived (zero if none has).
func (b *Backend) FirstRequest() time.Time { return unixNanos(b.firstNanos.Load()) }

// LastRequest is when the latest request arrived (zero if none has).
func (b *Backend) LastRequest() time.Time { return unixNanos(b.lastNanos.Load()) }

func unixNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Close stops the backend: its listener and connections are closed at once
// and delayed requests are abandoned. It waits (at most 5 s) until no
// request is in flight. Closing twice is fine.
func (b *Backend) Close() {
	b.closeOne.Do(func() {
		close(b.closing)
		_ = b.srv.Close()
		for deadline := time.Now().Add(5 * time.Second); b.inFlight.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// isLoopbackHost reports whether host is "localhost" or a loopback IP.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
