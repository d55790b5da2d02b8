package xds

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"github.com/prometheus/client_golang/prometheus"
	promv1 "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Envoy's default tag names, as labels when the sink runs with
// emit_tags_as_labels: true.
const (
	tagClusterName       = "envoy.cluster_name"
	tagResponseCodeClass = "envoy.response_code_class"
	tagResponseCode      = "envoy.response_code"
)

// MetricsSink is the Envoy MetricsService (envoy.service.metrics.v3): every
// Envoy with a metrics_service stat sink streams its stats here each flush
// interval. It keeps, per node, the latest and the previous report of the
// stats the signal gate reads (model.Wanted) and serves them as a
// model.StatsSource. Safe for concurrent use.
//
// It needs cumulative counters (Envoy's default, report_counters_as_deltas:
// false). It accepts both emit_tags_as_labels settings and stores the full
// dotted names either way.
type MetricsSink struct {
	log      *slog.Logger
	now      func() time.Time
	metrics  *Metrics
	onReport func()

	mu         sync.Mutex
	nextStream int64
	nodes      map[string]*sinkNode
}

// sinkNode is one node's data and the stream that last reported it.
type sinkNode struct {
	stream      int64
	ident       Identity  // the stream's client certificate, zero without mTLS
	since       time.Time // when this stream first reported
	report      model.NodeReport
	counters    map[string]bool // which of report.Latest are counters
	deltaWarned bool            // logged that this stream's counters went down
	staleWarned bool            // logged that an older stream still sends
}

var _ model.StatsSource = (*MetricsSink)(nil)

// NewMetricsSink returns an empty sink and registers
// shiftplane_stats_report_age_seconds{node} with reg (nil: not registered).
// A nil log discards.
func NewMetricsSink(log *slog.Logger, reg prometheus.Registerer, now func() time.Time) *MetricsSink {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &MetricsSink{log: log, now: now, nodes: map[string]*sinkNode{}}
	if reg != nil {
		reg.MustRegister(reportAgeCollector{s})
	}
	return s
}

// Register serves the MetricsService on gs.
func (s *MetricsSink) Register(gs *grpc.Server) {
	metricsv3.RegisterMetricsServiceServer(gs, sinkServer{sink: s})
}

// Reports implements model.StatsSource.
func (s *MetricsSink) Reports() []model.NodeReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]model.NodeReport, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n.report)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

type sinkServer struct {
	metricsv3.UnimplementedMetricsServiceServer
	sink *MetricsSink
}

// StreamMetrics reads one Envoy's stream until it ends. Only the first
// message names the node.
func (ss sinkServer) StreamMetrics(stream metricsv3.MetricsService_StreamMetricsServer) error {
	s := ss.sink
	s.mu.Lock()
	s.nextStream++
	id := s.nextStream
	s.mu.Unlock()

	ident := PeerIdentity(stream.Context())
	node := ""
	ignoredWarned := false
	defer func() {
		if node != "" {
			s.closed(node, id)
		}
	}()
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&metricsv3.StreamMetricsResponse{})
		}
		if err != nil {
			return err
		}
		if node == "" {
			node = msg.GetIdentifier().GetNode().GetId()
			if node == "" {
				return status.Error(codes.InvalidArgument, "the first StreamMetricsMessage must carry identifier.node.id")
			}
			if !ident.Allows(node) {
				s.log.Warn("metrics stream refused: node id not allowed by its certificate", "node", node, "identity", ident.String())
				s.refusedIdentity()
				err := errNodeNotAllowed(ident, node)
				node = ""
				return err
			}
			s.log.Info("metrics stream opened", "node", node, "stream", id, "identity", ident.String())
		}
		why := s.record(node, id, ident, msg.GetEnvoyMetrics())
		if why != "" && !ignoredWarned {
			ignoredWarned = true
			s.log.Warn("ignoring metrics stream: "+why, "node", node, "stream", id, "identity", ident.String())
		}
		if why == "" && s.onReport != nil {
			s.onReport()
		}
	}
}

// SetOnReport makes the sink call fn after each report it keeps (the
// engine's Notice). fn must not block. Call before serving.
func (s *MetricsSink) SetOnReport(fn func()) { s.onReport = fn }

// SetRefusedCounter counts streams refused for their identity in m
// (shiftplane_xds_refused_total{reason="identity"}). Call before serving.
func (s *MetricsSink) SetRefusedCounter(m *Metrics) { s.metrics = m }

func (s *MetricsSink) refusedIdentity() {
	if s.metrics != nil {
		s.metrics.refused.WithLabelValues("identity").Inc()
	}
}

// StatsNode is a node streaming stats, and since when its stream reports.
type StatsNode struct {
	ID    string
	Since time.Time
}

// Nodes lists the nodes streaming stats now, sorted by id.
func (s *MetricsSink) Nodes() []StatsNode {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]StatsNode, 0, len(s.nodes))
	for id, n := range s.nodes {
		out = append(out, StatsNode{ID: id, Since: n.since})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// record stores one flush as the node's latest report. It returns why the
// flush was ignored, or "". A second stream naming a node whose stream is
// still open takes over only when both carry the same authenticated
// identity (the same Envoy reconnecting); otherwise the first keeps the
// node, so a stranger cannot mask or fake a node's stats by reusing its id.
func (s *MetricsSink) record(node string, stream int64, ident Identity, families []*promv1.MetricFamily) string {
	values := map[string]float64{}
	counters := map[string]bool{}
	for _, f := range families {
		isCounter := f.GetType() == promv1.MetricType_COUNTER
		if !isCounter && f.GetType() != promv1.MetricType_GAUGE {
			continue // histograms and summaries (upstream_rq_time) are not read
		}
		for _, m := range f.GetMetric() {
			name := dottedName(f.GetName(), m.GetLabel())
			if !model.Wanted(name) {
				continue
			}
			if isCounter {
				values[name] = m.GetCounter().GetValue()
				counters[name] = true
			} else {
				values[name] = m.GetGauge().GetValue()
			}
		}
	}

	at := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := &sinkNode{stream: stream, ident: ident, since: at, counters: counters, report: model.NodeReport{Node: node, At: at, Latest: values}}
	if old, ok := s.nodes[node]; ok {
		if old.stream != stream && !(ident.Authenticated() && ident.Key() == old.ident.Key()) {
			return fmt.Sprintf("node id already reported by open stream %d (%s)", old.stream, old.ident)
		}
		if old.stream > stream {
			// A newer stream of this node has taken over (Envoy reconnected);
			// the older one is not read.
			if !old.staleWarned {
				old.staleWarned = true
				s.log.Warn("ignoring metrics from an older stream of the same node id", "node", node, "stream", stream, "current", old.stream)
			}
			return ""
		}
		if old.stream == stream {
			n.deltaWarned, n.staleWarned, n.since = old.deltaWarned, old.staleWarned, old.since
		}
		switch {
		case old.stream != stream:
			// A new stream is a new Envoy process (or a reconnect): its
			// counters start a new baseline.
			s.log.Info("node reconnected its metrics stream; starting a new baseline", "node", node, "stream", stream)
		case !model.CountersWentDown(old.report.Latest, values, func(name string) bool { return old.counters[name] }):
			n.report.Prev, n.report.PrevAt = old.report.Latest, old.report.At
		case !n.deltaWarned:
			// Within one stream counters only go down if they are sent as deltas.
			n.deltaWarned = true
			s.log.Warn("a counter went down within one metrics stream; shiftplane needs cumulative counters (report_counters_as_deltas: false)", "node", node, "stream", stream)
		}
	}
	s.nodes[node] = n
	return ""
}

// closed drops the node's data when its stream ends, unless a newer stream
// of the same node has taken over.
func (s *MetricsSink) closed(node string, stream int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nodes[node]; ok && n.stream == stream {
		delete(s.nodes, node)
		s.log.Info("metrics stream closed", "node", node, "stream", stream)
	}
}

// dottedName rebuilds Envoy's full stat name from a tag-extracted name and
// its labels (emit_tags_as_labels: true):
// cluster.upstream_rq_xx{envoy.cluster_name=app-v2,envoy.response_code_class=5}
// is cluster.app-v2.upstream_rq_5xx. Without labels the name is already
// full. Other labels (fixed-value tags) do not change the name.
func dottedName(name string, labels []*promv1.LabelPair) string {
	var cluster, class, code string
	for _, l := range labels {
		switch l.GetName() {
		case tagClusterName:
			cluster = l.GetValue()
		case tagResponseCodeClass:
			class = l.GetValue()
		case tagResponseCode:
			code = l.GetValue()
		}
	}
	if class != "" {
		if base, ok := strings.CutSuffix(name, "_rq_xx"); ok {
			name = base + "_rq_" + class + "xx"
		}
	}
	if code != "" && strings.HasSuffix(name, "_rq") {
		name += "_" + code
	}
	if cluster != "" {
		if rest, ok := strings.CutPrefix(name, "cluster."); ok {
			name = "cluster." + cluster + "." + rest
		}
	}
	return name
}

// reportAgeCollector exports shiftplane_stats_report_age_seconds{node}, computed at
// scrape time so that a node that went quiet shows a growing age.
type reportAgeCollector struct{ s *MetricsSink }

var reportAgeDesc = prometheus.NewDesc("shiftplane_stats_report_age_seconds",
	"Seconds since the node's last MetricsService report.", []string{"node"}, nil)

func (r reportAgeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- reportAgeDesc }

func (r reportAgeCollector) Collect(ch chan<- prometheus.Metric) {
	now := r.s.now()
	for _, rep := range r.s.Reports() {
		ch <- prometheus.MustNewConstMetric(reportAgeDesc, prometheus.GaugeValue, now.Sub(rep.At).Seconds(), rep.Node)
	}
}
