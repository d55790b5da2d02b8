package main

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

func TestSecurityConfigRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string // "" = accepted
	}{
		"xds off loopback without mTLS": {args: []string{"--xds-address", "0.0.0.0:18000"},
			want: `xds.address: "0.0.0.0:18000" is not loopback and xds.tls.clientCA is not set`},
		"xds off loopback, insecure on purpose": {args: []string{"--xds-address", "0.0.0.0:18000", "--xds-insecure"}},
		"xds cert without key":                  {args: []string{"--xds-tls-cert", "/nonexistent.crt"}, want: "xds.tls: cert and key must be given together"},
		"xds client CA without cert":            {args: []string{"--xds-tls-client-ca", "/nonexistent.pem"}, want: "xds.tls.clientCA: \"/nonexistent.pem\" needs xds.tls.cert"},
		"stats limit too small":                 {args: []string{"--xds-max-message-bytes", "100"}, want: "xds.limits.maxMessageBytes: must be at least 65536"},
		"token off loopback without TLS": {args: []string{"--api-address", "0.0.0.0:18001", "--api-token", "s3cret"},
			want: `api.address: "0.0.0.0:18001" is not loopback and api.tls.cert is not set: the bearer token would cross the network in clear text`},
		"token off loopback, insecure on purpose": {args: []string{"--api-address", "0.0.0.0:18001", "--api-token", "s3cret", "--api-insecure"}},
		"http off loopback without a token": {args: []string{"--http-address", "0.0.0.0:18002"},
			want: `http.address: "0.0.0.0:18002" is not loopback: the dashboard and /metrics then need a token`},
		"http off loopback with a token": {args: []string{"--http-address", "0.0.0.0:18002", "--api-token", "s3cret"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loadWith(t, nil, tc.args...)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// 200 wrong tokens from one source: the first authBurst are checked and
// refused, the rest refused unchecked, all counted; the right token from
// that source waits for the refill, and another source is not affected.
func TestBruteForceLimitedAndCounted(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	reg := prometheus.NewRegistry()
	lim := newAuthLimiter(reg, clock.now)
	want := sha256.Sum256([]byte("right"))
	log := slog.New(slog.DiscardHandler)
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(authUnary(&want, lim, log)))
	shiftplanev1.RegisterRolloutServiceServer(gs, shiftplanev1.UnimplementedRolloutServiceServer{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rc := shiftplanev1.NewRolloutServiceClient(cc)
	call := func(token string) codes.Code {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
		_, err := rc.List(ctx, &shiftplanev1.ListRequest{})
		return status.Code(err)
	}
	got := map[codes.Code]int{}
	for i := 0; i < 200; i++ {
		got[call("wrong")]++
	}
	if got[codes.Unauthenticated] != authBurst || got[codes.ResourceExhausted] != 200-authBurst {
		t.Fatalf("200 wrong tokens: %v, want %d Unauthenticated then ResourceExhausted", got, authBurst)
	}
	if c := call("right"); c != codes.ResourceExhausted {
		t.Fatalf("the right token during the lockout: %s, want ResourceExhausted", c)
	}
	clock.advance(authRefill)
	if c := call("right"); c != codes.Unimplemented { // past auth
		t.Fatalf("the right token after the refill: %s, want through to the (unimplemented) method", c)
	}
	if f := testutil.ToFloat64(lim.failures.WithLabelValues("api")); f != authBurst {
		t.Errorf("shiftplane_auth_failures_total{surface=api} = %g, want %d", f, authBurst)
	}
	if l := testutil.ToFloat64(lim.limited.WithLabelValues("api")); l != 200-authBurst+1 {
		t.Errorf("shiftplane_auth_limited_total{surface=api} = %g, want %d", l, 200-authBurst+1)
	}
	// Another source has its own allowance.
	if ok, _ := lim.allow("api", "192.0.2.7"); !ok {
		t.Error("another source is locked out too")
	}
}

// Off loopback /metrics needs a token (the metrics token or the API's);
// failures are limited like the API's.
func TestMetricsNeedTokenOffLoopback(t *testing.T) {
	var cfg Config
	cfg.HTTP.Address = "0.0.0.0:18002"
	cfg.API.Token = "api-token"
	cfg.HTTP.MetricsToken = "scrape"
	lim := newAuthLimiter(nil, time.Now)
	h, err := httpGuard(cfg, lim, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) }))
	if err != nil {
		t.Fatal(err)
	}
	get := func(path, token string) int {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.RemoteAddr = "192.0.2.1:5555"
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for name, tc := range map[string]struct {
		path, token string
		code        int
	}{
		"no token":           {"/metrics", "", http.StatusUnauthorized},
		"metrics token":      {"/metrics", "scrape", http.StatusOK},
		"API token":          {"/metrics", "api-token", http.StatusOK},
		"wrong token":        {"/metrics", "guess", http.StatusUnauthorized},
		"healthz stays open": {"/healthz", "", http.StatusOK},
	} {
		if c := get(tc.path, tc.token); c != tc.code {
			t.Errorf("%s: %s → %d, want %d", name, tc.path, c, tc.code)
		}
	}
	codes := map[int]int{}
	for i := 0; i < 50; i++ {
		codes[get("/metrics", "guess")]++
	}
	if codes[http.StatusTooManyRequests] < 40 {
		t.Errorf("50 more wrong tokens: %v, want most refused with 429", codes)
	}
}
