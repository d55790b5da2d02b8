package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/boltstore"
	"github.com/shiftplane/shiftplane/policy/planfiles"
	"github.com/shiftplane/shiftplane/xds"
)

func serveCmd() *cobra.Command {
	var plans []string
	cmd := &cobra.Command{
		Use:   "serve [--config FILE] [--plan FILE_OR_DIR ...]",
		Short: "Run the control plane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd.Flags())
			if err != nil {
				return err
			}
			ignoreFileSizeSignal()
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			return serve(ctx, cfg, plans, newLogger(cfg), nil)
		},
	}
	addConfigFlags(cmd.Flags())
	cmd.Flags().StringArrayVar(&plans, "plan", nil, "plan file or folder of plans (repeatable); watched for changes")
	return cmd
}

// signalContext ends on SIGINT or SIGTERM, for a clean shutdown.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

func newLogger(cfg Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// serve runs the control plane until ctx ends. Order matters: the store is
// read and its weights published before any xDS stream is served, so a
// restart never moves traffic. onReady, if set, gets the engine once every
// listener is up (the demo watches it).
func serve(ctx context.Context, cfg Config, planPaths []string, log *slog.Logger, onReady func(*policy.Engine)) error {
	if cfg.Store.Backend == "etcd" {
		return serveHA(ctx, cfg, planPaths, log, onReady) // ha.go
	}
	store, err := boltstore.Open(cfg.Store.Path)
	if err != nil {
		return err
	}
	defer store.Close()

	// Check the plan files before anything is published.
	files, err := planfiles.Open(planfiles.Options{Paths: planPaths, Validate: cfg.ValidateOptions(), Log: log})
	if err != nil {
		return fmt.Errorf("invalid plans:\n%w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	now := time.Now
	fleet := xds.NewFleet(log, xds.NewMetrics(reg), now)
	cache := xds.NewCache()
	pub := xds.NewPublisher(cache, store, now, fleet.Published)
	deps, err := newSignalDeps(ctx, cfg, reg, log)
	if err != nil {
		return err
	}
	fleet.SetStatsNodes(deps.statsNodes)
	var wake engineWake
	fleet.SetOnChange(wake.wake)
	deps.notifyTo(&wake)

	engine, err := policy.New(ctx, policy.Options{
		Store: store, Publisher: policy.HoldEmptyAtStart(pub, cfg.XDS.AllowEmptyAtStart, log), Fleet: fleet, Gate: deps.gate, Stats: deps.gate,
		Hooks:    policy.CommandHooks{AllowExec: cfg.Hooks.AllowExec, AllowHosts: cfg.Hooks.AllowHosts},
		Clock:    policy.SystemClock{},
		Log:      log,
		Validate: cfg.ValidateOptions(),
		// A crash loses at most this much counted hold time.
		PersistEvery: time.Second,
	})
	if err != nil {
		return err
	}
	wake.set(engine)
	registerRolloutMetrics(reg, engine)
	registerSignalMetrics(reg, engine.List)
	registerObservedMetrics(reg, engine.List)
	registerBuildInfo(reg)

	if err := files.ApplyInitial(engine); err != nil {
		return err
	}

	xdsLis, err := net.Listen("tcp", cfg.XDS.Address)
	if err != nil {
		return fmt.Errorf("xds.address: %w", err)
	}
	gs, err := newXDSServer(cfg, fleet, deps, log, true) // xdsserver.go
	if err != nil {
		xdsLis.Close()
		return err
	}
	xds.Register(ctx, gs, cache, fleet, log)
	deps.registerSink(gs)

	apiSrv, err := startAPI(ctx, cfg, engine, fleet, deps, files, log)
	if err != nil {
		xdsLis.Close()
		return err
	}

	ui, err := startWeb(ctx, cfg, engine, fleet, pub, deps, reg, log)
	if err != nil {
		xdsLis.Close()
		apiSrv.stop()
		return err
	}
	var ready atomic.Bool
	httpHandler, err := httpGuard(cfg, deps.auth, httpMux(reg, ui, &ready)) // authlimit.go
	if err != nil {
		xdsLis.Close()
		apiSrv.stop()
		return err
	}
	httpSrv := &http.Server{Addr: cfg.HTTP.Address, Handler: httpHandler, ReadHeaderTimeout: 5 * time.Second}
	httpLis, err := net.Listen("tcp", cfg.HTTP.Address)
	if err != nil {
		xdsLis.Close()
		apiSrv.stop()
		return fmt.Errorf("http.address: %w", err)
	}

	errc := make(chan error, 4)
	go func() { errc <- gs.Serve(xdsLis) }()
	go func() { errc <- httpSrv.Serve(httpLis) }()
	go engine.Run(ctx, cfg.Engine.Tick)
	go deps.run(ctx)
	filesCtx, stopFiles := context.WithCancel(ctx)
	filesDone := make(chan struct{})
	go func() {
		defer close(filesDone)
		if err := files.Run(filesCtx); err != nil {
			log.Error("plan files are not watched", "error", err)
		}
	}()
	ready.Store(true)
	if onReady != nil {
		onReady(engine)
	}
	log.Info("shiftplane serving", "xds", cfg.XDS.Address, "api", cfg.API.Address, "http", cfg.HTTP.Address, "store", cfg.Store.Path, "rollouts", len(engine.List()))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	ready.Store(false)
	log.Info("shiftplane stopping")
	stopFiles()
	<-filesDone
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutdownCtx)
	apiSrv.stop()
	// xDS and stats streams never end on their own, so a graceful stop
	// would only wait; Envoys keep their last config while we are away.
	gs.Stop()
	engine.WaitHooks()
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) {
		return runErr
	}
	return nil
}

func httpMux(reg *prometheus.Registry, ui http.Handler, ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/", ui)
	return mux
}

func registerRolloutMetrics(reg prometheus.Registerer, engine *policy.Engine) {
	weight := prometheus.NewDesc("shiftplane_rollout_canary_weight", "Canary weight last sent to the fleet.", []string{"rollout"}, nil)
	phase := prometheus.NewDesc("shiftplane_rollout_phase", "1 for the rollout's current phase.", []string{"rollout", "phase"}, nil)
	reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{weight, phase}, collect: func(ch chan<- prometheus.Metric) {
		for _, s := range engine.List() {
			ch <- prometheus.MustNewConstMetric(weight, prometheus.GaugeValue, float64(s.State.Weight), s.Plan.Name)
			for _, p := range policy.Phases {
				v := 0.0
				if p == s.State.Phase {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(phase, prometheus.GaugeValue, v, s.Plan.Name, string(p))
			}
		}
	}})
}

type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
