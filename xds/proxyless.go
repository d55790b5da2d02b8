package xds

import (
	"fmt"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Proxyless gRPC (grpc-go's xds:/// resolver) reads the same snapshot as
// Envoy. For every service that names gRPC targets, addProxyless adds:
//   - a client-side Listener named like the target, carrying an api_listener
//     whose HTTP connection manager asks RDS for the service's existing route
//     configuration, so a weight step stays an RDS-only push (Envoy ACKs such
//     listeners and ignores them);
//   - the target in the service's virtual host domains (grpc-go matches the
//     virtual host against the target);
//   - (in translate, when it builds the endpoints) a load_balancing_weight
//     on the service's localities (grpc-go ignores a locality with weight 0);
//   - once the canary is published, a route that matches no request and
//     names the canary cluster (warmRoute), so grpc-go subscribes to the
//     canary's cluster and endpoints before any weight sends it calls;
//   - lrs_server: {self: {}} on both clusters, so every client reports its
//     per-cluster load to shiftplane's LRS (LoadReports), the signal from
//     clients that send no Envoy stats;
//   - failure-percentage ejection on the canary cluster, since grpc-go
//     (gRFC A50) ignores consecutive_5xx: one host may be ejected, any
//     non-OK status is a failure, threshold 50 % over at least
//     consecutive5xx requests per interval.
//
// Snapshot.Consistent() only follows filter-chain route references; the
// api_listeners point at route configurations a filter chain already
// names, so the snapshot stays consistent.
func addProxyless(out *Resources, services []model.Service) error {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return err
	}
	for _, s := range services {
		if len(s.Listener.GRPCTargets) == 0 {
			continue
		}
		rcName := ListenerName(s.Listener.Address)
		for _, t := range s.Listener.GRPCTargets {
			hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
				StatPrefix: s.Name,
				RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
					RouteConfigName: rcName,
					ConfigSource:    adsSource(),
				}},
				HttpFilters: []*hcmv3.HttpFilter{{
					Name:       "envoy.filters.http.router",
					ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
				}},
			})
			if err != nil {
				return fmt.Errorf("service %q: grpc target %q: %w", s.Name, t, err)
			}
			out.Listeners = append(out.Listeners, &listenerv3.Listener{
				Name:        t,
				ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
			})
		}
		for _, r := range out.Routes {
			rc := r.(*routev3.RouteConfiguration)
			if rc.GetName() != rcName {
				continue
			}
			for _, vh := range rc.VirtualHosts {
				if vh.GetName() == s.Name {
					vh.Domains = append(vh.Domains, s.Listener.GRPCTargets...)
					if s.CanaryPublished && s.Canary.Cluster != "" {
						vh.Routes = append([]*routev3.Route{warmRoute(s)}, vh.Routes...)
					}
				}
			}
		}
		for _, r := range out.Clusters {
			c := r.(*clusterv3.Cluster)
			if c.GetName() != s.Stable.Cluster && c.GetName() != s.Canary.Cluster {
				continue
			}
			// grpc-go reports load to the xDS server itself (only "self" is
			// accepted); Envoy ignores the field.
			c.LrsServer = &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}},
			}
			if c.GetName() != s.Canary.Cluster || c.OutlierDetection == nil {
				continue
			}
			volume := s.Outlier.Consecutive5xx
			if volume == 0 {
				volume = 1
			}
			c.OutlierDetection.EnforcingFailurePercentage = wrapperspb.UInt32(100)
			c.OutlierDetection.FailurePercentageThreshold = wrapperspb.UInt32(50)
			c.OutlierDetection.FailurePercentageMinimumHosts = wrapperspb.UInt32(1)
			c.OutlierDetection.FailurePercentageRequestVolume = wrapperspb.UInt32(volume)
		}
	}
	sort.Slice(out.Listeners, func(i, j int) bool {
		return strings.Compare(resourceName(out.Listeners[i]), resourceName(out.Listeners[j])) < 0
	})
	return nil
}

// neverHeader names the header warmRoute's match requires both present and
// absent: no request satisfies it, in Envoy or in grpc-go.
const neverHeader = "x-shiftplane-never-matches"

// warmRoute is make-before-break for proxyless clients. grpc-go watches
// only the clusters its routes name and drops zero-weight ones, so without
// this the canary's cluster first appears in a client's config with the
// step that sends it calls: the client then has not got it (it ACKed a
// cluster update it never asked for), and grpc-go 1.85 fails a few calls
// with "unknown cluster selected for RPC" while its cluster manager
// catches up with the new route (measured: 1 of 3,687 calls). A route no
// request matches, naming the canary, makes every client fetch and build
// the canary's cluster when it is published; a weight step then only
// changes the weights of clusters the client already has.
func warmRoute(s model.Service) *routev3.Route {
	return &routev3.Route{
		Name: s.Name + "-canary-warm",
		Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: s.Listener.PathPrefix},
			Headers: []*routev3.HeaderMatcher{
				{Name: neverHeader, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}},
				{Name: neverHeader, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}},
			},
		},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: s.Canary.Cluster},
		}},
	}
}
