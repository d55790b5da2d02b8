// Package fleetsim simulates a fleet of Envoys over real gRPC ADS streams.
// Each client has its own connection (grpc.ClientConn) and node id, and
// subscribes the way Envoy does: CDS, then EDS for the clusters it got, then
// LDS, then RDS for the route configurations its listeners name. It ACKs
// every response (SotW: version_info and response_nonce; delta:
// response_nonce) and counts the responses and bytes it received per type.
//
// A Client's counters and ACK state are read with atomics and are safe from
// any goroutine; Start, Drop and Stop must not race with each other. Fleet
// methods are safe for concurrent use except Start/Storm/Stop, which the
// caller serialises.
package fleetsim

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Mode is the xDS protocol variant a client speaks.
type Mode string

// The two ADS variants.
const (
	SotW  Mode = "sotw"
	Delta Mode = "delta"
)

// ParseMode accepts "sotw" or "delta".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case SotW, Delta:
		return Mode(s), nil
	}
	return "", fmt.Errorf("mode %q: want sotw or delta", s)
}

// Type is one of the four resource types, in Envoy's subscription order.
type Type int

// Resource types.
const (
	CDS Type = iota
	EDS
	LDS
	RDS
	NumTypes
)

var (
	typeURLs  = [NumTypes]string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}
	typeNames = [NumTypes]string{"CDS", "EDS", "LDS", "RDS"}
)

// URL returns the type URL.
func (t Type) URL() string { return typeURLs[t] }

func (t Type) String() string {
	if t < 0 || t >= NumTypes {
		return "Type(" + strconv.Itoa(int(t)) + ")"
	}
	return typeNames[t]
}

// TypeOf maps a type URL to its Type.
func TypeOf(url string) (Type, bool) {
	for t, u := range typeURLs {
		if u == url {
			return Type(t), true
		}
	}
	return 0, false
}

// Mono returns CLOCK_MONOTONIC in nanoseconds. Unlike time.Now's monotonic
// reading it is comparable between processes on one host, so a server
// process and a client process can time one push together.
func Mono() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return ts.Nano()
}

// ParseVersion reads a numeric version; anything else is 0.
func ParseVersion(v string) uint64 {
	n, _ := strconv.ParseUint(v, 10, 64)
	return n
}

// Config configures one simulated Envoy.
type Config struct {
	Addr    string // host:port of the ADS server
	Mode    Mode
	NodeID  string
	Cluster string // node.cluster
	// KeepResources keeps the resources last received per type (Resources);
	// off for large fleets.
	KeepResources bool
	DialOptions   []grpc.DialOption
	// OnAck, when set, is called from the stream goroutine right after
	// each ACK is sent, with the resources of the response ACKed (delta:
	// the changed ones).
	OnAck func(t Type, resources []*anypb.Any)
}

// Client is one simulated Envoy.
type Client struct {
	cfg Config

	cc     *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
	gen    atomic.Int64 // stream generation: 1 on Start, +1 per reconnect

	acked     [NumTypes]atomic.Uint64 // version of the last ACK
	ackedAt   [NumTypes]atomic.Int64  // Mono() when that ACK was sent
	ackedGen  [NumTypes]atomic.Int64  // stream generation of that ACK
	bytes     [NumTypes]atomic.Int64  // proto.Size of every response
	responses [NumTypes]atomic.Int64
	streamErr atomic.Int64 // streams that ended while not being dropped
	lastErr   atomic.Pointer[error]

	// st is the protocol state; owned by the stream goroutine, handed over
	// between streams through done.
	st protoState

	resMu     sync.Mutex
	resources [NumTypes]map[string]*anypb.Any
}

type protoState struct {
	requested [NumTypes]bool
	names     [NumTypes][]string // subscribed names; nil for wildcard types
	// SotW
	version [NumTypes]string
	nonce   [NumTypes]string
	// delta: what the client holds, name → version, and for CDS and LDS
	// which EDS/RDS name each resource points at.
	known [NumTypes]map[string]string
	refs  [NumTypes]map[string]string
}

// envoyWindow is Envoy's default HTTP/2 stream and connection window
// (http2_protocol_options initial_stream_window_size and
// initial_connection_window_size).
const envoyWindow = 256 << 20

// NewClient returns a client; Start connects it.
func NewClient(cfg Config) *Client {
	c := &Client{cfg: cfg}
	for t := range NumTypes {
		c.st.known[t] = map[string]string{}
		c.st.refs[t] = map[string]string{}
	}
	return c
}

// ID returns the node id.
func (c *Client) ID() string { return c.cfg.NodeID }

// Start dials a new connection and opens the ADS stream. After a Drop it
// resumes with what the client holds, like Envoy after a reconnect.
func (c *Client) Start() error {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(64<<20)),
		// Like Envoy: fixed HTTP/2 windows (Envoy's default is 256 MiB per
		// stream and connection) and so no BDP PINGs, which grpc-go's
		// client would otherwise send the server after every response.
		grpc.WithInitialWindowSize(envoyWindow),
		grpc.WithInitialConnWindowSize(envoyWindow),
	}, c.cfg.DialOptions...)
	cc, err := grpc.NewClient("passthrough:///"+c.cfg.Addr, opts...)
	if err != nil {
		return fmt.Errorf("node %s: dial %s: %w", c.cfg.NodeID, c.cfg.Addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cc, c.cancel, c.done = cc, cancel, make(chan struct{})
	gen := c.gen.Add(1)
	go c.loop(ctx, gen)
	return nil
}

// Drop closes the stream and the connection, as a network failure would,
// and waits for the stream goroutine to end. The client keeps what it holds.
func (c *Client) Drop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	_ = c.cc.Close()
	<-c.done
	c.cancel, c.cc = nil, nil
}

// Stop is Drop; the client is not restarted.
func (c *Client) Stop() { c.Drop() }

// Acked returns the version last ACKed for t, when, and on which stream
// generation.
func (c *Client) Acked(t Type) (version uint64, at int64, gen int64) {
	// ackedAt and ackedGen are stored before acked.
	v := c.acked[t].Load()
	return v, c.ackedAt[t].Load(), c.ackedGen[t].Load()
}

// Gen returns the current stream generation.
func (c *Client) Gen() int64 { return c.gen.Load() }

// Configured reports whether the current stream has ACKed every type.
func (c *Client) Configured() bool {
	g := c.gen.Load()
	for t := range NumTypes {
		if c.ackedGen[t].Load() != g {
			return false
		}
	}
	return true
}

// Err returns the last stream error, if any.
func (c *Client) Err() error {
	if p := c.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Resources returns the resources last held for t (KeepResources only).
func (c *Client) Resources(t Type) map[string]*anypb.Any {
	c.resMu.Lock()
	defer c.resMu.Unlock()
	out := make(map[string]*anypb.Any, len(c.resources[t]))
	for k, v := range c.resources[t] {
		out[k] = v
	}
	return out
}

// loop runs streams on the connection until the client is dropped; a
// stream that fails is reopened after a short backoff, as Envoy does.
func (c *Client) loop(ctx context.Context, gen int64) {
	defer close(c.done)
	backoff := 50 * time.Millisecond
	for {
		var err error
		if c.cfg.Mode == Delta {
			err = c.runDelta(ctx, gen)
		} else {
			err = c.runSotW(ctx, gen)
		}
		if ctx.Err() != nil {
			return
		}
		c.streamErr.Add(1)
		c.lastErr.Store(&err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

func (c *Client) node() *corev3.Node {
	return &corev3.Node{Id: c.cfg.NodeID, Cluster: c.cfg.Cluster}
}

func (c *Client) record(t Type, size int) {
	c.bytes[t].Add(int64(size))
	c.responses[t].Add(1)
}

func (c *Client) markAcked(t Type, version string, gen int64) {
	c.ackedAt[t].Store(Mono())
	c.ackedGen[t].Store(gen)
	c.acked[t].Store(ParseVersion(version))
}

func (c *Client) keep(t Type, set map[string]*anypb.Any, replace bool, removed []string) {
	if !c.cfg.KeepResources {
		return
	}
	c.resMu.Lock()
	defer c.resMu.Unlock()
	if replace || c.resources[t] == nil {
		c.resources[t] = map[string]*anypb.Any{}
	}
	for k, v := range set {
		c.resources[t][k] = v
	}
	for _, k := range removed {
		delete(c.resources[t], k)
	}
}

// runSotW runs one state-of-the-world ADS stream.
func (c *Client) runSotW(ctx context.Context, gen int64) error {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(c.cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	st := &c.st
	nodeSent := false
	send := func(req *discoveryv3.DiscoveryRequest) error {
		if !nodeSent {
			req.Node, nodeSent = c.node(), true
		}
		return stream.Send(req)
	}
	// A new stream: nonces are per stream. Re-subscribe what we had, with
	// the versions we hold, as Envoy does after a reconnect.
	st.nonce = [NumTypes]string{}
	if !st.requested[CDS] {
		st.requested[CDS] = true
		if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: CDS.URL()}); err != nil {
			return err
		}
	} else {
		for t := range NumTypes {
			if st.requested[t] {
				if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: t.URL(), VersionInfo: st.version[t], ResourceNames: st.names[t]}); err != nil {
					return err
				}
			}
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t, ok := TypeOf(resp.GetTypeUrl())
		if !ok {
			return fmt.Errorf("node %s: unexpected type %q", c.cfg.NodeID, resp.GetTypeUrl())
		}
		c.record(t, proto.Size(resp))
		var kept map[string]*anypb.Any
		if c.cfg.KeepResources {
			kept = map[string]*anypb.Any{}
			for _, r := range resp.GetResources() {
				kept[resourceName(r)] = r
			}
		}
		// Subscriptions that follow from this response go out before its
		// ACK, as Envoy's ADS mux does while it adds the clusters/listeners.
		if dep, names, ok := dependents(t, resp.GetResources()); ok {
			if !st.requested[dep] || !slices.Equal(names, st.names[dep]) {
				st.requested[dep], st.names[dep] = true, names
				if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: dep.URL(), VersionInfo: st.version[dep], ResponseNonce: st.nonce[dep], ResourceNames: names}); err != nil {
					return err
				}
			}
		}
		st.version[t], st.nonce[t] = resp.GetVersionInfo(), resp.GetNonce()
		if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: t.URL(), VersionInfo: st.version[t], ResponseNonce: st.nonce[t], ResourceNames: st.names[t]}); err != nil {
			return err
		}
		c.keep(t, kept, true, nil)
		c.markAcked(t, resp.GetVersionInfo(), gen)
		if c.cfg.OnAck != nil {
			c.cfg.OnAck(t, resp.GetResources())
		}
		// Clusters are initialised once their endpoints arrived; then Envoy
		// asks for listeners.
		if t == EDS && !st.requested[LDS] {
			st.requested[LDS] = true
			if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: LDS.URL()}); err != nil {
				return err
			}
		}
	}
}

// runDelta runs one incremental (delta) ADS stream.
func (c *Client) runDelta(ctx context.Context, gen int64) error {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(c.cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	st := &c.st
	nodeSent := false
	send := func(req *discoveryv3.DeltaDiscoveryRequest) error {
		if !nodeSent {
			req.Node, nodeSent = c.node(), true
		}
		return stream.Send(req)
	}
	if !st.requested[CDS] {
		st.requested[CDS] = true
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: CDS.URL()}); err != nil {
			return err
		}
	} else {
		for t := range NumTypes {
			if st.requested[t] {
				if err := send(&discoveryv3.DeltaDiscoveryRequest{
					TypeUrl:                 t.URL(),
					ResourceNamesSubscribe:  st.names[t],
					InitialResourceVersions: copyMap(st.known[t]),
				}); err != nil {
					return err
				}
				// A server answers a resumed wildcard subscription (CDS,
				// LDS) even when nothing changed, but a named one (EDS,
				// RDS) only if something did: the client, holding its
				// resources, counts the named ones as current on this
				// stream. Anything the server does send is ACKed as usual.
				if t == EDS || t == RDS {
					c.ackedGen[t].Store(gen)
				}
			}
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t, ok := TypeOf(resp.GetTypeUrl())
		if !ok {
			return fmt.Errorf("node %s: unexpected type %q", c.cfg.NodeID, resp.GetTypeUrl())
		}
		c.record(t, proto.Size(resp))
		var kept map[string]*anypb.Any
		if c.cfg.KeepResources {
			kept = map[string]*anypb.Any{}
		}
		for _, r := range resp.GetResources() {
			st.known[t][r.GetName()] = r.GetVersion()
			if kept != nil {
				kept[r.GetName()] = r.GetResource()
			}
			if t == CDS || t == LDS {
				if _, names, ok := dependents(t, []*anypb.Any{r.GetResource()}); ok && len(names) > 0 {
					st.refs[t][r.GetName()] = names[0]
				} else {
					delete(st.refs[t], r.GetName())
				}
			}
		}
		for _, name := range resp.GetRemovedResources() {
			delete(st.known[t], name)
			delete(st.refs[t], name)
		}
		if t == CDS || t == LDS {
			dep := t + 1
			names := sortedValues(st.refs[t])
			if !st.requested[dep] || !slices.Equal(names, st.names[dep]) {
				sub, unsub := diff(st.names[dep], names)
				st.requested[dep], st.names[dep] = true, names
				if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: dep.URL(), ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}); err != nil {
					return err
				}
			}
		}
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		c.keep(t, kept, false, resp.GetRemovedResources())
		c.markAcked(t, resp.GetSystemVersionInfo(), gen)
		if c.cfg.OnAck != nil {
			rs := make([]*anypb.Any, 0, len(resp.GetResources()))
			for _, r := range resp.GetResources() {
				rs = append(rs, r.GetResource())
			}
			c.cfg.OnAck(t, rs)
		}
		if t == EDS && !st.requested[LDS] {
			st.requested[LDS] = true
			if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: LDS.URL()}); err != nil {
				return err
			}
		}
	}
}

// dependents returns, for a CDS or LDS response, the EDS or RDS names its
// resources refer to, sorted.
func dependents(t Type, rs []*anypb.Any) (Type, []string, bool) {
	switch t {
	case CDS:
		var names []string
		for _, r := range rs {
			var cl clusterv3.Cluster
			if err := r.UnmarshalTo(&cl); err != nil {
				continue
			}
			if cl.GetType() != clusterv3.Cluster_EDS {
				continue
			}
			n := cl.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = cl.GetName()
			}
			names = append(names, n)
		}
		return EDS, sortUnique(names), true
	case LDS:
		var names []string
		for _, r := range rs {
			var l listenerv3.Listener
			if err := r.UnmarshalTo(&l); err != nil {
				continue
			}
			for _, fc := range l.GetFilterChains() {
				for _, f := range fc.GetFilters() {
					var hcm hcmv3.HttpConnectionManager
					if f.GetTypedConfig() == nil || f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
						continue
					}
					if n := hcm.GetRds().GetRouteConfigName(); n != "" {
						names = append(names, n)
					}
				}
			}
		}
		return RDS, sortUnique(names), true
	}
	return 0, nil, false
}

// resourceName is the name of a SotW resource: Cluster, Listener and
// RouteConfiguration carry name, ClusterLoadAssignment cluster_name.
func resourceName(r *anypb.Any) string {
	m, err := r.UnmarshalNew()
	if err != nil {
		return ""
	}
	switch v := m.(type) {
	case interface{ GetClusterName() string }:
		return v.GetClusterName()
	case interface{ GetName() string }:
		return v.GetName()
	}
	return ""
}

func sortUnique(s []string) []string {
	sort.Strings(s)
	return slices.Compact(s)
}

func sortedValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return sortUnique(out)
}

func diff(old, cur []string) (sub, unsub []string) {
	for _, n := range cur {
		if !slices.Contains(old, n) {
			sub = append(sub, n)
		}
	}
	for _, n := range old {
		if !slices.Contains(cur, n) {
			unsub = append(unsub, n)
		}
	}
	return sub, unsub
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
