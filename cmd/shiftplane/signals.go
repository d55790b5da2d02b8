package main

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/xds"
	"github.com/shiftplane/shiftplane/xds/model"
)

// signalDeps are the sources the signal gate reads: the MetricsService sink
// every Envoy streams to, the LRS proxyless gRPC clients report load to,
// and admin endpoints polled for Envoys without the sink.
type signalDeps struct {
	gate    *signal.Gate
	sink    *xds.MetricsSink
	lrs     *xds.LoadReports
	scraper *signal.AdminScraper
	log     *slog.Logger

	// Set by newXDSServer: stats of a node with no ready xDS stream count
	// (in convergence and in the signal) only for grace after they start.
	grace   time.Duration
	members *xds.Fleet

	// auth limits failed authentications on the API and HTTP ports; it is
	// here because it shares the registry and lives as long.
	auth *authLimiter
}

func newSignalDeps(_ context.Context, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*signalDeps, error) {
	d := &signalDeps{sink: xds.NewMetricsSink(log, reg, time.Now), lrs: xds.NewLoadReports(log, cfg.XDS.LoadReportingInterval, time.Now), log: log, auth: newAuthLimiter(reg, time.Now)}
	sources := []signal.StatsSource{memberStats{d}}
	if len(cfg.Signal.AdminURLs) > 0 {
		targets := make([]signal.AdminTarget, len(cfg.Signal.AdminURLs))
		for i, u := range cfg.Signal.AdminURLs {
			targets[i] = signal.AdminTarget{URL: u}
		}
		s, err := signal.NewAdminScraper(signal.AdminScraperConfig{Targets: targets, Interval: cfg.Signal.ScrapeEvery, Log: log, Now: time.Now})
		if err != nil {
			return nil, fmt.Errorf("signal.adminURLs: %w", err)
		}
		d.scraper = s
		sources = append(sources, s)
	}
	d.gate = signal.NewGate(log, sources...)
	return d, nil
}

// registerSink serves the MetricsService sink and the LRS on gs.
func (d *signalDeps) registerSink(gs *grpc.Server) {
	d.sink.Register(gs)
	d.lrs.Register(gs)
}

// fleetStats is what the fleet reports: the sink's Envoy stats and the
// LRS clients' load, in the same stat names (xds.LoadReports).
type fleetStats struct{ d *signalDeps }

func (f fleetStats) Reports() []model.NodeReport {
	out := append(f.d.sink.Reports(), f.d.lrs.Reports()...)
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (f fleetStats) nodes() []xds.StatsNode {
	return append(f.d.sink.Nodes(), f.d.lrs.Nodes()...)
}

// statsNodes lists the nodes streaming stats to the sink or load to the
// LRS right now, for convergence: one whose stream is older than the grace
// is left out (a stats-only node id without an xDS stream cannot stall a
// rollout).
func (d *signalDeps) statsNodes() []string {
	var ids []string
	now := time.Now()
	for _, n := range (fleetStats{d}).nodes() {
		if d.grace == 0 || now.Sub(n.Since) < d.grace {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

// memberStats is the sink as the signal gate reads it: a node's stats count
// once its xDS stream has ACKed something, or for the grace after its stats
// stream started (a restarted shiftplane hears stats before xDS). An
// invented node id with no xDS stream changes no signal after the grace.
type memberStats struct{ d *signalDeps }

func (m memberStats) Reports() []model.NodeReport {
	all := fleetStats(m).Reports()
	if m.d.members == nil || len(all) == 0 {
		return all
	}
	ready := map[string]bool{}
	for _, n := range m.d.members.Nodes() {
		if n.Ready {
			ready[n.ID] = true
		}
	}
	since := map[string]time.Time{}
	for _, n := range fleetStats(m).nodes() {
		since[n.ID] = n.Since
	}
	now := time.Now()
	out := all[:0:0]
	for _, r := range all {
		if ready[r.Node] || now.Sub(since[r.Node]) < m.d.grace {
			out = append(out, r)
		}
	}
	return out
}

func (d *signalDeps) run(ctx context.Context) {
	if d.scraper == nil {
		return
	}
	if err := d.scraper.Run(ctx); err != nil && ctx.Err() == nil {
		d.log.Error("admin scraper stopped", "error", err)
	}
}

// engineWake forwards change notices to the running engine, which is made
// after the fleet and the signal sources (and, with HA, anew each term):
// the fleet's (an ACK completed a version, a NACK) as Wake, the signal
// sources' (a stats report, a reported signal) as Notice. Before there is
// an engine, and between terms, notices are dropped: the engine's first
// tick reads everything anyway.
type engineWake struct{ e atomic.Pointer[policy.Engine] }

func (w *engineWake) set(e *policy.Engine) { w.e.Store(e) }

func (w *engineWake) wake() {
	if e := w.e.Load(); e != nil {
		e.Wake()
	}
}

func (w *engineWake) notice() {
	if e := w.e.Load(); e != nil {
		e.Notice()
	}
}

// notifyTo hooks every signal source to w.
func (d *signalDeps) notifyTo(w *engineWake) {
	d.sink.SetOnReport(w.notice)
	if d.scraper != nil {
		d.scraper.SetOnReport(w.notice)
	}
	d.gate.SetOnChange(w.notice)
}
