package xds

import (
	"context"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"github.com/prometheus/client_golang/prometheus"
	promv1 "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/test/fakeclock"
)

// sinkEnv is a MetricsSink served over gRPC on a loopback port, and a
// client connection to it.
type sinkEnv struct {
	sink   *MetricsSink
	clock  *fakeclock.Clock
	reg    *prometheus.Registry
	client metricsv3.MetricsServiceClient
}

func startSink(t *testing.T) *sinkEnv {
	t.Helper()
	clock := fakeclock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	sink := NewMetricsSink(nil, reg, clock.Now)
	gs := NewGRPCServer()
	sink.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return &sinkEnv{sink: sink, clock: clock, reg: reg, client: metricsv3.NewMetricsServiceClient(cc)}
}

// sinkStream is one fake Envoy's metrics stream.
type sinkStream struct {
	id     string
	stream metricsv3.MetricsService_StreamMetricsClient
	cancel context.CancelFunc
	sent   int
}

func (e *sinkEnv) open(t *testing.T, id string) *sinkStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := e.client.StreamMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &sinkStream{id: id, stream: st, cancel: cancel}
}

// flush sends one StreamMetricsMessage; like Envoy, only the stream's first
// message carries the node identifier.
func (s *sinkStream) flush(t *testing.T, families ...*promv1.MetricFamily) {
	t.Helper()
	msg := &metricsv3.StreamMetricsMessage{EnvoyMetrics: families}
	if s.sent == 0 && s.id != "" {
		msg.Identifier = &metricsv3.StreamMetricsMessage_Identifier{Node: &corev3.Node{Id: s.id, Cluster: "fleet"}}
	}
	s.sent++
	if err := s.stream.Send(msg); err != nil {
		t.Fatalf("node %s: send: %v", s.id, err)
	}
}

// close ends the stream the way Envoy does on shutdown and waits for the
// server's answer, so every message sent before has been handled.
func (s *sinkStream) close(t *testing.T) error {
	t.Helper()
	_, err := s.stream.CloseAndRecv()
	return err
}

type sinkLabel struct{ name, value string }

func sinkFamily(typ promv1.MetricType, name string, v float64, labels ...sinkLabel) *promv1.MetricFamily {
	m := &promv1.Metric{TimestampMs: proto.Int64(1)}
	for _, l := range labels {
		m.Label = append(m.Label, &promv1.LabelPair{Name: proto.String(l.name), Value: proto.String(l.value)})
	}
	switch typ {
	case promv1.MetricType_COUNTER:
		m.Counter = &promv1.Counter{Value: proto.Float64(v)}
	case promv1.MetricType_GAUGE:
		m.Gauge = &promv1.Gauge{Value: proto.Float64(v)}
	case promv1.MetricType_HISTOGRAM:
		m.Histogram = &promv1.Histogram{SampleCount: proto.Uint64(uint64(v)), SampleSum: proto.Float64(v)}
	}
	return &promv1.MetricFamily{Name: proto.String(name), Type: typ.Enum(), Metric: []*promv1.Metric{m}}
}

func sinkCounter(name string, v float64, labels ...sinkLabel) *promv1.MetricFamily {
	return sinkFamily(promv1.MetricType_COUNTER, name, v, labels...)
}

func sinkGauge(name string, v float64, labels ...sinkLabel) *promv1.MetricFamily {
	return sinkFamily(promv1.MetricType_GAUGE, name, v, labels...)
}

// The stats of the tests, as Envoy names them with emit_tags_as_labels: false.
const (
	v2Completed = "cluster.app-v2.upstream_rq_completed"
	v2Rq5xx     = "cluster.app-v2.upstream_rq_5xx"
	v2Rq503     = "cluster.app-v2.upstream_rq_503"
	v2Active    = "cluster.app-v2.upstream_rq_active"
	v2Ejected   = "cluster.app-v2.outlier_detection.ejections_active"
	v2Detected  = "cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx"
	v1Active    = "cluster.app-v1.upstream_rq_active"
)

// Tagged forms (emit_tags_as_labels: true).
var (
	tagV2   = sinkLabel{"envoy.cluster_name", "app-v2"}
	tagV1   = sinkLabel{"envoy.cluster_name", "app-v1"}
	tagZone = sinkLabel{"envoy.zone", "eu-1"} // a fixed-value tag: does not change the name
	tag5xx  = sinkLabel{"envoy.response_code_class", "5"}
	tag503  = sinkLabel{"envoy.response_code", "503"}
)

// envoy2Flush is one flush of envoy-2, which runs with emit_tags_as_labels: true.
func envoy2Flush(completed, ejected float64) []*promv1.MetricFamily {
	return []*promv1.MetricFamily{
		sinkCounter("cluster.upstream_rq_completed", completed, tagV2, tagZone),
		sinkCounter("cluster.upstream_rq_xx", 1, tagV2, tag5xx),
		sinkCounter("cluster.upstream_rq", 1, tagV2, tag503),
		sinkGauge("cluster.upstream_rq_active", 2, tagV2),
		sinkGauge("cluster.outlier_detection.ejections_active", 1, tagV1),
		sinkGauge("cluster.outlier_detection.ejections_active", ejected, tagV2),
	}
}

// waitReport waits until the sink's report of node satisfies ok.
func (e *sinkEnv) waitReport(t *testing.T, node string, ok func(signal.NodeReport) bool) signal.NodeReport {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range e.sink.Reports() {
			if r.Node == node && ok(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: no matching report; reports: %+v", node, e.sink.Reports())
		}
		time.Sleep(time.Millisecond)
	}
}

// waitGone waits until the sink no longer lists node.
func (e *sinkEnv) waitGone(t *testing.T, node string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		found := false
		for _, r := range e.sink.Reports() {
			found = found || r.Node == node
		}
		if !found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s still reported after its stream ended", node)
		}
		time.Sleep(time.Millisecond)
	}
}

func reportAt(t time.Time) func(signal.NodeReport) bool {
	return func(r signal.NodeReport) bool { return r.At.Equal(t) }
}

func wantStatValues(t *testing.T, what string, got, want map[string]float64) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %v\nwant %v", what, got, want)
	}
}

func wantGateSignal(t *testing.T, g *signal.Gate, now time.Time, q policy.SignalQuery, state policy.SignalState, reason string) {
	t.Helper()
	got := g.Evaluate(now, q)
	if got.State != state || (reason != "" && got.Reason != reason) {
		t.Errorf("signal = %s (%s)\nwant     %s (%s)", got.State, got.Reason, state, reason)
	}
}

func TestMetricsSinkFeedsGate(t *testing.T) {
	e := startSink(t)
	t0 := e.clock.Now()
	gate := signal.NewGate(nil, e.sink)
	q := policy.SignalQuery{
		Rollout: "checkout", CanaryCluster: "app-v2", Since: t0.Add(-time.Minute),
		Analysis: policy.Plan{}.WithDefaults().Analysis,
	}
	// q judges ejections only; rateQ also the 5xx share.
	off, rate := 0.0, 0.05
	q.Analysis.MaxErrorRate = &off
	rateQ := q
	rateQ.Analysis.MaxErrorRate = &rate

	wantGateSignal(t, gate, t0, q, policy.SignalStale, "no Envoy stats received from any node")

	// envoy-1 sends full dotted names, with stats the gate does not read.
	e1 := e.open(t, "envoy-1")
	e1.flush(t,
		sinkCounter(v2Completed, 100), sinkCounter(v2Rq5xx, 0), sinkGauge(v2Active, 3),
		sinkFamily(promv1.MetricType_HISTOGRAM, "cluster.app-v2.upstream_rq_time", 7),
		sinkCounter("cluster.app-v2.upstream_cx_total", 9), sinkGauge("server.uptime", 5),
	)
	r := e.waitReport(t, "envoy-1", reportAt(t0))
	wantStatValues(t, "envoy-1 latest", r.Latest, map[string]float64{v2Completed: 100, v2Rq5xx: 0, v2Active: 3})
	if r.Prev != nil {
		t.Errorf("envoy-1's first report has a previous one: %v", r.Prev)
	}

	// envoy-2 runs with emit_tags_as_labels: true.
	e2 := e.open(t, "envoy-2")
	e2.flush(t, envoy2Flush(50, 0)...)
	r = e.waitReport(t, "envoy-2", reportAt(t0))
	wantStatValues(t, "envoy-2 latest (tags as labels)", r.Latest, map[string]float64{
		v2Completed: 50, v2Rq5xx: 1, v2Rq503: 1, v2Active: 2, v2Ejected: 0,
		"cluster.app-v1.outlier_detection.ejections_active": 1,
	})

	// envoy-3 reports only some stats, none of the canary's.
	e3 := e.open(t, "envoy-3")
	e3.flush(t, sinkGauge(v1Active, 4))
	e.waitReport(t, "envoy-3", reportAt(t0))

	wantGateSignal(t, gate, t0, q, policy.SignalClear, "no ejections of app-v2 on 3 node(s)")
	if n, known := gate.ActiveRequests(t0, "app-v2"); n != 5 || !known {
		t.Errorf("ActiveRequests(app-v2) = %g, %v; want 5 (envoy-3 has none: 0), true", n, known)
	}

	// Next flush: counters rise, without the identifier.
	t1 := t0.Add(time.Second)
	e.clock.Advance(time.Second)
	e1.flush(t, sinkCounter(v2Completed, 200), sinkCounter(v2Rq5xx, 10), sinkGauge(v2Active, 1), sinkCounter(v2Detected, 2))
	r = e.waitReport(t, "envoy-1", reportAt(t1))
	wantStatValues(t, "envoy-1 prev", r.Prev, map[string]float64{v2Completed: 100, v2Rq5xx: 0, v2Active: 3})
	if !r.PrevAt.Equal(t0) {
		t.Errorf("envoy-1 PrevAt = %s, want %s", r.PrevAt, t0)
	}
	e2.flush(t, envoy2Flush(55, 1)...)
	e.waitReport(t, "envoy-2", reportAt(t1))
	wantGateSignal(t, gate, t1, q, policy.SignalFiring,
		"node envoy-1: cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx rose 0→2; "+
			"node envoy-2: cluster.app-v2.outlier_detection.ejections_active=1")
	wantGateSignal(t, gate, t1, rateQ, policy.SignalFiring,
		"node envoy-1: cluster.app-v2.outlier_detection.ejections_detected_consecutive_5xx rose 0→2; "+
			"node envoy-2: cluster.app-v2.outlier_detection.ejections_active=1; "+
			"cluster app-v2: 5xx rate 9.5% (10 of 105 requests on envoy-1, envoy-2) above maxErrorRate 5%")

	// Quiet again: the ejection is over and the detected counter is flat.
	t2 := t1.Add(time.Second)
	e.clock.Advance(time.Second)
	e1.flush(t, sinkCounter(v2Completed, 300), sinkCounter(v2Rq5xx, 10), sinkGauge(v2Active, 1), sinkCounter(v2Detected, 2))
	e2.flush(t, envoy2Flush(60, 0)...)
	e.waitReport(t, "envoy-1", reportAt(t2))
	e.waitReport(t, "envoy-2", reportAt(t2))
	wantGateSignal(t, gate, t2, rateQ, policy.SignalClear, "no ejections of app-v2 on 3 node(s)")

	// envoy-1 restarts: a new stream with the same node id and counters that
	// started again from 0. Its old stream has not noticed yet, and without
	// mTLS nothing says the new stream is the same Envoy: the open stream
	// keeps the node (a stranger reusing the id must not mask its stats).
	t3 := t2.Add(time.Second)
	e.clock.Advance(time.Second)
	e1b := e.open(t, "envoy-1")
	e1b.flush(t, sinkCounter(v2Completed, 20), sinkCounter(v2Rq5xx, 5), sinkCounter(v2Detected, 1))
	e1.flush(t, sinkCounter(v2Completed, 300), sinkCounter(v2Rq5xx, 10), sinkGauge(v2Active, 1), sinkCounter(v2Detected, 2))
	r = e.waitReport(t, "envoy-1", reportAt(t3))
	wantStatValues(t, "envoy-1 while a second stream claims it", r.Latest, map[string]float64{v2Completed: 300, v2Rq5xx: 10, v2Active: 1, v2Detected: 2})
	// The old stream ends: the new one takes over with a new baseline.
	if err := e1.close(t); err != nil {
		t.Fatalf("closing envoy-1's old stream: %v", err)
	}
	t3b := t3.Add(time.Second)
	e.clock.Advance(time.Second)
	e1b.flush(t, sinkCounter(v2Completed, 20), sinkCounter(v2Rq5xx, 5), sinkCounter(v2Detected, 1))
	r = e.waitReport(t, "envoy-1", reportAt(t3b))
	if r.Prev != nil {
		t.Errorf("after a restart envoy-1 still compares with %v", r.Prev)
	}
	wantStatValues(t, "envoy-1 latest after its old stream ended", r.Latest, map[string]float64{v2Completed: 20, v2Rq5xx: 5, v2Detected: 1})
	wantGateSignal(t, gate, t3b, rateQ, policy.SignalClear, "no ejections of app-v2 on 3 node(s)")
	t3 = t3b

	// A counter that goes down within one stream (deltas) is no rise either.
	t4 := t3.Add(time.Second)
	e.clock.Advance(time.Second)
	e2.flush(t, envoy2Flush(10, 0)...)
	if r := e.waitReport(t, "envoy-2", reportAt(t4)); r.Prev != nil {
		t.Errorf("envoy-2's counters went down but it still compares with %v", r.Prev)
	}

	// Stream ends drop nodes: a clean close, and a cancelled stream.
	if err := e3.close(t); err != nil {
		t.Fatal(err)
	}
	e.waitGone(t, "envoy-3")
	e2.cancel()
	e.waitGone(t, "envoy-2")
	if n, known := gate.ActiveRequests(t4, "app-v1"); n != 0 || !known {
		t.Errorf("ActiveRequests(app-v1) = %g, %v; want 0, true (envoy-1 reports, without the stat)", n, known)
	}

	// Nothing for longer than staleAfter: stale, and active requests unknown.
	t5 := t4.Add(11 * time.Second)
	e.clock.Advance(11 * time.Second)
	wantGateSignal(t, gate, t5, q, policy.SignalStale, "no node has reported within staleAfter 10s (newest: node envoy-1, 12s ago)")
	if n, known := gate.ActiveRequests(t5, "app-v2"); known {
		t.Errorf("ActiveRequests with only stale reports = %g, known", n)
	}
	if age := gatherReportAge(t, e.reg, "envoy-1"); age != 12 {
		t.Errorf("shiftplane_stats_report_age_seconds{node=envoy-1} = %g, want 12", age)
	}

	// A rollout that started after the last report is stale too.
	late := q
	late.Since = t4.Add(time.Second)
	wantGateSignal(t, gate, t4.Add(2*time.Second), late, policy.SignalStale,
		"no node has reported since the rollout started at 2026-03-01T12:00:06Z (newest: node envoy-1 at 2026-03-01T12:00:04Z)")

	if err := e1b.close(t); err != nil {
		t.Fatal(err)
	}
	e.waitGone(t, "envoy-1")
	wantGateSignal(t, gate, t5, q, policy.SignalStale, "no Envoy stats received from any node")
	if age := gatherReportAge(t, e.reg, "envoy-1"); age != -1 {
		t.Errorf("report age of a gone node still exported: %g", age)
	}
}

func TestMetricsSinkNeedsIdentifier(t *testing.T) {
	e := startSink(t)
	s := e.open(t, "")
	s.flush(t, sinkCounter(v2Completed, 1))
	err := s.close(t)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "identifier.node.id") {
		t.Fatalf("stream without identifier ended with %v, want InvalidArgument naming identifier.node.id", err)
	}
	if rs := e.sink.Reports(); len(rs) != 0 {
		t.Errorf("reports from an unnamed stream: %v", rs)
	}
}

func TestDottedName(t *testing.T) {
	tests := map[string]struct {
		name   string
		labels []sinkLabel
		want   string
	}{
		"dotted name unchanged": {name: v2Ejected, want: v2Ejected},
		"cluster tag":           {name: "cluster.outlier_detection.ejections_active", labels: []sinkLabel{tagV2}, want: v2Ejected},
		"response code class":   {name: "cluster.upstream_rq_xx", labels: []sinkLabel{tag5xx, tagV2}, want: v2Rq5xx},
		"response code":         {name: "cluster.upstream_rq", labels: []sinkLabel{tagV2, tag503}, want: v2Rq503},
		"fixed tag ignored":     {name: "cluster.upstream_rq_active", labels: []sinkLabel{tagZone, tagV2}, want: v2Active},
		"no cluster tag":        {name: "cluster.upstream_rq_active", want: "cluster.upstream_rq_active"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var lps []*promv1.LabelPair
			for _, l := range tc.labels {
				lps = append(lps, &promv1.LabelPair{Name: proto.String(l.name), Value: proto.String(l.value)})
			}
			if got := dottedName(tc.name, lps); got != tc.want {
				t.Errorf("dottedName = %q, want %q", got, tc.want)
			}
		})
	}
}

// gatherReportAge reads shiftplane_stats_report_age_seconds{node}; -1 if absent.
func gatherReportAge(t *testing.T, reg *prometheus.Registry, node string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "shiftplane_stats_report_age_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "node" && l.GetValue() == node {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}
