package xds

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"time"

	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/shiftplane/shiftplane/xds/model"
)

// DefaultLoadReportingInterval is how often LRS clients are asked to report.
// Short, because a proxyless client's errors reach the signal gate only
// through these reports: the gate can react within two intervals.
const DefaultLoadReportingInterval = time.Second

// LoadReports is the Load Reporting Service (envoy.service.load_stats.v3)
// that proxyless gRPC clients report to when a cluster carries
// lrs_server: {self: {}}. It asks every client for all clusters at one
// interval and serves what they report as a model.StatsSource, in the
// names the gate reads from Envoy stats, so both kinds of client meet the
// same rules. Safe for concurrent use.
//
// LRS reports are per interval (total_successful_requests etc. since the
// last report); Envoy's counters are cumulative. LoadReports keeps running
// totals per node, so for cluster <c>:
//   - cluster.<c>.upstream_rq_completed: successful + error requests, summed
//     since the stream opened (a counter);
//   - cluster.<c>.upstream_rq_5xx: error requests (any non-OK status; the
//     name the gate's error rate reads), summed;
//   - cluster.<c>.upstream_rq_total: issued requests, summed;
//   - cluster.<c>.upstream_rq_active: requests in progress at the report
//     (a gauge; a cluster missing from a report has none in progress).
//
// A node's counters continue over its streams, as an Envoy's counters do
// over its metrics streams (they count since the process started): a
// client that reconnects within lrsForget resumes from the totals its
// last stream reached, so a reader that counts each report's rise from the
// node's previous one (the observed split) is not misled by the new
// stream's smaller sums. The first report of a stream has no Prev.
type LoadReports struct {
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
	metrics  *Metrics

	mu         sync.Mutex
	nextStream int64
	nodes      map[string]*lrsNode
	retired    map[string]lrsRetired // totals of nodes whose stream closed
}

// lrsRetired is what a closed stream had counted.
type lrsRetired struct {
	at     time.Time
	totals map[string]float64
}

// lrsForget is how long a closed stream's totals wait for the node to
// reconnect; maxRetired bounds how many are kept.
const (
	lrsForget  = 10 * time.Minute
	maxRetired = 4096
)

type lrsNode struct {
	stream int64
	ident  Identity
	since  time.Time
	totals map[string]float64 // the counters, cumulative since the stream opened
	report model.NodeReport
}

var _ model.StatsSource = (*LoadReports)(nil)

// NewLoadReports returns an LRS server asking clients to report every
// interval (DefaultLoadReportingInterval if <= 0). A nil log discards.
func NewLoadReports(log *slog.Logger, interval time.Duration, now func() time.Time) *LoadReports {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if interval <= 0 {
		interval = DefaultLoadReportingInterval
	}
	return &LoadReports{log: log, now: now, interval: interval, nodes: map[string]*lrsNode{}, retired: map[string]lrsRetired{}}
}

// Interval is the load_reporting_interval clients are sent.
func (l *LoadReports) Interval() time.Duration { return l.interval }

// SetRefusedCounter counts streams refused for their identity in m. Call
// before serving.
func (l *LoadReports) SetRefusedCounter(m *Metrics) { l.metrics = m }

// Register serves the LoadReportingService on gs.
func (l *LoadReports) Register(gs *grpc.Server) {
	lrsv3.RegisterLoadReportingServiceServer(gs, lrsServer{l: l})
}

// Reports implements model.StatsSource: one report per node with an open
// LRS stream that has reported at least once, sorted by node.
func (l *LoadReports) Reports() []model.NodeReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]model.NodeReport, 0, len(l.nodes))
	for _, n := range l.nodes {
		if n.report.Latest != nil {
			out = append(out, n.report)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Nodes lists the nodes with an open LRS stream, sorted by id.
func (l *LoadReports) Nodes() []StatsNode {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]StatsNode, 0, len(l.nodes))
	for id, n := range l.nodes {
		out = append(out, StatsNode{ID: id, Since: n.since})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

type lrsServer struct {
	lrsv3.UnimplementedLoadReportingServiceServer
	l *LoadReports
}

// StreamLoadStats reads one client's reports until the stream ends. The
// first request names the node; the answer asks for every cluster.
func (s lrsServer) StreamLoadStats(stream lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	l := s.l
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	node := first.GetNode().GetId()
	if node == "" {
		return status.Error(codes.InvalidArgument, "the first LoadStatsRequest must carry node.id")
	}
	ident := PeerIdentity(stream.Context())
	if !ident.Allows(node) {
		l.log.Warn("load report stream refused: node id not allowed by its certificate", "node", node, "identity", ident.String())
		if l.metrics != nil {
			l.metrics.refused.WithLabelValues("identity").Inc()
		}
		return errNodeNotAllowed(ident, node)
	}
	id, err := l.open(node, ident)
	if err != nil {
		return err
	}
	defer l.closed(node, id)
	l.log.Info("load report stream opened", "node", node, "stream", id, "user_agent", first.GetNode().GetUserAgentName(), "identity", ident.String())
	if err := stream.Send(&lrsv3.LoadStatsResponse{
		SendAllClusters:       true,
		LoadReportingInterval: durationpb.New(l.interval),
	}); err != nil {
		return err
	}
	l.record(node, id, first)
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		l.record(node, id, req)
	}
}

// open registers a stream for node. A node whose stream is still open is
// taken over only by a stream with the same authenticated identity (the
// same client reconnecting); otherwise the new stream is refused, so that
// a stranger cannot mask or fake a node's load by reusing its id.
func (l *LoadReports) open(node string, ident Identity) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.nodes[node]; ok && !(ident.Authenticated() && ident.Key() == old.ident.Key()) {
		return 0, status.Errorf(codes.AlreadyExists, "node id %q already reports load on open stream %d", node, old.stream)
	}
	l.nextStream++
	totals := map[string]float64{}
	if old, ok := l.nodes[node]; ok {
		totals = maps.Clone(old.totals) // the same client, reconnecting
	} else if r, ok := l.retired[node]; ok && l.now().Sub(r.at) <= lrsForget {
		totals = r.totals
	}
	delete(l.retired, node)
	l.nodes[node] = &lrsNode{stream: l.nextStream, ident: ident, since: l.now(), totals: totals}
	return l.nextStream, nil
}

func (l *LoadReports) closed(node string, stream int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.nodes[node]; ok && n.stream == stream {
		delete(l.nodes, node)
		now := l.now()
		for id, r := range l.retired {
			if now.Sub(r.at) > lrsForget {
				delete(l.retired, id)
			}
		}
		if len(l.retired) >= maxRetired {
			var oldest string
			for id, r := range l.retired {
				if oldest == "" || r.at.Before(l.retired[oldest].at) {
					oldest = id
				}
			}
			delete(l.retired, oldest)
		}
		l.retired[node] = lrsRetired{at: now, totals: n.totals}
		l.log.Info("load report stream closed", "node", node, "stream", stream)
	}
}

// record adds one report's loads to the node's totals and makes them its
// latest report.
func (l *LoadReports) record(node string, stream int64, req *lrsv3.LoadStatsRequest) {
	active := map[string]float64{}
	add := map[string]float64{}
	for _, cs := range req.GetClusterStats() {
		c := cs.GetClusterName()
		if c == "" {
			continue
		}
		prefix := "cluster." + c + "."
		for _, ls := range cs.GetUpstreamLocalityStats() {
			ok, bad := float64(ls.GetTotalSuccessfulRequests()), float64(ls.GetTotalErrorRequests())
			add[prefix+"upstream_rq_completed"] += ok + bad
			add[prefix+"upstream_rq_5xx"] += bad
			add[prefix+"upstream_rq_total"] += float64(ls.GetTotalIssuedRequests())
			active[prefix+"upstream_rq_active"] += float64(ls.GetTotalRequestsInProgress())
		}
	}
	at := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.nodes[node]
	if !ok || n.stream != stream {
		return
	}
	for k, v := range add {
		n.totals[k] += v
	}
	latest := maps.Clone(n.totals)
	for k, v := range active {
		if v > 0 {
			latest[k] = v
		}
	}
	prev := n.report
	n.report = model.NodeReport{Node: node, At: at, Latest: latest}
	if prev.Latest != nil {
		n.report.Prev, n.report.PrevAt = prev.Latest, prev.At
	}
}

// String names the source in logs.
func (l *LoadReports) String() string {
	return fmt.Sprintf("LRS (interval %s)", l.interval)
}
