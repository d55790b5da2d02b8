package main

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/dashboard"
	"github.com/shiftplane/shiftplane/policy/notify"
	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/xds"
)

// startWeb builds the dashboard (served on http.address) and the notifier,
// and runs both until ctx ends. Neither can block the engine: both read its
// updates through Subscribe.
func startWeb(ctx context.Context, cfg Config, engine *policy.Engine, fleet *xds.Fleet, pub *xds.Publisher, deps *signalDeps, reg prometheus.Registerer, log *slog.Logger) (http.Handler, error) {
	token, err := apiToken(cfg)
	if err != nil {
		return nil, err
	}
	stats := dashboardStats(deps)
	dash := dashboard.New(dashboard.Options{
		Engine: engine,
		Fleet:  fleetNodes{fleet: fleet, sink: deps.sink, lrs: deps.lrs},
		Stats:  stats,
		Auth: dashboard.Auth{
			TokenHash: token,
			// With no credentials at all the API is open on loopback; the
			// dashboard's actions are open only if its listener is loopback too.
			Open: token == nil && cfg.API.TLS.ClientCA == "" && isLoopback(cfg.API.Address) && isLoopback(cfg.HTTP.Address),
			// Off loopback even reading needs the token (config validation
			// refuses a non-loopback http.address without one).
			RequireForRead: !isLoopback(cfg.HTTP.Address),
			Limiter:        limiterFor(deps.auth),
		},
		Snapshots: func() []dashboard.Snapshot {
			var out []dashboard.Snapshot
			for _, p := range pub.History() {
				out = append(out, dashboard.Snapshot{Version: p.Version, Time: p.Time, Changed: p.Changed, Reason: p.Reason})
			}
			return out
		},
		Log: log,
	})
	n, err := notify.New(notify.Options{Sinks: cfg.Notifications, AllowHosts: cfg.Notify.AllowHosts, Registerer: reg, Log: log})
	if err != nil {
		return nil, err
	}
	go dash.Run(ctx)
	go n.Run(ctx, engine)
	return dash, nil
}

// dashboardStats are the sources the dashboard's timeline reads: the sink's
// Envoy stats and the proxyless clients' load reports (fleetStats), and the
// admin scraper.
func dashboardStats(deps *signalDeps) []signal.StatsSource {
	stats := []signal.StatsSource{fleetStats{deps}}
	if deps.scraper != nil {
		stats = append(stats, deps.scraper)
	}
	return stats
}
