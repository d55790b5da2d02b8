package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	xdsresolver "google.golang.org/grpc/xds"

	"github.com/shiftplane/shiftplane/xds/model"
)

// startLRS serves a LoadReports on a loopback gRPC server.
func startLRS(t *testing.T, interval time.Duration, now func() time.Time) (*LoadReports, string) {
	t.Helper()
	l := NewLoadReports(slog.New(slog.DiscardHandler), interval, now)
	gs := NewGRPCServer()
	l.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return l, lis.Addr().String()
}

func lrsStream(t *testing.T, addr string) lrsv3.LoadReportingService_StreamLoadStatsClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := lrsv3.NewLoadReportingServiceClient(cc).StreamLoadStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func load(cluster string, ok, bad, inProgress, issued uint64) *endpointv3.ClusterStats {
	return &endpointv3.ClusterStats{ClusterName: cluster, UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{{
		Locality:                &corev3.Locality{Region: "r"},
		TotalSuccessfulRequests: ok, TotalErrorRequests: bad, TotalRequestsInProgress: inProgress, TotalIssuedRequests: issued,
	}}}
}

// waitReport polls until node's latest report satisfies ok.
func waitReport(t *testing.T, l *LoadReports, node string, ok func(model.NodeReport) bool) model.NodeReport {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last model.NodeReport
	for time.Now().Before(deadline) {
		for _, r := range l.Reports() {
			if r.Node == node {
				last = r
				if ok(r) {
					return r
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("node %s: no matching report; last %+v", node, last)
	return last
}

// Per-interval LRS loads become cumulative counters and an in-progress
// gauge under Envoy's stat names, with the previous report kept.
func TestLoadReportsAccumulate(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1000, 0).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	l, addr := startLRS(t, 1500*time.Millisecond, now)
	s := lrsStream(t, addr)
	if err := s.Send(&lrsv3.LoadStatsRequest{Node: &corev3.Node{Id: "grpc-1", UserAgentName: "gRPC Go"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetSendAllClusters() || resp.GetLoadReportingInterval().AsDuration() != 1500*time.Millisecond {
		t.Fatalf("response %v, want send_all_clusters and interval 1.5s", resp)
	}
	first := waitReport(t, l, "grpc-1", func(model.NodeReport) bool { return true })
	if len(first.Latest) != 0 || first.Prev != nil {
		t.Fatalf("first report %+v, want empty with no previous", first)
	}

	const c = "cluster.app-v2."
	steps := []struct {
		stats                  []*endpointv3.ClusterStats
		completed, errs, total float64
		active                 float64
	}{
		{[]*endpointv3.ClusterStats{load("app-v2", 90, 10, 3, 103)}, 100, 10, 103, 3},
		// Two localities in one report add up; the gauge is the report's.
		{[]*endpointv3.ClusterStats{load("app-v2", 50, 0, 1, 50), load("app-v2", 25, 5, 1, 30)}, 180, 15, 183, 2},
		// A cluster missing from a report had no load: counters stay, none in progress.
		{nil, 180, 15, 183, 0},
	}
	for i, st := range steps {
		clock.Add(int64(time.Second))
		if err := s.Send(&lrsv3.LoadStatsRequest{ClusterStats: st.stats}); err != nil {
			t.Fatal(err)
		}
		want := time.Unix(0, clock.Load())
		r := waitReport(t, l, "grpc-1", func(r model.NodeReport) bool { return r.At.Equal(want) })
		got := [4]float64{r.Latest[c+"upstream_rq_completed"], r.Latest[c+"upstream_rq_5xx"], r.Latest[c+"upstream_rq_total"], r.Latest[c+"upstream_rq_active"]}
		if exp := [4]float64{st.completed, st.errs, st.total, st.active}; got != exp {
			t.Errorf("step %d: completed, 5xx, total, active = %v, want %v", i, got, exp)
		}
		if r.Prev == nil || !r.PrevAt.Equal(want.Add(-time.Second)) {
			t.Errorf("step %d: previous report at %v (%v), want the one a second before", i, r.PrevAt, r.Prev)
		}
		if model.CountersWentDown(r.Prev, r.Latest, nil) {
			t.Errorf("step %d: a counter went down: %v → %v", i, r.Prev, r.Latest)
		}
	}
	if n := l.Nodes(); len(n) != 1 || n[0].ID != "grpc-1" {
		t.Fatalf("nodes %v, want grpc-1", n)
	}

	// A second stream for a node with an open stream (and no certificate
	// naming both) is refused; the first keeps the node.
	s2 := lrsStream(t, addr)
	if err := s2.Send(&lrsv3.LoadStatsRequest{Node: &corev3.Node{Id: "grpc-1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Recv(); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second stream for grpc-1: %v, want AlreadyExists", err)
	}
	// A stream without a node id is refused.
	s3 := lrsStream(t, addr)
	if err := s3.Send(&lrsv3.LoadStatsRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s3.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("stream without node: %v, want InvalidArgument", err)
	}
	// The node's data goes when its stream ends.
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(l.Reports()) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if r := l.Reports(); len(r) != 0 {
		t.Fatalf("reports after the stream closed: %v", r)
	}
}

// A real grpc-go xds:/// client reports its load to LoadReports on the
// xDS server's port (lrs_server: self), per cluster, at the interval sent.
func TestLoadReportsFromGRPCClient(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	fleet := NewFleet(log, NewMetrics(nil), time.Now)
	cache := NewCache()
	pub := NewPublisher(cache, &memCounter{}, time.Now, fleet.Published)
	gs := NewGRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	Register(ctx, gs, cache, fleet, log)
	lrs := NewLoadReports(log, 200*time.Millisecond, time.Now)
	lrs.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { cancel(); gs.Stop() })

	var eps [2]model.Endpoint
	for i := range 2 {
		bl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hs := health.NewServer()
		if i == 1 {
			hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		}
		bs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if i == 1 {
				return nil, status.Error(codes.Internal, "canary fails")
			}
			return h(ctx, req)
		}))
		healthpb.RegisterHealthServer(bs, hs)
		go func() { _ = bs.Serve(bl) }()
		t.Cleanup(bs.Stop)
		eps[i] = model.Endpoint{IP: "127.0.0.1", Port: uint32(bl.Addr().(*net.TCPAddr).Port)}
	}
	ds := testState(50)
	ds.Services[0].Listener.GRPCTargets = []string{"checkout.example:50051"}
	ds.Services[0].Stable.Endpoints = eps[:1]
	ds.Services[0].Canary.Endpoints = eps[1:]
	// No ejection: this test counts every error the canary returns.
	ds.Services[0].Outlier.MaxEjectionPercent = 0
	if _, err := pub.Set(context.Background(), ds, "initial"); err != nil {
		t.Fatal(err)
	}
	bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":"grpc-lrs-1","cluster":"test","user_agent_name":"ignored"}}`, lis.Addr())
	rb, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///checkout.example:50051", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	hc := healthpb.NewHealthClient(cc)
	// 400 RPCs a backend answered: the stable's OK or the canary's
	// Internal. Any other error (the client failing an RPC before it
	// reached a backend, on a loaded machine) is not a backend's answer,
	// is not load, and is tried again, a bounded number of times.
	var ok, failed, other float64
	var lastOther error
	for tries := 0; ok+failed < 400 && tries < 1000; tries++ {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := hc.Check(rctx, &healthpb.HealthCheckRequest{})
		rcancel()
		switch st := status.Convert(err); {
		case err == nil:
			ok++
		case st.Code() == codes.Internal && st.Message() == "canary fails":
			failed++
		default:
			other++
			lastOther = err
		}
	}
	if ok+failed < 400 {
		t.Fatalf("only %g of 1000 RPCs reached a backend; %g failed otherwise, the last with %v", ok+failed, other, lastOther)
	}
	r := waitReport(t, lrs, "grpc-lrs-1", func(r model.NodeReport) bool {
		return r.Latest["cluster.checkout-v1.upstream_rq_completed"]+r.Latest["cluster.checkout-v2.upstream_rq_completed"] >= 400
	})
	v1, v2 := r.Latest["cluster.checkout-v1.upstream_rq_completed"], r.Latest["cluster.checkout-v2.upstream_rq_completed"]
	e1, e2 := r.Latest["cluster.checkout-v1.upstream_rq_5xx"], r.Latest["cluster.checkout-v2.upstream_rq_5xx"]
	t.Logf("client: %g ok, %g failed by the canary, %g failed before a backend (last: %v); LRS: v1 %g completed (%g errors), v2 %g completed (%g errors); interval %s",
		ok, failed, other, lastOther, v1, e1, v2, e2, r.At.Sub(r.PrevAt).Round(10*time.Millisecond))
	if v1 != ok || e1 != 0 || v2 != failed || e2 != failed || v1+v2 != 400 {
		t.Fatalf("LRS totals v1 %g (%g errors), v2 %g (%g errors); want v1 = %g ok RPCs with 0 errors, v2 = %g failed RPCs", v1, e1, v2, e2, ok, failed)
	}
	if failed < 100 || failed > 300 {
		t.Fatalf("%g of 400 RPCs went to the canary at weight 50", failed)
	}
}

// A second LRS stream for a node whose stream is open takes the node over
// only with the same authenticated identity; the old stream's reports are
// then ignored.
func TestLoadReportsSecondStreamNeedsSameIdentity(t *testing.T) {
	l := NewLoadReports(nil, time.Second, time.Now)
	edge := Identity{URIs: []string{"spiffe://fleet/grpc/app-1"}}
	other := Identity{URIs: []string{"spiffe://fleet/grpc/app-2"}}
	first, err := l.open("app-1", edge)
	if err != nil {
		t.Fatal(err)
	}
	l.record("app-1", first, &lrsv3.LoadStatsRequest{ClusterStats: []*endpointv3.ClusterStats{load("c", 5, 0, 0, 5)}})
	for name, id := range map[string]Identity{"unauthenticated": {}, "another certificate": other} {
		if _, err := l.open("app-1", id); status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s: second stream: %v, want AlreadyExists", name, err)
		}
	}
	second, err := l.open("app-1", edge)
	if err != nil {
		t.Fatalf("the same identity reconnecting was refused: %v", err)
	}
	l.record("app-1", first, &lrsv3.LoadStatsRequest{ClusterStats: []*endpointv3.ClusterStats{load("c", 7, 0, 0, 7)}})
	l.closed("app-1", first)
	r := l.Reports()
	if len(r) != 0 {
		t.Fatalf("reports after the takeover: %+v, want none until the new stream reports", r)
	}
	l.record("app-1", second, &lrsv3.LoadStatsRequest{ClusterStats: []*endpointv3.ClusterStats{load("c", 2, 1, 0, 3)}})
	r = l.Reports()
	// The counters continue from the first stream's (5 + 3), as an Envoy's
	// do over its metrics streams; the new stream's first report has no
	// previous one.
	if len(r) != 1 || r[0].Latest["cluster.c.upstream_rq_completed"] != 8 || r[0].Prev != nil {
		t.Fatalf("reports %+v, want 8 completed (5 before the takeover, 3 after), no previous", r)
	}
}

// A node's counters continue over its streams, as an Envoy's counters do
// over its metrics streams: the observed split counts a report's rise from
// the node's last report, so a reconnecting client whose new stream has
// reported more than its old one must not be read as having served only
// the difference.
func TestLoadReportsCountersContinueOverStreams(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1000, 0).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	l, addr := startLRS(t, time.Second, now)
	const completed = "cluster.app-v2.upstream_rq_completed"

	send := func(s lrsv3.LoadReportingService_StreamLoadStatsClient, ok uint64, want float64) {
		t.Helper()
		clock.Add(int64(time.Second))
		if err := s.Send(&lrsv3.LoadStatsRequest{ClusterStats: []*endpointv3.ClusterStats{load("app-v2", ok, 0, 0, ok)}}); err != nil {
			t.Fatal(err)
		}
		at := time.Unix(0, clock.Load())
		r := waitReport(t, l, "grpc-1", func(r model.NodeReport) bool { return r.At.Equal(at) })
		if r.Latest[completed] != want {
			t.Errorf("completed %g, want %g", r.Latest[completed], want)
		}
	}
	open := func() lrsv3.LoadReportingService_StreamLoadStatsClient {
		s := lrsStream(t, addr)
		if err := s.Send(&lrsv3.LoadStatsRequest{Node: &corev3.Node{Id: "grpc-1"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s1 := open()
	send(s1, 10, 10)
	if err := s1.CloseSend(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(l.Nodes()) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s2 := open()
	send(s2, 15, 25)
}
