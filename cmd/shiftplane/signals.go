package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/xds"
)

// signalDeps are the sources the signal gate reads: the MetricsService sink
// every Envoy streams to, and admin endpoints polled for Envoys without it.
type signalDeps struct {
	gate    *signal.Gate
	sink    *xds.MetricsSink
	scraper *signal.AdminScraper
	log     *slog.Logger
}

func newSignalDeps(_ context.Context, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*signalDeps, error) {
	d := &signalDeps{sink: xds.NewMetricsSink(log, reg, time.Now), log: log}
	sources := []signal.StatsSource{d.sink}
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

func (d *signalDeps) registerSink(gs *grpc.Server) { d.sink.Register(gs) }

// statsNodes lists the nodes streaming stats to the sink right now.
func (d *signalDeps) statsNodes() []string {
	var ids []string
	for _, r := range d.sink.Reports() {
		ids = append(ids, r.Node)
	}
	return ids
}

func (d *signalDeps) run(ctx context.Context) {
	if d.scraper == nil {
		return
	}
	if err := d.scraper.Run(ctx); err != nil && ctx.Err() == nil {
		d.log.Error("admin scraper stopped", "error", err)
	}
}
