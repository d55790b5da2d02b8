package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/test/bufconn"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
	"github.com/shiftplane/shiftplane/policy/etcdstore"
	"github.com/shiftplane/shiftplane/policy/leader"
	"github.com/shiftplane/shiftplane/policy/notify"
	"github.com/shiftplane/shiftplane/policy/planfiles"
	"github.com/shiftplane/shiftplane/policy/replica"
	"github.com/shiftplane/shiftplane/policy/signal"
	"github.com/shiftplane/shiftplane/xds"
)

// haReplica is one replica of a highly available shiftplane
// (store.backend: etcd). Every replica serves xDS from the shared desired
// state at the leader's versions, records its part of the fleet in etcd,
// and answers the policy API by forwarding to the leader. Only the elected
// leader runs the engine, on a store fenced on its term.
type haReplica struct {
	cfg   Config
	log   *slog.Logger
	id    string
	paths []string

	store   *etcdstore.Store
	elector *leader.Elector
	pub     *xds.Publisher
	fleet   *xds.Fleet
	view    *replica.View
	deps    *signalDeps
	wake    engineWake
	onReady func(*policy.Engine)

	xdsReady atomic.Bool

	mu     sync.Mutex
	fenced *etcdstore.Store
	engine *policy.Engine
	inner  *grpc.ClientConn
}

// serveHA runs one replica until ctx ends. Order matters as in serve: no
// xDS stream is served before the shared desired state has been read, so a
// replica that starts never sends Envoys an empty or older configuration.
func serveHA(ctx context.Context, cfg Config, planPaths []string, log *slog.Logger, onReady func(*policy.Engine)) error {
	// Check the plan files before anything else, as serve does.
	if _, err := planfiles.Open(planfiles.Options{Paths: planPaths, Validate: cfg.ValidateOptions(), Log: log}); err != nil {
		return fmt.Errorf("invalid plans:\n%w", err)
	}
	ec := cfg.Store.Etcd
	client, err := etcdstore.Dial(ec.storeConfig())
	if err != nil {
		return err
	}
	defer client.Close()
	store, err := etcdstore.New(ctx, client, ec.Prefix, ec.RequestTimeout)
	if err != nil {
		return fmt.Errorf("store.etcd: %w", err)
	}
	id := ec.Advertise
	if id == "" {
		id = cfg.API.Address
	}
	log = log.With("replica", id)
	elector, err := leader.New(client, leader.Options{Prefix: store.Prefix(), TTL: ec.SessionTTL, ID: id, Log: log})
	if err != nil {
		return err
	}
	r := &haReplica{cfg: cfg, log: log, id: id, paths: planPaths, store: store, elector: elector, onReady: onReady}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	now := time.Now
	r.fleet = xds.NewFleet(log, xds.NewMetrics(reg), now)
	cache := xds.NewCache()
	r.pub = xds.NewPublisher(cache, versionCounter(r.currentStore), now, r.fleet.Published)
	r.pub.SetBeforeSet(replica.StoreHook(r.currentStore))

	r.deps = &signalDeps{sink: xds.NewMetricsSink(log, reg, now), lrs: xds.NewLoadReports(log, cfg.XDS.LoadReportingInterval, now), log: log}
	local := replica.Local{Nodes: r.fleet.Nodes, Stats: fleetStats{r.deps}}
	r.view = replica.NewView(client, store.Prefix(), id, local, r.pub.Versions, log)
	r.view.SetReadyGrace(cfg.XDS.ReadyGrace)
	sources := []signal.StatsSource{r.view}
	if len(cfg.Signal.AdminURLs) > 0 {
		targets := make([]signal.AdminTarget, len(cfg.Signal.AdminURLs))
		for i, u := range cfg.Signal.AdminURLs {
			targets[i] = signal.AdminTarget{URL: u}
		}
		s, err := signal.NewAdminScraper(signal.AdminScraperConfig{Targets: targets, Interval: cfg.Signal.ScrapeEvery, Log: log, Now: now})
		if err != nil {
			return fmt.Errorf("signal.adminURLs: %w", err)
		}
		r.deps.scraper = s
		sources = append(sources, s)
	}
	r.deps.gate = signal.NewGate(log, sources...)
	r.fleet.SetStatsNodes(r.deps.statsNodes)
	r.fleet.SetOnChange(r.wake.wake)
	r.view.SetOnChange(r.wake.wake)
	r.deps.notifyTo(&r.wake)
	reporter := &replica.Reporter{
		Client: client, Prefix: store.Prefix(), ID: id, Local: local, Every: ec.ReportEvery, Log: log,
		Lease: func() clientv3.LeaseID {
			if s := elector.Session(); s != nil {
				return s.Lease()
			}
			return 0
		},
	}
	registerHAMetrics(reg, r, reporter)
	leaderList := func() []policy.Status {
		if e := r.currentEngine(); e != nil {
			return e.List()
		}
		return nil
	}
	registerSignalMetrics(reg, leaderList)
	registerObservedMetrics(reg, leaderList)
	registerBuildInfo(reg)

	// Listeners first, so a bad address fails the start.
	xdsLis, err := net.Listen("tcp", cfg.XDS.Address)
	if err != nil {
		return fmt.Errorf("xds.address: %w", err)
	}
	defer xdsLis.Close()
	apiLis, err := net.Listen("tcp", cfg.API.Address)
	if err != nil {
		return fmt.Errorf("api.address: %w", err)
	}
	defer apiLis.Close()
	httpLis, err := net.Listen("tcp", cfg.HTTP.Address)
	if err != nil {
		return fmt.Errorf("http.address: %w", err)
	}
	defer httpLis.Close()

	fwd, err := newForwarder(cfg, id, func() string { l, _ := elector.Leader(); return l }, r.innerConn)
	if err != nil {
		return err
	}
	defer fwd.close()
	apiSrv, hs, err := publicAPIServer(cfg, fwd, r.deps.auth, log)
	if err != nil {
		return err
	}
	gs, err := newXDSServer(cfg, r.fleet, r.deps, log, false) // xdsserver.go
	if err != nil {
		return err
	}
	xds.Register(ctx, gs, cache, r.fleet, log)
	r.deps.registerSink(gs)
	dash, err := r.haDashboard(cfg)
	if err != nil {
		return err
	}
	notifier, err := notify.New(notify.Options{Sinks: cfg.Notifications, AllowHosts: cfg.Notify.AllowHosts, Registerer: reg, Log: log})
	if err != nil {
		return err
	}
	httpHandler, err := httpGuard(cfg, r.deps.auth, r.httpMux(reg, dash)) // authlimit.go
	if err != nil {
		return err
	}
	httpSrv := &http.Server{Handler: httpHandler, ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 4)
	var wg sync.WaitGroup
	wg.Go(func() {
		replica.Follow(ctx, client, store.Prefix(), r.pub, log, func() {
			// The shared state is read: now Envoys may connect here.
			r.xdsReady.Store(true)
			go func() { errc <- gs.Serve(xdsLis) }()
			log.Info("serving xDS from the shared desired state", "xds", cfg.XDS.Address, "versions", r.pub.Versions())
		})
	})
	wg.Go(func() { r.view.Run(ctx) })
	wg.Go(func() { reporter.Run(ctx) })
	wg.Go(func() { r.deps.run(ctx) })
	wg.Go(func() { dash.Run(ctx) })
	// Only the leader's engine emits updates: each event is sent once.
	wg.Go(func() { notifier.Run(ctx, haEngine{r: r}) })
	wg.Go(func() { elector.Run(ctx, r.lead) })
	go func() { errc <- apiSrv.Serve(apiLis) }()
	go func() { errc <- httpSrv.Serve(httpLis) }()
	log.Info("shiftplane replica started", "api", cfg.API.Address, "http", cfg.HTTP.Address, "etcd", ec.Endpoints, "prefix", store.Prefix())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	log.Info("shiftplane replica stopping")
	r.xdsReady.Store(false)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutdownCtx)
	hs.Shutdown()
	apiSrv.Stop()
	gs.Stop()
	wg.Wait() // the elector resigns a term that ends with ctx
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) && !errors.Is(runErr, grpc.ErrServerStopped) {
		return runErr
	}
	return nil
}

// lead runs the engine for one term. Everything it writes goes through a
// store fenced on the term, so once the term is lost (the lease expired
// while this process was paused or cut off) nothing it does reaches etcd or
// the fleet. Hooks run in the term's context: a hook interrupted by a
// failover has not recorded success, and the next leader runs it again
// (at-least-once).
func (r *haReplica) lead(ctx context.Context, term leader.Term) {
	fenced := r.store.Fenced(etcdstore.Fence{Key: term.Key, Rev: term.Rev})
	r.mu.Lock()
	r.fenced = fenced
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.fenced = nil
		r.mu.Unlock()
	}()
	// Serve what the last leader published before publishing anything:
	// the restore then finds nothing changed and keeps its versions.
	if err := replica.Sync(ctx, r.store.Client(), r.store.Prefix(), r.pub, r.log); err != nil {
		r.log.Error("read the last leader's publish; stepping down", "error", err)
		return
	}
	engine, err := policy.New(ctx, policy.Options{
		// A leader that finds no rollouts (a new or wiped prefix) publishes
		// nothing, so no replica serves an empty config to Envoys that have one.
		Store: fenced, Publisher: policy.HoldEmptyAtStart(r.pub, r.cfg.XDS.AllowEmptyAtStart, r.log), Fleet: r.view, Gate: r.deps.gate, Stats: r.deps.gate,
		Hooks:        policy.CommandHooks{AllowExec: r.cfg.Hooks.AllowExec, AllowHosts: r.cfg.Hooks.AllowHosts},
		Clock:        policy.SystemClock{},
		Log:          r.log,
		Validate:     r.cfg.ValidateOptions(),
		PersistEvery: time.Second,
	})
	if err != nil {
		r.log.Error("start the engine; stepping down", "error", err)
		return
	}
	// Each term reads the plan files anew: the last leader may have
	// applied edits this replica never saw.
	files, err := planfiles.Open(planfiles.Options{Paths: r.paths, Validate: r.cfg.ValidateOptions(), Log: r.log})
	if err != nil {
		r.log.Error("plan files rejected; leading without them", "error", err)
		files = nil
	} else if err := files.ApplyInitial(engine); err != nil {
		r.log.Error("apply plan files", "error", err)
	}
	inner := grpc.NewServer()
	svc := api.New(api.Options{Engine: engine, Signals: r.deps.gate, Fleet: haNodes{view: r.view, sink: r.deps.sink}, Validate: r.cfg.ValidateOptions(), Log: r.log.With("component", "api")})
	svc.Register(inner)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = inner.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///leader", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.log.Error("in-process API", "error", err)
		inner.Stop()
		return
	}
	r.mu.Lock()
	r.engine, r.inner = engine, conn
	r.mu.Unlock()
	if files != nil && len(r.paths) > 0 {
		go func() {
			if err := files.Run(ctx); err != nil {
				r.log.Error("plan files are not watched", "error", err)
			}
		}()
	}
	if r.onReady != nil {
		r.onReady(engine)
	}
	r.log.Info("leading: engine running", "rollouts", len(engine.List()))
	r.wake.set(engine)
	engine.Run(ctx, r.cfg.Engine.Tick)
	r.wake.set(nil)

	r.mu.Lock()
	r.engine, r.inner = nil, nil
	r.mu.Unlock()
	svc.Close()
	conn.Close()
	inner.Stop()
	engine.WaitHooks()
	r.log.Info("engine stopped: no longer leading")
}

func (r *haReplica) currentStore() *etcdstore.Store {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fenced
}

func (r *haReplica) currentEngine() *policy.Engine {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.engine
}

func (r *haReplica) innerConn() *grpc.ClientConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inner
}

// versionCounter hands out versions from the term's fenced store: only a
// leader can number a snapshot.
type versionCounter func() *etcdstore.Store

func (v versionCounter) NextVersion() (uint64, error) {
	s := v()
	if s == nil {
		return 0, etcdstore.ErrFenced
	}
	return s.NextVersion()
}

// publicAPIServer is the policy API every replica serves on api.address:
// authentication as in serve, health and reflection, and every other call
// forwarded to the leader.
func publicAPIServer(cfg Config, fwd *forwarder, lim *authLimiter, log *slog.Logger) (*grpc.Server, *health.Server, error) {
	log = log.With("component", "api")
	token, err := apiToken(cfg)
	if err != nil {
		return nil, nil, err
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(api.MaxMessageBytes), grpc.MaxSendMsgSize(api.MaxMessageBytes),
		grpc.ChainUnaryInterceptor(authUnary(token, lim, log)),
		grpc.ChainStreamInterceptor(authStream(token, lim, log)),
		grpc.UnknownServiceHandler(fwd.handle),
	}
	if cfg.API.TLS.Cert != "" {
		tc, err := apiTLS(cfg)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	gs := grpc.NewServer(opts...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return gs, hs, nil
}

func (r *haReplica) httpMux(reg *prometheus.Registry, ui http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.elector.Health(); err != nil {
			http.Error(w, "etcd session: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		l, _ := r.elector.Leader()
		role := "follower"
		if r.elector.IsLeader() {
			role = "leader"
		}
		fmt.Fprintf(w, "ok: etcd session live; %s; leader %s\n", role, l)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		// A follower is ready once it serves xDS from the shared state.
		if !r.xdsReady.Load() {
			http.Error(w, "not ready: shared desired state not read yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	// The dashboard: the leader's rollouts (a follower shows none and
	// refuses actions, naming the leader) and the fleet of every replica.
	mux.Handle("/", ui)
	return mux
}

// registerHAMetrics exports the leader's rollouts (nothing on a follower),
// shiftplane_ha_leader and the reporter's etcd writes.
func registerHAMetrics(reg prometheus.Registerer, r *haReplica, rep *replica.Reporter) {
	weight := prometheus.NewDesc("shiftplane_rollout_canary_weight", "Canary weight last sent to the fleet.", []string{"rollout"}, nil)
	phase := prometheus.NewDesc("shiftplane_rollout_phase", "1 for the rollout's current phase.", []string{"rollout", "phase"}, nil)
	isLeader := prometheus.NewDesc("shiftplane_ha_leader", "1 while this replica is the leader.", nil, nil)
	writes := prometheus.NewDesc("shiftplane_ha_fleet_writes_total", "Fleet records (ACK state and stats) this replica wrote to etcd.", nil, nil)
	bytes := prometheus.NewDesc("shiftplane_ha_fleet_write_bytes_total", "Bytes of fleet records this replica wrote to etcd.", nil, nil)
	reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{weight, phase, isLeader, writes, bytes}, collect: func(ch chan<- prometheus.Metric) {
		l := 0.0
		if r.elector.IsLeader() {
			l = 1
		}
		ch <- prometheus.MustNewConstMetric(isLeader, prometheus.GaugeValue, l)
		n, b := rep.Writes()
		ch <- prometheus.MustNewConstMetric(writes, prometheus.CounterValue, float64(n))
		ch <- prometheus.MustNewConstMetric(bytes, prometheus.CounterValue, float64(b))
		e := r.currentEngine()
		if e == nil {
			return
		}
		for _, s := range e.List() {
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

// haNodes is the FleetService's node list on the leader: every replica's
// streams.
type haNodes struct {
	view *replica.View
	sink *xds.MetricsSink
}

func (h haNodes) Nodes() []api.Node {
	lastReport := map[string]time.Time{}
	for _, r := range h.view.Reports() {
		lastReport[r.Node] = r.At
	}
	var out []api.Node
	for _, n := range h.view.Nodes() {
		an := api.Node{
			ID: n.ID, Cluster: n.Cluster, Protocol: n.Protocol, ConnectedSince: n.ConnectedSince,
			LastStatsReport: lastReport[n.ID], Converged: n.Converged, Replica: n.Replica, NotReady: !n.Ready,
			Kind: n.Kind, UserAgent: n.UserAgent,
		}
		for _, t := range n.Types {
			an.Types = append(an.Types, api.NodeType{TypeURL: t.TypeURL, Acked: t.Acked, Nacked: t.Nacked, NackError: t.NackError, NackTime: t.NackTime, Missing: t.Missing})
		}
		out = append(out, an)
	}
	return out
}
