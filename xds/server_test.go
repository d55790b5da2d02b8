package xds

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shiftplane/shiftplane/xds/model"
)

type memCounter struct{ n atomic.Uint64 }

func (c *memCounter) NextVersion() (uint64, error) { return c.n.Add(1), nil }

type testServer struct {
	addr  string
	pub   *Publisher
	fleet *Fleet
	cache *Cache
}

func startTestServer(t *testing.T) *testServer {
	t.Helper()
	return startTestServerWith(t, NewMetrics(nil))
}

func startTestServerWith(t *testing.T, m *Metrics) *testServer {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	fleet := NewFleet(log, m, time.Now)
	cache := NewCache()
	pub := NewPublisher(cache, &memCounter{}, time.Now, fleet.Published)
	gs := NewGRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	Register(ctx, gs, cache, fleet, log)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { cancel(); gs.Stop() })
	return &testServer{addr: lis.Addr().String(), pub: pub, fleet: fleet, cache: cache}
}

func testState(weight int) model.State {
	return model.State{Services: []model.Service{{
		Name:            "checkout",
		Listener:        model.Listener{Address: "127.0.0.1:10000", Domains: []string{"*"}, PathPrefix: "/"},
		Stable:          model.Backend{Cluster: "checkout-v1", Endpoints: []model.Endpoint{{IP: "127.0.0.1", Port: 8081}}},
		Canary:          model.Backend{Cluster: "checkout-v2", Endpoints: []model.Endpoint{{IP: "127.0.0.1", Port: 8082}}},
		Outlier:         model.Outlier{Consecutive5xx: 5, Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 100},
		CanaryWeight:    weight,
		CanaryPublished: true,
		StablePublished: true,
	}}}
}

// adsClient is a raw SotW ADS client that subscribes like Envoy (CDS, EDS,
// LDS, RDS) and counts the responses it gets by type.
type adsClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	// nack, when it returns a message for a response, makes the client NACK it.
	nack func(*discoveryv3.DiscoveryResponse) string

	mu        sync.Mutex
	responses []*discoveryv3.DiscoveryResponse
	acked     map[string]string
}

func dialADS(t *testing.T, addr, nodeID string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &adsClient{t: t, stream: stream, node: &corev3.Node{Id: nodeID, Cluster: "test"}, acked: map[string]string{}}
}

func (c *adsClient) send(typeURL string, names []string, version, nonce string, nackMsg string) {
	req := &discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
	if nackMsg != "" {
		req.ErrorDetail = &statuspb.Status{Code: 3, Message: nackMsg}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Logf("send: %v", err)
	}
}

// run subscribes and answers every response until the stream ends.
func (c *adsClient) run() {
	c.send(resourcev3.ClusterType, nil, "", "", "")
	c.send(resourcev3.ListenerType, nil, "", "", "")
	go func() {
		for {
			resp, err := c.stream.Recv()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.responses = append(c.responses, resp)
			prev := c.acked[resp.GetTypeUrl()]
			c.mu.Unlock()
			if c.nack != nil {
				if msg := c.nack(resp); msg != "" {
					c.send(resp.GetTypeUrl(), namesOf(resp), prev, resp.GetNonce(), msg)
					continue
				}
			}
			c.mu.Lock()
			c.acked[resp.GetTypeUrl()] = resp.GetVersionInfo()
			c.mu.Unlock()
			c.send(resp.GetTypeUrl(), namesOf(resp), resp.GetVersionInfo(), resp.GetNonce(), "")
			// Like Envoy: clusters lead to EDS, listeners to RDS.
			switch resp.GetTypeUrl() {
			case resourcev3.ClusterType:
				c.send(resourcev3.EndpointType, []string{"checkout-v1", "checkout-v2"}, "", "", "")
			case resourcev3.ListenerType:
				c.send(resourcev3.RouteType, routeNames(c.t, resp), "", "", "")
			}
		}
	}()
}

func namesOf(resp *discoveryv3.DiscoveryResponse) []string {
	switch resp.GetTypeUrl() {
	case resourcev3.EndpointType:
		return []string{"checkout-v1", "checkout-v2"}
	case resourcev3.RouteType:
		return []string{ListenerName("127.0.0.1:10000")}
	}
	return nil
}

func routeNames(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	var names []string
	for _, a := range resp.GetResources() {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Error(err)
			continue
		}
		var hcm hcmv3.HttpConnectionManager
		if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
			t.Error(err)
			continue
		}
		names = append(names, hcm.GetRds().GetRouteConfigName())
	}
	return names
}

func (c *adsClient) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, r := range c.responses {
		out[shortType(r.GetTypeUrl())]++
	}
	return out
}

func (c *adsClient) countVersion(typeURL, version string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.responses {
		if r.GetTypeUrl() == typeURL && r.GetVersionInfo() == version {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWeightChangeSendsOnlyRDS(t *testing.T) {
	srv := startTestServer(t)
	ctx := context.Background()
	first, err := srv.pub.Set(ctx, testState(10), "initial")
	if err != nil {
		t.Fatal(err)
	}
	var clients []*adsClient
	for _, id := range []string{"envoy-a", "envoy-b"} {
		c := dialADS(t, srv.addr, id)
		c.run()
		clients = append(clients, c)
	}
	waitFor(t, "both nodes to converge on the first snapshot", func() bool {
		c := srv.fleet.Convergence(model.KindRoutes, first.Versions[resourcev3.RouteType])
		return c.Converged && c.Nodes == 2
	})
	before := []map[string]int{clients[0].counts(), clients[1].counts()}

	step, err := srv.pub.Set(ctx, testState(50), "weight step")
	if err != nil {
		t.Fatal(err)
	}
	if len(step.Changed) != 1 || step.Changed[0] != resourcev3.RouteType {
		t.Fatalf("a weight step changed %v, want only routes", step.Changed)
	}
	waitFor(t, "both nodes to ACK the weight step", func() bool {
		c := srv.fleet.Convergence(model.KindRoutes, step.Versions[resourcev3.RouteType])
		return c.Converged && c.Nodes == 2
	})
	time.Sleep(100 * time.Millisecond) // anything else the server would send arrives by now
	for i, c := range clients {
		after := c.counts()
		for typ, n := range after {
			sent := n - before[i][typ]
			want := 0
			if typ == shortType(resourcev3.RouteType) {
				want = 1
			}
			if sent != want {
				t.Errorf("client %d: %d %s responses for a weight step, want %d", i, sent, typ, want)
			}
		}
	}
}

func TestNACKIsNotResent(t *testing.T) {
	srv := startTestServer(t)
	ctx := context.Background()
	if _, err := srv.pub.Set(ctx, testState(10), "initial"); err != nil {
		t.Fatal(err)
	}
	c := dialADS(t, srv.addr, "envoy-nack")
	var reject atomic.Bool
	c.nack = func(r *discoveryv3.DiscoveryResponse) string {
		if reject.Load() && r.GetTypeUrl() == resourcev3.RouteType {
			return "route weights rejected by test"
		}
		return ""
	}
	c.run()
	waitFor(t, "the node to ACK routes", func() bool { return c.counts()["RouteConfiguration"] == 1 })

	// The next route version is rejected.
	reject.Store(true)
	next, err := srv.pub.Set(ctx, testState(20), "to be NACKed")
	if err != nil {
		t.Fatal(err)
	}
	nv := next.Versions[resourcev3.RouteType]
	waitFor(t, "the NACK to reach fleet status", func() bool {
		for _, n := range srv.fleet.Nodes() {
			for _, ts := range n.Types {
				if ts.TypeURL == resourcev3.RouteType && ts.Nacked == nv {
					return true
				}
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond)
	if n := c.countVersion(resourcev3.RouteType, nv); n > 2 {
		t.Fatalf("NACKed version %s was sent %d times; want the send plus at most one resend", nv, n)
	}
	var nackErr string
	for _, n := range srv.fleet.Nodes() {
		for _, ts := range n.Types {
			if ts.TypeURL == resourcev3.RouteType {
				nackErr = ts.NackError
			}
		}
		if n.Converged {
			t.Errorf("node %s reported converged while it rejects the latest routes", n.ID)
		}
	}
	if !strings.Contains(nackErr, "rejected by test") {
		t.Fatalf("fleet status NACK error = %q, want the node's error text", nackErr)
	}
	conv := srv.fleet.Convergence(model.KindRoutes, nv)
	if conv.Converged || len(conv.Nacks) != 1 || !strings.Contains(conv.Nacks[0], "envoy-nack") {
		t.Fatalf("convergence = %+v, want not converged with a NACK naming the node", conv)
	}

	// The watch is alive: a good version after the NACK is delivered and ACKed.
	reject.Store(false)
	good, _ := srv.pub.Set(ctx, testState(60), "fixed")
	waitFor(t, "the fixed version to be ACKed", func() bool {
		return srv.fleet.Convergence(model.KindRoutes, good.Versions[resourcev3.RouteType]).Converged
	})
}

// No node connected is not converged, and a node known from its stats but
// without an xDS stream holds convergence back.
func TestConvergenceNeedsEveryKnownNode(t *testing.T) {
	srv := startTestServer(t)
	stats := []string{}
	var mu sync.Mutex
	srv.fleet.SetStatsNodes(func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), stats...) })
	rec, err := srv.pub.Set(context.Background(), testState(10), "initial")
	if err != nil {
		t.Fatal(err)
	}
	rv := rec.Versions[resourcev3.RouteType]
	if c := srv.fleet.Convergence(model.KindRoutes, rv); c.Converged || c.Nodes != 0 {
		t.Fatalf("no node connected: %+v, want not converged", c)
	}
	c1 := dialADS(t, srv.addr, "envoy-a")
	c1.run()
	waitFor(t, "envoy-a to ACK", func() bool { return srv.fleet.Convergence(model.KindRoutes, rv).Converged })

	mu.Lock()
	stats = []string{"envoy-a", "envoy-b"} // envoy-b streams stats, not yet xDS
	mu.Unlock()
	c := srv.fleet.Convergence(model.KindRoutes, rv)
	if c.Converged || len(c.Missing) != 1 || c.Missing[0] != "envoy-b" {
		t.Fatalf("envoy-b without xDS: %+v, want not converged, missing envoy-b", c)
	}
	c2 := dialADS(t, srv.addr, "envoy-b")
	c2.run()
	waitFor(t, "both to ACK", func() bool {
		c := srv.fleet.Convergence(model.KindRoutes, rv)
		return c.Converged && c.Nodes == 2
	})
}
