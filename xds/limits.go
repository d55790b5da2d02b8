package xds

import (
	"crypto/tls"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Limits bound what one client of the xDS port can make shiftplane hold.
type Limits struct {
	// MaxMessageBytes is the largest message read (a MetricsService flush
	// is the largest an Envoy sends); a larger one ends the stream before
	// its body is read.
	MaxMessageBytes int
	// MaxStreamsPerConnection is HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS.
	// An Envoy opens two: ADS and the stats sink.
	MaxStreamsPerConnection int
	// MaxStreamsPerSource bounds the open streams from one IP address.
	MaxStreamsPerSource int
	// MaxStreams bounds the open streams overall.
	MaxStreams int
}

// DefaultLimits are the limits of the config's defaults.
var DefaultLimits = Limits{MaxMessageBytes: 4 << 20, MaxStreamsPerConnection: 16, MaxStreamsPerSource: 256, MaxStreams: 20000}

// ServerOptions returns the gRPC options of the xDS port: TLS (nil: none)
// and the limits. m counts refused streams (nil: not counted).
func ServerOptions(tlsCfg *tls.Config, l Limits, m *Metrics) []grpc.ServerOption {
	sl := &streamLimiter{limits: l, perSource: map[string]int{}, metrics: m}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(l.MaxMessageBytes),
		grpc.MaxConcurrentStreams(uint32(l.MaxStreamsPerConnection)),
		grpc.ChainStreamInterceptor(sl.intercept),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	return opts
}

type streamLimiter struct {
	limits  Limits
	metrics *Metrics

	mu        sync.Mutex
	total     int
	perSource map[string]int
}

func (sl *streamLimiter) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	src := "unknown"
	if p, ok := peer.FromContext(ss.Context()); ok && p.Addr != nil {
		if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
			src = host
		}
	}
	sl.mu.Lock()
	switch {
	case sl.limits.MaxStreams > 0 && sl.total >= sl.limits.MaxStreams:
		sl.mu.Unlock()
		sl.refused()
		return status.Errorf(codes.ResourceExhausted, "too many xDS streams open (limit %d, xds.limits.maxStreams)", sl.limits.MaxStreams)
	case sl.limits.MaxStreamsPerSource > 0 && sl.perSource[src] >= sl.limits.MaxStreamsPerSource:
		sl.mu.Unlock()
		sl.refused()
		return status.Errorf(codes.ResourceExhausted, "too many xDS streams open from %s (limit %d, xds.limits.maxStreamsPerSource)", src, sl.limits.MaxStreamsPerSource)
	}
	sl.total++
	sl.perSource[src]++
	sl.mu.Unlock()
	defer func() {
		sl.mu.Lock()
		sl.total--
		if sl.perSource[src]--; sl.perSource[src] <= 0 {
			delete(sl.perSource, src)
		}
		sl.mu.Unlock()
	}()
	return handler(srv, ss)
}

func (sl *streamLimiter) refused() {
	if sl.metrics != nil {
		sl.metrics.refused.WithLabelValues("limit").Inc()
	}
}
