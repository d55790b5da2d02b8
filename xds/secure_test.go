package xds

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	promv1 "github.com/prometheus/client_model/go"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shiftplane/shiftplane/xds/model"
)

func TestIdentityAllows(t *testing.T) {
	for name, tc := range map[string]struct {
		id    Identity
		node  string
		allow bool
	}{
		"unauthenticated allows any":   {Identity{}, "anything", true},
		"DNS SAN":                      {Identity{DNS: []string{"edge-1"}}, "edge-1", true},
		"other DNS SAN":                {Identity{DNS: []string{"edge-1"}}, "edge-2", false},
		"SPIFFE last segment":          {Identity{URIs: []string{"spiffe://fleet/envoy/edge-1"}}, "edge-1", true},
		"whole URI":                    {Identity{URIs: []string{"spiffe://fleet/envoy/edge-1"}}, "spiffe://fleet/envoy/edge-1", true},
		"SPIFFE of another node":       {Identity{URIs: []string{"spiffe://fleet/envoy/edge-1"}}, "edge-2", false},
		"trust domain is not a node":   {Identity{URIs: []string{"spiffe://edge-1"}}, "edge-1", false},
		"empty node id with a cert":    {Identity{DNS: []string{"edge-1"}}, "", false},
		"suffix is not a path segment": {Identity{URIs: []string{"spiffe://fleet/envoy/xedge-1"}}, "edge-1", false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tc.id.Allows(tc.node); got != tc.allow {
				t.Fatalf("%v.Allows(%q) = %v, want %v", tc.id, tc.node, got, tc.allow)
			}
		})
	}
}

// rawADS opens an ADS stream and sends one request: a client that never
// ACKs (nack "") or that NACKs what it was never sent.
func rawADS(t *testing.T, addr, node, nack string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.RouteType}
	if nack != "" {
		req.ResponseNonce, req.ErrorDetail = "forged", &statuspb.Status{Code: 3, Message: nack}
	}
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
}

// A stream that never ACKs and one that only sends fake NACKs hold
// convergence back for the grace period, then no longer count; a
// stats-only node id is left out by the stats list after the same grace.
func TestNeverACKAndFakeNACKStopCountingAfterGrace(t *testing.T) {
	srv := startTestServer(t)
	const grace = 400 * time.Millisecond
	srv.fleet.SetReadyGrace(grace)
	rec, err := srv.pub.Set(context.Background(), testState(10), "initial")
	if err != nil {
		t.Fatal(err)
	}
	rv := rec.Versions[resourcev3.RouteType]
	good := dialADS(t, srv.addr, "envoy-good")
	good.run()
	waitFor(t, "envoy-good to ACK", func() bool { return srv.fleet.Convergence(model.KindRoutes, rv).Converged })

	start := time.Now()
	rawADS(t, srv.addr, "never-acks", "")
	rawADS(t, srv.addr, "fake-nacks", "rejected (forged)")
	waitFor(t, "both streams to be known", func() bool { return len(srv.fleet.Nodes()) == 3 })
	c := srv.fleet.Convergence(model.KindRoutes, rv)
	if time.Since(start) < grace && c.Converged {
		t.Fatalf("within the grace a stream that has ACKed nothing did not hold convergence: %+v", c)
	}
	for _, n := range srv.fleet.Nodes() {
		if want := n.ID == "envoy-good"; n.Ready != want {
			t.Errorf("node %s Ready = %v, want %v", n.ID, n.Ready, want)
		}
	}
	waitFor(t, "convergence once the grace is over", func() bool {
		c := srv.fleet.Convergence(model.KindRoutes, rv)
		return c.Converged && c.Nodes == 1 && len(c.Nacks) == 0
	})
	if d := time.Since(start); d < grace {
		t.Fatalf("converged %s after the non-ACKing streams came, before the grace %s", d, grace)
	}
	// A new version converges on the real node alone.
	next, _ := srv.pub.Set(context.Background(), testState(30), "next")
	waitFor(t, "the next version to converge", func() bool {
		return srv.fleet.Convergence(model.KindRoutes, next.Versions[resourcev3.RouteType]).Converged
	})
}

// limitedServer serves the sink and ADS with ServerOptions(nil, l, m).
func limitedServer(t *testing.T, l Limits) (string, *Metrics) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	m := NewMetrics(nil)
	fleet := NewFleet(log, m, time.Now)
	cache := NewCache()
	gs := NewGRPCServer(ServerOptions(nil, l, m)...)
	ctx, cancel := context.WithCancel(context.Background())
	Register(ctx, gs, cache, fleet, log)
	NewMetricsSink(log, nil, time.Now).Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { cancel(); gs.Stop() })
	return lis.Addr().String(), m
}

func rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// sendHugeStats streams one gRPC message of size bytes to the sink over
// h2c without holding it in memory, and returns the grpc-status.
func sendHugeStats(t *testing.T, addr string, size int) string {
	t.Helper()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[1:], uint32(size))
	body := io.MultiReader(strings.NewReader(string(hdr[:])), io.LimitReader(zeros{}, int64(size)))
	req := &http.Request{Method: http.MethodPost, URL: &url.URL{Scheme: "http", Host: addr, Path: "/envoy.service.metrics.v3.MetricsService/StreamMetrics"},
		Header: http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}}, Body: io.NopCloser(body), ContentLength: -1}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if s := resp.Trailer.Get("Grpc-Status"); s != "" {
		return s
	}
	return resp.Header.Get("Grpc-Status")
}

// A 60 MB stats message is refused from its header: the server's RSS
// grows by less than 8 MiB. The same message under the old 64 MiB limit
// is read whole (the measurement sees it).
func TestHugeStatsMessageRefusedWithoutMemory(t *testing.T) {
	const size = 60_000_000
	addr, _ := limitedServer(t, DefaultLimits)
	runtime.GC()
	debug.FreeOSMemory()
	before := rssBytes(t)
	code := sendHugeStats(t, addr, size)
	after := rssBytes(t)
	grew := after - before
	t.Logf("limit %d: grpc-status %s, RSS %d → %d KiB (+%d KiB)", DefaultLimits.MaxMessageBytes, code, before>>10, after>>10, grew>>10)
	if code != strconv.Itoa(int(codes.ResourceExhausted)) {
		t.Fatalf("grpc-status = %q, want %d (ResourceExhausted)", code, codes.ResourceExhausted)
	}
	if grew > 8<<20 {
		t.Fatalf("RSS grew by %d KiB for a refused message, want < 8 MiB", grew>>10)
	}

	old := DefaultLimits
	old.MaxMessageBytes = 64 << 20
	addr, _ = limitedServer(t, old)
	before = rssBytes(t)
	code = sendHugeStats(t, addr, size)
	after = rssBytes(t)
	t.Logf("limit %d: grpc-status %s, RSS %d → %d KiB (+%d KiB)", old.MaxMessageBytes, code, before>>10, after>>10, (after-before)>>10)
	if after-before < 40<<20 {
		t.Fatalf("with a 64 MiB limit RSS grew by only %d KiB; the measurement does not see a read message", (after-before)>>10)
	}
}

// Streams past the per-source cap are refused and counted; closing one
// makes room again.
func TestStreamsPerSourceLimited(t *testing.T) {
	l := DefaultLimits
	l.MaxStreamsPerSource = 5
	addr, m := limitedServer(t, l)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	open := func() (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := client.StreamAggregatedResources(ctx)
		if err == nil {
			err = s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resourcev3.RouteType})
		}
		if err == nil {
			// A refused stream ends at once; an accepted one waits for config.
			rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer rcancel()
			done := make(chan error, 1)
			go func() { _, err := s.Recv(); done <- err }()
			select {
			case err = <-done:
			case <-rctx.Done():
			}
		}
		return cancel, err
	}
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for i := 0; i < 5; i++ {
		c, err := open()
		cancels = append(cancels, c)
		if err != nil {
			t.Fatalf("stream %d of 5 refused: %v", i+1, err)
		}
	}
	c, err := open()
	cancels = append(cancels, c)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("6th stream: %v, want ResourceExhausted", err)
	}
	if n := counterValue(t, m.refused.WithLabelValues("limit")); n != 1 {
		t.Fatalf("refused{limit} = %g, want 1", n)
	}
	cancels[0]()
	waitFor(t, "a stream slot to free", func() bool {
		c, err := open()
		cancels = append(cancels, c)
		return err == nil
	})
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m promv1.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A second stream for a node id whose stream is open replaces its stats
// only with the same authenticated identity; a stream whose certificate
// names another node is refused by StreamMetrics before record.
func TestSinkSecondStreamNeedsSameIdentity(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := NewMetricsSink(nil, nil, func() time.Time { return now })
	gauge := func(v float64) []*promv1.MetricFamily {
		return []*promv1.MetricFamily{{Name: proto.String("cluster.app-v2.outlier_detection.ejections_active"), Type: promv1.MetricType_GAUGE.Enum(),
			Metric: []*promv1.Metric{{Gauge: &promv1.Gauge{Value: proto.Float64(v)}}}}}
	}
	edge := Identity{URIs: []string{"spiffe://fleet/envoy/edge-1"}}
	other := Identity{URIs: []string{"spiffe://fleet/envoy/edge-2"}}
	latest := func() float64 {
		t.Helper()
		for _, r := range s.Reports() {
			if r.Node == "edge-1" {
				return r.Latest["cluster.app-v2.outlier_detection.ejections_active"]
			}
		}
		t.Fatal("no report for edge-1")
		return 0
	}
	if why := s.record("edge-1", 1, edge, gauge(1)); why != "" {
		t.Fatalf("first stream ignored: %s", why)
	}
	for name, id := range map[string]Identity{"unauthenticated": {}, "another certificate": other} {
		if why := s.record("edge-1", 2, id, gauge(0)); why == "" {
			t.Errorf("%s: a second stream replaced edge-1's stats", name)
		}
		if v := latest(); v != 1 {
			t.Errorf("%s: edge-1's ejections_active = %g after a second stream, want 1", name, v)
		}
	}
	if why := s.record("edge-1", 3, edge, gauge(0)); why != "" {
		t.Fatalf("the same identity reconnecting was ignored: %s", why)
	}
	if v := latest(); v != 0 {
		t.Errorf("after the same identity reconnected: %g, want its 0", v)
	}
}
