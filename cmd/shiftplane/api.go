package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/xds"
)

// apiServer is the running policy API.
type apiServer struct {
	stop func()
}

// apiStopGrace bounds how long stop waits for calls in flight.
const apiStopGrace = 5 * time.Second

// startAPI serves the policy API (RolloutService, FleetService,
// SourceService), the gRPC health service and server reflection on
// api.address. Access: a bearer
// token when api.token or api.tokenFile is set, client certificates when
// api.tls.clientCA is set; config validation has already refused an open
// API on a non-loopback address. Health and reflection stay open so probes
// and grpcurl work without credentials; they change nothing.
func startAPI(_ context.Context, cfg Config, engine *policy.Engine, fleet *xds.Fleet, deps *signalDeps, sources api.SourceLister, log *slog.Logger) (*apiServer, error) {
	log = log.With("component", "api")
	token, err := apiToken(cfg)
	if err != nil {
		return nil, err
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(api.MaxMessageBytes), grpc.MaxSendMsgSize(api.MaxMessageBytes),
		grpc.ChainUnaryInterceptor(authUnary(token, deps.auth, log)),
		grpc.ChainStreamInterceptor(authStream(token, deps.auth, log)),
	}
	if cfg.API.TLS.Cert != "" {
		tc, err := apiTLS(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	lis, err := net.Listen("tcp", cfg.API.Address)
	if err != nil {
		return nil, fmt.Errorf("api.address: %w", err)
	}

	gs := grpc.NewServer(opts...)
	svc := api.New(api.Options{
		Engine:   engine,
		Signals:  deps.gate,
		Fleet:    fleetNodes{fleet: fleet, sink: deps.sink, lrs: deps.lrs},
		Validate: cfg.ValidateOptions(),
		Log:      log,
	})
	svc.Register(gs)
	api.NewSourceService(sources).Register(gs)
	hs := health.NewServer()
	for _, name := range []string{"", shiftplanev1.RolloutService_ServiceDesc.ServiceName, shiftplanev1.FleetService_ServiceDesc.ServiceName, shiftplanev1.SourceService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("policy API stopped serving", "error", err)
		}
	}()
	log.Info("policy API listening", "address", lis.Addr().String(), "token", token != nil, "tls", cfg.API.TLS.Cert != "", "mtls", cfg.API.TLS.ClientCA != "")

	stop := func() {
		hs.Shutdown()
		svc.Close() // ends Watch streams, which would hold GracefulStop forever
		done := make(chan struct{})
		go func() { gs.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(apiStopGrace):
			gs.Stop()
		}
		<-served
	}
	return &apiServer{stop: stop}, nil
}

// apiToken returns the sha256 of the configured bearer token, or nil when
// none is configured (the API is then open: loopback, or mTLS only).
// Only the hash is kept, so comparisons take the same time whatever the
// length of the guess.
func apiToken(cfg Config) (*[32]byte, error) {
	t := cfg.API.Token
	if cfg.API.TokenFile != "" {
		if t != "" {
			return nil, errors.New("api.token and api.tokenFile: give only one")
		}
		b, err := os.ReadFile(cfg.API.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("api.tokenFile: %w", err)
		}
		t = strings.TrimSpace(string(b))
		if t == "" {
			return nil, fmt.Errorf("api.tokenFile: %s is empty", cfg.API.TokenFile)
		}
	}
	if t == "" {
		return nil, nil
	}
	h := sha256.Sum256([]byte(t))
	return &h, nil
}

func apiTLS(cfg Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.API.TLS.Cert, cfg.API.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("api.tls.cert/key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.API.TLS.ClientCA != "" {
		pem, err := os.ReadFile(cfg.API.TLS.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("api.tls.clientCA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("api.tls.clientCA: %s holds no PEM certificate", cfg.API.TLS.ClientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// openMethod reports whether a method needs no token: health checks and
// reflection describe the server and change nothing.
func openMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1alpha.ServerReflection/")
}

// checkToken accepts a call carrying `authorization: Bearer <token>`. The
// token itself is never logged.
func checkToken(ctx context.Context, want *[32]byte, lim *authLimiter, method string, log *slog.Logger) error {
	if want == nil || openMethod(method) {
		return nil
	}
	from := "unknown"
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	if lim != nil {
		if ok, wait := lim.allow("api", sourceOf(from)); !ok {
			return status.Errorf(codes.ResourceExhausted, "too many failed authentications from %s; retry in %s", sourceOf(from), wait.Round(time.Millisecond))
		}
	}
	var got string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get("authorization") {
			if len(v) > len("bearer ") && strings.EqualFold(v[:len("bearer ")], "bearer ") {
				got = strings.TrimSpace(v[len("bearer "):])
				break
			}
		}
	}
	h := sha256.Sum256([]byte(got))
	if got != "" && subtle.ConstantTimeCompare(h[:], want[:]) == 1 {
		return nil
	}
	if lim != nil {
		lim.failed("api", sourceOf(from))
	}
	log.Warn("policy API call refused: missing or wrong bearer token", "method", method, "peer", from, "tokenGiven", got != "")
	return status.Error(codes.Unauthenticated, "missing or invalid bearer token (authorization: Bearer <token>)")
}

func authUnary(token *[32]byte, lim *authLimiter, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := checkToken(ctx, token, lim, info.FullMethod, log); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

func authStream(token *[32]byte, lim *authLimiter, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := checkToken(ss.Context(), token, lim, info.FullMethod, log); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// fleetNodes adapts the xDS fleet tracker and the stats sink to the API's
// node list: ACK state from the former, last stats report from the latter.
type fleetNodes struct {
	fleet *xds.Fleet
	sink  *xds.MetricsSink
	lrs   *xds.LoadReports // proxyless clients' load reports, may be nil
}

func (f fleetNodes) Nodes() []api.Node {
	lastReport := map[string]time.Time{}
	if f.sink != nil {
		for _, r := range f.sink.Reports() {
			lastReport[r.Node] = r.At
		}
	}
	if f.lrs != nil {
		for _, r := range f.lrs.Reports() {
			lastReport[r.Node] = r.At
		}
	}
	var out []api.Node
	for _, n := range f.fleet.Nodes() {
		an := api.Node{
			ID:              n.ID,
			Cluster:         n.Cluster,
			Protocol:        n.Protocol,
			ConnectedSince:  n.ConnectedSince,
			LastStatsReport: lastReport[n.ID],
			Converged:       n.Converged,
			NotReady:        !n.Ready,
			Kind:            n.Kind,
			UserAgent:       n.UserAgent,
		}
		for _, t := range n.Types {
			an.Types = append(an.Types, api.NodeType{TypeURL: t.TypeURL, Acked: t.Acked, Nacked: t.Nacked, NackError: t.NackError, NackTime: t.NackTime, Missing: t.Missing})
		}
		out = append(out, an)
	}
	return out
}
