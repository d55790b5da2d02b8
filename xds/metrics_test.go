package xds

import (
	"bufio"
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shiftplane/shiftplane/xds/model"
)

// scrapeMetrics reads reg through the Prometheus HTTP handler, as a scrape
// would: series line → value text.
func scrapeMetrics(t *testing.T, reg *prometheus.Registry) map[string]string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]string{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		out[line[:i]] = line[i+1:]
	}
	return out
}

// Push and NACK counters exist at 0 for every served type before any node
// connected, so an alert on increase() sees the first NACK.
func TestCountersStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	m := scrapeMetrics(t, reg)
	for _, name := range []string{"shiftplane_xds_pushes_total", "shiftplane_xds_nacks_total"} {
		for _, typ := range []string{"Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"} {
			if s := fmt.Sprintf("%s{type=%q}", name, typ); m[s] != "0" {
				t.Errorf("%s = %q, want 0", s, m[s])
			}
		}
	}
}

// shiftplane_convergence_seconds times only publishes some node had to ACK:
// not a publish with no node connected (nor that node's later connect), and
// once per changed type a connected node ACKed.
func TestConvergenceObservesOnlyPublishesWithNodes(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := startTestServerWith(t, NewMetrics(reg))
	ctx := context.Background()
	count := func() string { return scrapeMetrics(t, reg)["shiftplane_convergence_seconds_count"] }

	first, err := srv.pub.Set(ctx, testState(10), "initial")
	if err != nil {
		t.Fatal(err)
	}
	if n := count(); n != "0" {
		t.Fatalf("convergence count = %s after a publish with no node, want 0", n)
	}
	c := dialADS(t, srv.addr, "envoy-a")
	c.run()
	waitFor(t, "the node to ACK the first snapshot", func() bool {
		conv := srv.fleet.Convergence(model.KindRoutes, first.Versions[resourcev3.RouteType])
		return conv.Converged && conv.Nodes == 1
	})
	time.Sleep(50 * time.Millisecond) // every ACK of the first snapshot is in
	if n := count(); n != "0" {
		t.Errorf("convergence count = %s after a node connected to an old publish, want 0 (that is connect time, not convergence)", n)
	}

	step, err := srv.pub.Set(ctx, testState(50), "weight step")
	if err != nil {
		t.Fatal(err)
	}
	if len(step.Changed) != 1 {
		t.Fatalf("weight step changed %v, want routes only", step.Changed)
	}
	waitFor(t, "the convergence of the weight step to be observed", func() bool { return count() == "1" })
	m := scrapeMetrics(t, reg)
	if got := m[`shiftplane_xds_pushes_total{type="RouteConfiguration"}`]; got != "2" {
		t.Errorf("route pushes = %s, want 2 (the first snapshot and the step)", got)
	}
	if got := m[`shiftplane_xds_nacks_total{type="RouteConfiguration"}`]; got != "0" {
		t.Errorf("route NACKs = %s, want 0", got)
	}
}
