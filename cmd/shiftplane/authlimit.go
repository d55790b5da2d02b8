package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shiftplane/shiftplane/policy/dashboard"
)

// authLimiter slows down guessing: each source address may fail
// authentication authBurst times, then once per authRefill; until then
// its calls are refused without looking at the credentials. Failures and
// refusals are counted (shiftplane_auth_failures_total{surface},
// shiftplane_auth_limited_total{surface}). Safe for concurrent use.
type authLimiter struct {
	now      func() time.Time
	failures *prometheus.CounterVec
	limited  *prometheus.CounterVec

	mu      sync.Mutex
	sources map[string]*authBucket
}

type authBucket struct {
	tokens float64
	at     time.Time
}

const (
	authBurst      = 10
	authRefill     = time.Second // one more attempt per second after the burst
	authMaxSources = 10000       // the table's bound; full buckets go first
)

func newAuthLimiter(reg prometheus.Registerer, now func() time.Time) *authLimiter {
	l := &authLimiter{
		now: now, sources: map[string]*authBucket{},
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shiftplane_auth_failures_total", Help: "Requests with a missing or wrong token, by surface (api, http).",
		}, []string{"surface"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shiftplane_auth_limited_total", Help: "Requests refused because their source failed authentication too often, by surface.",
		}, []string{"surface"}),
	}
	for _, s := range []string{"api", "http"} {
		l.failures.WithLabelValues(s)
		l.limited.WithLabelValues(s)
	}
	if reg != nil {
		reg.MustRegister(l.failures, l.limited)
	}
	return l
}

// sourceOf is the host part of a peer address.
func sourceOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

func (l *authLimiter) bucket(src string, now time.Time) *authBucket {
	b, ok := l.sources[src]
	if !ok {
		if len(l.sources) >= authMaxSources {
			l.pruneLocked(now)
		}
		b = &authBucket{tokens: authBurst, at: now}
		l.sources[src] = b
	}
	b.tokens = min(authBurst, b.tokens+now.Sub(b.at).Seconds()/authRefill.Seconds())
	b.at = now
	return b
}

func (l *authLimiter) pruneLocked(now time.Time) {
	for src, b := range l.sources {
		if b.tokens+now.Sub(b.at).Seconds()/authRefill.Seconds() >= authBurst {
			delete(l.sources, src)
		}
	}
	for src := range l.sources { // still full of failing sources: forget one
		if len(l.sources) < authMaxSources {
			break
		}
		delete(l.sources, src)
	}
}

// allow reports whether src may try to authenticate now, and if not, when.
func (l *authLimiter) allow(surface, src string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.bucket(src, now)
	if b.tokens >= 1 {
		return true, 0
	}
	l.limited.WithLabelValues(surface).Inc()
	return false, time.Duration((1 - b.tokens) * float64(authRefill))
}

// failed records a failed authentication of src.
func (l *authLimiter) failed(surface, src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(src, l.now())
	b.tokens = max(0, b.tokens-1)
	l.failures.WithLabelValues(surface).Inc()
}

// httpGuard protects the HTTP port off loopback: /metrics needs the
// metrics token or the API token as a bearer token (the dashboard checks
// its own login); failures are limited per source. On loopback it is next.
func httpGuard(cfg Config, lim *authLimiter, next http.Handler) (http.Handler, error) {
	if isLoopback(cfg.HTTP.Address) {
		return next, nil
	}
	apiHash, err := apiToken(cfg)
	if err != nil {
		return nil, err
	}
	var hashes []*[32]byte
	if apiHash != nil {
		hashes = append(hashes, apiHash)
	}
	if cfg.HTTP.MetricsToken != "" {
		h := sha256.Sum256([]byte(cfg.HTTP.MetricsToken))
		hashes = append(hashes, &h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			next.ServeHTTP(w, r)
			return
		}
		src := sourceOf(r.RemoteAddr)
		if ok, wait := lim.allow("http", src); !ok {
			w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
			http.Error(w, "too many failed authentications from "+src, http.StatusTooManyRequests)
			return
		}
		got := ""
		if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			got = strings.TrimSpace(a[7:])
		}
		h := sha256.Sum256([]byte(got))
		for _, want := range hashes {
			if got != "" && subtle.ConstantTimeCompare(h[:], want[:]) == 1 {
				next.ServeHTTP(w, r)
				return
			}
		}
		lim.failed("http", src)
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "/metrics off loopback needs Authorization: Bearer <http.metricsToken or the API token>", http.StatusUnauthorized)
	}), nil
}

// dashboardLimiter applies the HTTP surface's limit to the dashboard's
// login form.
type dashboardLimiter struct{ l *authLimiter }

func (d dashboardLimiter) Allow(src string) (bool, time.Duration) { return d.l.allow("http", src) }
func (d dashboardLimiter) Failed(src string)                      { d.l.failed("http", src) }

// limiterFor is l as the dashboard's Limiter; nil without one.
func limiterFor(l *authLimiter) dashboard.Limiter {
	if l == nil {
		return nil
	}
	return dashboardLimiter{l}
}
