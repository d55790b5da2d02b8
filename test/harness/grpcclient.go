package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	xdsresolver "google.golang.org/grpc/xds" // the xds:/// resolver and its balancers
)

// Proxyless gRPC in the e2e tests: GRPCBackend is one version of a service
// that serves gRPC (grpc.health.v1.Health/Check) to proxyless clients and
// plain HTTP (the Backend answer) to Envoy on one port; GRPCClient is a real
// grpc-go xds:/// client that dials a target through shiftplane.

// GRPCBackend serves gRPC over cleartext HTTP/2 and HTTP/1.1 on one
// loopback port. Every answer names Version: the "x-version" response header
// of a gRPC call, the X-Version header and body of an HTTP request.
type GRPCBackend struct {
	Version string
	Addr    string

	srv      *http.Server
	gs       *grpc.Server
	failCode atomic.Uint32 // codes.Code for gRPC calls; 0: healthy
	grpcRPCs atomic.Int64
	httpReqs atomic.Int64
	failures atomic.Int64
}

// StartGRPCBackend starts a GRPCBackend on a free 127.0.0.1 port and stops
// it in t.Cleanup.
func StartGRPCBackend(t testing.TB, version string) *GRPCBackend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: grpc backend %s: %v", version, err)
	}
	b := &GRPCBackend{Version: version, Addr: l.Addr().String()}
	b.gs = grpc.NewServer(grpc.UnaryInterceptor(b.intercept))
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(b.gs, hs)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), Protocols: &p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = b.srv.Serve(l) }()
	t.Cleanup(func() {
		_ = b.srv.Close()
		b.gs.Stop()
	})
	return b
}

func (b *GRPCBackend) serve(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		b.gs.ServeHTTP(w, r)
		return
	}
	b.httpReqs.Add(1)
	w.Header().Set("X-Version", b.Version)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(b.Version))
}

func (b *GRPCBackend) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	b.grpcRPCs.Add(1)
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-version", b.Version))
	if c := codes.Code(b.failCode.Load()); c != codes.OK {
		b.failures.Add(1)
		return nil, status.Errorf(c, "%s is failing (test)", b.Version)
	}
	return h(ctx, req)
}

// SetFailingGRPC makes every following gRPC call fail with code (HTTP
// requests keep succeeding); codes.OK makes it healthy again.
func (b *GRPCBackend) SetFailingGRPC(code codes.Code) { b.failCode.Store(uint32(code)) }

// GRPCRequests is the number of gRPC calls received so far.
func (b *GRPCBackend) GRPCRequests() int64 { return b.grpcRPCs.Load() }

// HTTPRequests is the number of HTTP (non-gRPC) requests received so far.
func (b *GRPCBackend) HTTPRequests() int64 { return b.httpReqs.Load() }

// GRPCClientOptions configure StartGRPCClient.
type GRPCClientOptions struct {
	XDSAddr string // shiftplane's xds.address
	NodeID  string // node.id of the bootstrap
	Cluster string // node.cluster; default "proxyless"
	Target  string // dialled as xds:///Target
}

// GRPCClient is a grpc-go client of an xds:/// target, resolved through
// shiftplane with its own in-memory bootstrap (not the process-wide
// GRPC_XDS_BOOTSTRAP), so several can run in one test process.
type GRPCClient struct {
	// Bootstrap is the xDS bootstrap JSON the client runs with.
	Bootstrap string
	cc        *grpc.ClientConn
	hc        healthpb.HealthClient
}

// StartGRPCClient dials xds:///opts.Target and closes the client in
// t.Cleanup. It does not wait for the target to resolve.
func StartGRPCClient(t testing.TB, opts GRPCClientOptions) *GRPCClient {
	t.Helper()
	if opts.Cluster == "" {
		opts.Cluster = "proxyless"
	}
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":%q,"cluster":%q}}`,
		opts.XDSAddr, opts.NodeID, opts.Cluster)
	rb, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatalf("harness: grpc client %s: %v", opts.NodeID, err)
	}
	cc, err := grpc.NewClient("xds:///"+opts.Target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatalf("harness: grpc client %s: %v", opts.NodeID, err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	cc.Connect()
	return &GRPCClient{Bootstrap: bootstrap, cc: cc, hc: healthpb.NewHealthClient(cc)}
}

// Close closes the client's connection (and its xDS and LRS streams).
func (c *GRPCClient) Close() { _ = c.cc.Close() }

// WaitReady makes calls (waiting for the resolver) until one succeeds.
func (c *GRPCClient) WaitReady(ctx context.Context) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("grpc client never ready: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// GRPCCounts are what a GRPCLoad has seen so far.
type GRPCCounts struct {
	Total, OK, Failed int
	ByVersion         map[string]int // OK calls by x-version
	ByCode            map[codes.Code]int
	FirstError        string
}

// Sub returns c minus an earlier snapshot of the same load.
func (c GRPCCounts) Sub(o GRPCCounts) GRPCCounts {
	out := GRPCCounts{Total: c.Total - o.Total, OK: c.OK - o.OK, Failed: c.Failed - o.Failed, ByVersion: map[string]int{}, ByCode: map[codes.Code]int{}, FirstError: c.FirstError}
	for k, v := range c.ByVersion {
		out.ByVersion[k] = v - o.ByVersion[k]
	}
	for k, v := range c.ByCode {
		out.ByCode[k] = v - o.ByCode[k]
	}
	return out
}

// Share is the fraction of OK calls that version answered.
func (c GRPCCounts) Share(version string) float64 {
	if c.OK == 0 {
		return 0
	}
	return float64(c.ByVersion[version]) / float64(c.OK)
}

func (c GRPCCounts) String() string {
	return fmt.Sprintf("total=%d ok=%d failed=%d by_version=%v by_code=%v first_error=%q", c.Total, c.OK, c.Failed, c.ByVersion, c.ByCode, c.FirstError)
}

// GRPCLoad is constant-rate unary load from a GRPCClient.
type GRPCLoad struct {
	stop context.CancelFunc
	done sync.WaitGroup
	mu   sync.Mutex
	c    GRPCCounts
}

// Load starts calls at rate per second (spread over workers goroutines,
// each call bounded by 5 s) until Stop.
func (c *GRPCClient) Load(rate float64, workers int) *GRPCLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &GRPCLoad{stop: cancel, c: GRPCCounts{ByVersion: map[string]int{}, ByCode: map[codes.Code]int{}}}
	every := time.Duration(float64(time.Second) * float64(workers) / rate)
	for w := range workers {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			// Stagger the workers over one period.
			next := time.Now().Add(every * time.Duration(w) / time.Duration(workers))
			for {
				if d := time.Until(next); d > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(d):
					}
				} else if ctx.Err() != nil {
					return
				}
				next = next.Add(every)
				cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
				var md metadata.MD
				_, err := c.hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
				ccancel()
				l.record(md, err)
			}
		}()
	}
	return l
}

func (l *GRPCLoad) record(md metadata.MD, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.c.Total++
	code := status.Code(err)
	l.c.ByCode[code]++
	if err != nil {
		l.c.Failed++
		if l.c.FirstError == "" {
			l.c.FirstError = err.Error()
		}
		return
	}
	l.c.OK++
	v := ""
	if vs := md.Get("x-version"); len(vs) > 0 {
		v = vs[0]
	}
	l.c.ByVersion[v]++
}

// Snapshot returns the counts so far (a copy).
func (l *GRPCLoad) Snapshot() GRPCCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.c
	out.ByVersion = map[string]int{}
	out.ByCode = map[codes.Code]int{}
	for k, v := range l.c.ByVersion {
		out.ByVersion[k] = v
	}
	for k, v := range l.c.ByCode {
		out.ByCode[k] = v
	}
	return out
}

// Stop ends the load, waits for calls in flight and returns the counts.
func (l *GRPCLoad) Stop() GRPCCounts {
	l.stop()
	l.done.Wait()
	return l.Snapshot()
}
