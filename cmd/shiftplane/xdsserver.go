package main

import (
	"log/slog"

	"google.golang.org/grpc"

	"github.com/shiftplane/shiftplane/xds"
)

// newXDSServer returns the gRPC server of xds.address with its TLS (mTLS
// with xds.tls.clientCA) and limits, and sets the fleet's and the stats
// sink's membership rules from the config. filterStats: the signal reads
// a node's stats only while it is a fleet member (ready xDS stream, or
// within the grace); false for replicas (store.backend: etcd), where an
// Envoy's ADS and stats streams may reach different replicas.
func newXDSServer(cfg Config, fleet *xds.Fleet, deps *signalDeps, log *slog.Logger, filterStats bool) (*grpc.Server, error) {
	x := cfg.XDS
	m := fleet.Metrics()
	fleet.SetReadyGrace(x.ReadyGrace)
	deps.grace = x.ReadyGrace
	deps.sink.SetRefusedCounter(m)
	deps.lrs.SetRefusedCounter(m)
	if filterStats {
		deps.members = fleet
	}
	limits := xds.Limits{
		MaxMessageBytes:         x.Limits.MaxMessageBytes,
		MaxStreamsPerConnection: x.Limits.MaxStreamsPerConnection,
		MaxStreamsPerSource:     x.Limits.MaxStreamsPerSource,
		MaxStreams:              x.Limits.MaxStreams,
	}
	var opts []grpc.ServerOption
	if x.TLS.Cert != "" {
		tc, err := xds.ServerTLS(xds.TLSFiles{Cert: x.TLS.Cert, Key: x.TLS.Key, ClientCA: x.TLS.ClientCA}, func(err error) {
			log.Error("xds.tls: reload failed; serving the last good certificate", "error", err)
		})
		if err != nil {
			return nil, err
		}
		opts = xds.ServerOptions(tc, limits, m)
		log.Info("xds TLS", "mtls", x.TLS.ClientCA != "", "cert", x.TLS.Cert)
	} else {
		opts = xds.ServerOptions(nil, limits, m)
		if !isLoopback(x.Address) {
			log.Warn("xds.address is not loopback and has no mTLS (xds.insecure: true)", "xds", x.Address)
		}
	}
	return xds.NewGRPCServer(opts...), nil
}
