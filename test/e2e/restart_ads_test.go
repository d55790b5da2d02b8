package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/harness"
)

// After a restart, shiftplane must not count holds, move weights or
// promote until the Envoys it restored are back on ADS and have ACKed the
// restored routes: until then it does not know what they hold. Here each
// Envoy streams its stats straight to shiftplane (so the signal is fresh and
// clear at once) while its ADS connection goes through a gate the test
// keeps shut for a while after the restart.
func TestFleetRestartWaitsForADS(t *testing.T) {
	sp := StartShiftplane(t)
	f := &fleet{
		sp:     sp,
		v1:     harness.StartBackend(t, "v1"),
		v2:     harness.StartBackend(t, "v2"),
		listen: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
	}
	var gates []*tcpGate
	for i := range 2 {
		g := startTCPGate(t, sp.XDSAddr)
		gates = append(gates, g)
		f.envoys = append(f.envoys, harness.StartEnvoy(t, harness.EnvoyOptions{
			NodeID:          nodeID(t, i),
			Cluster:         "e2e-fleet",
			StaticBootstrap: gatedBootstrap(g.Addr, sp.XDSAddr),
		}))
	}
	rc, _ := apiClients(t, sp)
	mon := f.startMonitor(t, false)
	steps := []planStep{{10, 2 * time.Second}, {30, 3 * time.Second}, {60, 2 * time.Second}, {100, 0}}
	sp.WritePlan("web.yaml", f.plan(planSpec{Steps: steps}))
	f.waitListeners(t)
	load := f.startLoad(t, fleetRate)

	waitEngine(t, sp, time.Minute, "PROGRESSING", 30)
	f.waitFleetWeight(t, 10*time.Second, 30)
	time.Sleep(time.Second)
	if err := sp.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, g := range gates {
		g.Shut()
	}
	sp.Start()
	ready := time.Now()

	// ADS stays shut for 8 s; the stats streams reconnect within a second.
	const shut = 8 * time.Second
	type status struct {
		at            time.Duration
		phase         string
		weight        int32
		nodes         int32
		converged     bool
		holdCountedMs int64
	}
	var seen []status
	for time.Since(ready) < shut {
		r, err := getRollout(t.Context(), rc)
		if err == nil {
			seen = append(seen, status{time.Since(ready).Round(time.Millisecond), r.GetPhase().String(), r.GetCanaryWeight(),
				r.GetFleet().GetNodes(), r.GetFleet().GetConverged(), r.GetHoldCounted().AsDuration().Milliseconds()})
		}
		time.Sleep(50 * time.Millisecond)
	}
	shutEnd := time.Now()
	for _, g := range gates {
		if err := g.Open(); err != nil {
			t.Fatal(err)
		}
	}
	waitEngine(t, sp, time.Minute, "SUCCEEDED", 100)
	recs := load.Stop()
	mon.Stop()

	var during []reqRecord
	for _, r := range recs {
		if r.Start.After(ready) && r.End().Before(shutEnd) {
			during = append(during, r)
		}
	}
	ds := summarize(during)
	var b strings.Builder
	last := ""
	for _, s := range seen {
		cur := fmt.Sprintf("%s weight=%d ads-nodes=%d converged=%v", s.phase, s.weight, s.nodes, s.converged)
		if cur != last {
			fmt.Fprintf(&b, "\n    +%-7s %s holdCounted=%dms", s.at, cur, s.holdCountedMs)
			last = cur
		}
	}
	t.Logf("restarted shiftplane while no Envoy could reach its ADS (%s), every Envoy streaming stats; the Envoys served v2 to %.1f%% of %d requests meanwhile. Status seen through the API:%s",
		shut, 100*float64(ds.ByVersion["v2"])/float64(max(ds.Total-ds.Failed, 1)), ds.Total, b.String())
	requireNoFailures(t, "restart with ADS shut", recs)
	first := seen[0]
	for _, s := range seen {
		if s.weight != 30 || s.holdCountedMs > first.holdCountedMs || strings.Contains(s.phase, "PROMOTING") || strings.Contains(s.phase, "SUCCEEDED") {
			t.Errorf("%s after the restart, with %d Envoys connected over ADS (fleet.converged=%v), shiftplane was at %s weight %d with %dms of the hold counted (restored: %dms): "+
				"it moved on without any Envoy having ACKed the restored routes", s.at, s.nodes, s.converged, s.phase, s.weight, s.holdCountedMs, first.holdCountedMs)
			break
		}
	}
}

// gatedBootstrap is the repo's Envoy bootstrap with ADS going to adsAddr
// (the gate), retried every 0.1–0.5 s, and stats going to statsAddr.
func gatedBootstrap(adsAddr, statsAddr string) string {
	host := func(a string) string { h, _, _ := net.SplitHostPort(a); return h }
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	return strings.NewReplacer("ADS_HOST", host(adsAddr), "ADS_PORT", port(adsAddr), "STATS_HOST", host(statsAddr), "STATS_PORT", port(statsAddr)).Replace(`
node:
  id: {{json .NodeID}}
  cluster: {{json .Cluster}}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{.AdminPort}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc:
        cluster_name: ads_cluster
        retry_policy: {retry_back_off: {base_interval: 0.1s, max_interval: 0.5s}}
  cds_config: {resource_api_version: V3, ads: {}}
  lds_config: {resource_api_version: V3, ads: {}}
static_resources:
  clusters:
  - name: ads_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: ads_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: ADS_HOST, port_value: ADS_PORT}}}
  - name: stats_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: stats_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: STATS_HOST, port_value: STATS_PORT}}}
stats_flush_interval: 1s
stats_sinks:
- name: envoy.stat_sinks.metrics_service
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    emit_tags_as_labels: false
    report_counters_as_deltas: false
    grpc_service:
      envoy_grpc: {cluster_name: stats_cluster}
`)
}

// tcpGate forwards loopback TCP connections from Addr to target while it
// is open. Shut closes its listener and cuts every connection through it;
// Open listens on the same address again.
type tcpGate struct {
	Addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startTCPGate(t *testing.T, target string) *tcpGate {
	t.Helper()
	g := &tcpGate{Addr: "127.0.0.1:" + strconv.Itoa(harness.FreePort(t)), target: target, conns: map[net.Conn]struct{}{}}
	if err := g.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Shut(); g.wg.Wait() })
	return g
}

// Open starts accepting on Addr.
func (g *tcpGate) Open() error {
	var ln net.Listener
	var err error
	for range 50 { // the port may linger for a moment after Shut
		if ln, err = net.Listen("tcp", g.Addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("gate %s: %w", g.Addr, err)
	}
	g.mu.Lock()
	g.ln = ln
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				g.forward(c)
			}()
		}
	}()
	return nil
}

func (g *tcpGate) forward(c net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", g.target)
	cancel()
	if err != nil {
		c.Close()
		return
	}
	g.mu.Lock()
	if g.ln == nil { // shut meanwhile
		g.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	g.conns[c], g.conns[up] = struct{}{}, struct{}{}
	g.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
	g.mu.Lock()
	delete(g.conns, c)
	delete(g.conns, up)
	g.mu.Unlock()
}

// Shut stops accepting and cuts every connection through the gate.
func (g *tcpGate) Shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln != nil {
		g.ln.Close()
		g.ln = nil
	}
	for c := range g.conns {
		c.Close()
	}
}
