// Package xds turns the engine's desired state into Envoy resources and
// serves them: translation (pure), per-type snapshot versioning, the ADS
// server with its ACK/NACK tracking (fleet status), and the Envoy
// MetricsService sink. Nothing here decides policy.
package xds

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Resources is one translation's output, each list sorted by name.
type Resources struct {
	Clusters  []types.Resource
	Endpoints []types.Resource
	Listeners []types.Resource
	Routes    []types.Resource
}

// ListenerName is the name of the listener (and its route configuration)
// for a listener address, normalised first.
func ListenerName(address string) string {
	host, port, _ := net.SplitHostPort(model.ListenerKey(address))
	return "ingress_" + strings.ReplaceAll(host, ":", "_") + "_" + port
}

// Translate turns desired state into Envoy resources. It is pure: the same
// input always gives the same, sorted output. The input is validated first
// (model.State.Validate); an invalid one translates to nothing.
func Translate(ds model.State) (Resources, error) { return translate(ds, nil) }

// translate is Translate with the endpoints of backends that did not change
// since memo's last translation taken from it (nil: none).
func translate(ds model.State, memo *assignmentMemo) (Resources, error) {
	if err := ds.Validate(); err != nil {
		return Resources{}, err
	}
	var out Resources
	services := ds.Sorted().Services

	byListener := map[string][]model.Service{}
	assignments := memo.begin()
	for _, s := range services {
		// Proxyless gRPC clients drop endpoints whose locality has no
		// load_balancing_weight; Envoy ignores it without locality-weighted
		// load balancing.
		weighted := len(s.Listener.GRPCTargets) > 0
		if s.StablePublished {
			out.Clusters = append(out.Clusters, edsCluster(s.Stable.Cluster, nil))
			out.Endpoints = append(out.Endpoints, assignments.get(s.Stable, weighted))
		}
		if s.CanaryPublished {
			od := s.Outlier
			out.Clusters = append(out.Clusters, edsCluster(s.Canary.Cluster, &od))
			out.Endpoints = append(out.Endpoints, assignments.get(s.Canary, weighted))
		}
		key := model.ListenerKey(s.Listener.Address)
		byListener[key] = append(byListener[key], s)
	}

	addrs := make([]string, 0, len(byListener))
	for a := range byListener {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, addr := range addrs {
		name := ListenerName(addr)
		l, err := listener(name, addr)
		if err != nil {
			return Resources{}, err
		}
		out.Listeners = append(out.Listeners, l)
		rc := &routev3.RouteConfiguration{Name: name}
		for _, s := range byListener[addr] {
			rc.VirtualHosts = append(rc.VirtualHosts, virtualHost(s))
		}
		out.Routes = append(out.Routes, rc)
	}
	sortByName(out.Clusters)
	sortByName(out.Endpoints)
	if err := addProxyless(&out, services); err != nil { // proxyless.go
		return Resources{}, err
	}
	memo.commit(assignments)
	return out, nil
}

// assignmentMemo keeps the last translation's ClusterLoadAssignments by
// cluster name, so a publish builds (and Cache.Prepare marshals) again only
// the backends whose endpoints changed: a backend may have 1,000 endpoints,
// and every operation on any rollout publishes all of them. Its values are
// shared between translations and never modified. Safe for concurrent use.
type assignmentMemo struct {
	mu   sync.Mutex
	last map[string]memoAssignment
}

type memoAssignment struct {
	eps      []model.Endpoint // as the plan listed them
	weighted bool
	cla      *endpointv3.ClusterLoadAssignment
}

// assignments is one translation's use of a memo: what it found (prev) and
// what it built or reused (next).
type assignments struct {
	prev, next map[string]memoAssignment
}

func (m *assignmentMemo) begin() *assignments {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	prev := m.last
	m.mu.Unlock()
	return &assignments{prev: prev, next: make(map[string]memoAssignment, len(prev))}
}

// commit keeps what a successful translation used; the memo holds only the
// backends served now.
func (m *assignmentMemo) commit(a *assignments) {
	if m == nil || a == nil {
		return
	}
	m.mu.Lock()
	m.last = a.next
	m.mu.Unlock()
}

func (a *assignments) get(b model.Backend, weighted bool) *endpointv3.ClusterLoadAssignment {
	if a == nil {
		return loadAssignment(b, weighted)
	}
	if m, ok := a.prev[b.Cluster]; ok && m.weighted == weighted && slices.Equal(m.eps, b.Endpoints) {
		a.next[b.Cluster] = m
		return m.cla
	}
	m := memoAssignment{eps: slices.Clone(b.Endpoints), weighted: weighted, cla: loadAssignment(b, weighted)}
	a.next[b.Cluster] = m
	return m.cla
}

func sortByName(rs []types.Resource) {
	sort.Slice(rs, func(i, j int) bool { return resourceName(rs[i]) < resourceName(rs[j]) })
}

func resourceName(r types.Resource) string {
	switch v := r.(type) {
	case *clusterv3.Cluster:
		return v.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return v.GetClusterName()
	case *listenerv3.Listener:
		return v.GetName()
	case *routev3.RouteConfiguration:
		return v.GetName()
	}
	return ""
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func edsCluster(name string, od *model.Outlier) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(2 * time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
	}
	if od != nil {
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:    wrapperspb.UInt32(od.Consecutive5xx),
			Interval:           durationpb.New(od.Interval),
			BaseEjectionTime:   durationpb.New(od.BaseEjectionTime),
			MaxEjectionPercent: wrapperspb.UInt32(od.MaxEjectionPercent),
			// A one-host canary must be ejectable whatever the percentage says.
			AlwaysEjectOneHost: wrapperspb.Bool(true),
		}
	}
	return c
}

func loadAssignment(b model.Backend, weighted bool) *endpointv3.ClusterLoadAssignment {
	lle := &endpointv3.LocalityLbEndpoints{
		// Proxyless gRPC clients reject endpoints without a locality.
		Locality: &corev3.Locality{Region: "shiftplane", Zone: "default"},
	}
	if weighted {
		lle.LoadBalancingWeight = wrapperspb.UInt32(1)
	}
	for _, e := range sortedEndpoints(b.Endpoints) {
		lle.LbEndpoints = append(lle.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(e.IP, e.Port),
			}},
		})
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: b.Cluster,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{lle},
	}
}

// sortedEndpoints returns eps ordered by their "ip:port" text, each text
// made once: a comparison that formats both endpoints cost a publish of
// plans at the 1,000-endpoint cap seconds (n log n Sprintf calls per
// backend, every plan, every publish).
func sortedEndpoints(eps []model.Endpoint) []model.Endpoint {
	if len(eps) < 2 {
		return eps // read only
	}
	type keyed struct {
		key string
		e   model.Endpoint
	}
	ks := make([]keyed, len(eps))
	for i, e := range eps {
		ks[i] = keyed{e.String(), e}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	out := make([]model.Endpoint, len(ks))
	for i, k := range ks {
		out[i] = k.e
	}
	return out
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func listener(name, addr string) (*listenerv3.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", addr, err)
	}
	host, port := ap.Addr().String(), uint32(ap.Port())
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: name,
			ConfigSource:    adsSource(),
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	}
	hcmAny, err := anypb.New(hcm)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(host, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny},
			}},
		}},
	}, nil
}

func virtualHost(s model.Service) *routev3.VirtualHost {
	action := routeAction()
	switch {
	case !s.CanaryPublished:
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: s.Stable.Cluster}
	case !s.StablePublished:
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: s.Canary.Cluster}
	default:
		canary := &routev3.WeightedCluster_ClusterWeight{Name: s.Canary.Cluster, Weight: wrapperspb.UInt32(uint32(s.CanaryWeight))}
		if a := s.Affinity; a != nil {
			canary.ResponseHeadersToAdd = []*corev3.HeaderValueOption{affinityCookie(a)}
		}
		action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
			Clusters: []*routev3.WeightedCluster_ClusterWeight{
				{Name: s.Stable.Cluster, Weight: wrapperspb.UInt32(uint32(100 - s.CanaryWeight))},
				canary,
			},
		}}
		if s.Mirror > 0 {
			action.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{
				Cluster: s.Canary.Cluster,
				RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{
					Numerator: uint32(s.Mirror), Denominator: typev3.FractionalPercent_HUNDRED,
				}},
			}}
		}
	}
	// Routes to the canary come first: Envoy takes the first route that
	// matches, so matched requests and cookie holders never reach the split.
	routes := trafficRoutes(s) // traffic.go
	routes = append(routes, &routev3.Route{
		Name:   s.Name,
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: s.Listener.PathPrefix}},
		Action: &routev3.Route_Route{Route: action},
	})
	return &routev3.VirtualHost{
		Name:    s.Name,
		Domains: append([]string(nil), s.Listener.Domains...),
		Routes:  routes,
	}
}

// routeAction is a route's action before its cluster is chosen.
func routeAction() *routev3.RouteAction {
	return &routev3.RouteAction{
		// Connection failures and refused streams never reached the
		// backend, so retrying them is safe for any method.
		RetryPolicy: &routev3.RetryPolicy{
			RetryOn:    "connect-failure,refused-stream",
			NumRetries: wrapperspb.UInt32(2),
		},
	}
}
