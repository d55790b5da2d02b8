package xds

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

// routes returns n route configurations, named route-0.., each with one
// virtual host whose domain carries w (so content changes with w).
func routes(n, w int) []types.Resource {
	out := make([]types.Resource, n)
	for i := range out {
		out[i] = &routev3.RouteConfiguration{Name: fmt.Sprintf("route-%d", i), VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{fmt.Sprintf("w%d.example", w)}}}}
	}
	return out
}

func mustSet(t *testing.T, c *Cache, byType map[string][]types.Resource, versions map[string]string) {
	t.Helper()
	p, err := c.Prepare(byType)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(context.Background(), p, versions); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, ch chan cachev3.Response) *discoveryv3.DiscoveryResponse {
	t.Helper()
	select {
	case r := <-ch:
		out, err := r.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		return out
	case <-time.After(5 * time.Second):
		t.Fatal("no response")
	}
	return nil
}

func noResponse(t *testing.T, ch chan cachev3.Response, what string) {
	t.Helper()
	select {
	case r := <-ch:
		out, _ := r.GetDiscoveryResponse()
		t.Fatalf("%s: got a response at version %s", what, out.GetVersionInfo())
	case <-time.After(50 * time.Millisecond):
	}
}

func names(out *discoveryv3.DiscoveryResponse) []string {
	var ns []string
	for _, a := range out.GetResources() {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			panic(err)
		}
		ns = append(ns, rc.GetName())
	}
	return ns
}

// One publish is marshalled once: every stream's response carries the same
// Any values, each in its own DiscoveryResponse (the server writes the
// stream's nonce into it).
func TestCacheSharesMarshalledResources(t *testing.T) {
	c := NewCache()
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(2, 1)}, map[string]string{resourcev3.RouteType: "1"})
	var chans []chan cachev3.Response
	for range 3 {
		ch := make(chan cachev3.Response, 1)
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"route-0", "route-1"}, VersionInfo: "1"}
		sub := stream.NewSotwSubscription(req.ResourceNames, true)
		sub.SetReturnedResources(map[string]string{"route-0": "1", "route-1": "1"})
		if _, err := c.CreateWatch(req, &sub, ch); err != nil {
			t.Fatal(err)
		}
		noResponse(t, ch, "up to date")
		chans = append(chans, ch)
	}
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(2, 2)}, map[string]string{resourcev3.RouteType: "2"})
	var outs []*discoveryv3.DiscoveryResponse
	for i, ch := range chans {
		o := recv(t, ch)
		if o.GetVersionInfo() != "2" || len(o.GetResources()) != 2 {
			t.Fatalf("response %d: version %q with %d resources, want 2 with 2", i, o.GetVersionInfo(), len(o.GetResources()))
		}
		outs = append(outs, o)
	}
	for i, o := range outs[1:] {
		if o == outs[0] {
			t.Fatalf("streams 0 and %d share one DiscoveryResponse; the server writes each stream's nonce into it", i+1)
		}
		for j := range o.GetResources() {
			if o.GetResources()[j] != outs[0].GetResources()[j] {
				t.Fatalf("streams 0 and %d carry different Any values: the route was marshalled per stream", i+1)
			}
		}
	}
}

// A request naming some resources gets only those (proxyless gRPC names
// only its targets); one naming none, or "*", gets every resource.
func TestCacheAnswersNamedResourcesOnly(t *testing.T) {
	c := NewCache()
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(3, 1)}, map[string]string{resourcev3.RouteType: "1"})
	cases := map[string]struct {
		names []string
		want  string
	}{
		"one name":            {names: []string{"route-2"}, want: "[route-2]"},
		"two names, unsorted": {names: []string{"route-2", "route-0", "missing"}, want: "[route-0 route-2]"},
		"none":                {want: "[route-0 route-1 route-2]"},
		"explicit wildcard":   {names: []string{"*"}, want: "[route-0 route-1 route-2]"},
		"only missing":        {names: []string{"missing"}, want: "[]"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ch := make(chan cachev3.Response, 1)
			req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: tc.names}
			sub := stream.NewSotwSubscription(tc.names, true)
			if _, err := c.CreateWatch(req, &sub, ch); err != nil {
				t.Fatal(err)
			}
			out := recv(t, ch)
			if got := fmt.Sprint(names(out)); got != tc.want {
				t.Fatalf("resources %s, want %s", got, tc.want)
			}
			if out.GetVersionInfo() != "1" {
				t.Fatalf("version %q, want 1", out.GetVersionInfo())
			}
		})
	}
}

// After a NACK the node's request carries the last version it accepted; the
// guard holds the watch (no resend of the rejected version) for every type,
// and the next version is sent.
func TestNACKGuardHoldsEveryType(t *testing.T) {
	for _, typ := range publishedTypes {
		t.Run(shortType(typ), func(t *testing.T) {
			c := NewCache()
			g := nackGuard{c}
			res := func(w int) map[string][]types.Resource {
				return map[string][]types.Resource{typ: {resourceOf(typ, w)}}
			}
			mustSet(t, c, res(1), map[string]string{typ: "1"})
			mustSet(t, c, res(2), map[string]string{typ: "2"}) // version 2 is the one rejected
			ch := make(chan cachev3.Response, 1)
			sub := stream.NewSotwSubscription(nil, true)
			sub.SetReturnedResources(map[string]string{testResourceName(typ): "2"})
			req := &discoveryv3.DiscoveryRequest{TypeUrl: typ, VersionInfo: "1", ResponseNonce: "7", ErrorDetail: &statuspb.Status{Code: 3, Message: "rejected"}}
			cancel, err := g.CreateWatch(req, &sub, ch)
			if err != nil {
				t.Fatal(err)
			}
			noResponse(t, ch, "after a NACK of version 2")
			mustSet(t, c, res(3), map[string]string{typ: "3"})
			if v := recv(t, ch).GetVersionInfo(); v != "3" {
				t.Fatalf("after the NACK the next publish sent version %q, want 3", v)
			}
			cancel()
		})
	}
}

// resourceOf returns a resource of typ named testResourceName(typ) whose
// content depends on w.
func resourceOf(typ string, w int) types.Resource {
	name := testResourceName(typ)
	tag := strconv.Itoa(w)
	switch typ {
	case resourcev3.ClusterType:
		return &clusterv3.Cluster{Name: name, AltStatName: tag}
	case resourcev3.EndpointType:
		return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{Locality: &corev3.Locality{Zone: tag}}}}
	case resourcev3.ListenerType:
		return &listenerv3.Listener{Name: name, StatPrefix: tag}
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{tag}}}}
}

func testResourceName(typ string) string { return "r-" + shortType(typ) }

// Watches opened and re-armed (as every ACK does) while publishes land
// never miss one: each client ends on the last version.
func TestCacheNoLostWakeups(t *testing.T) {
	c := NewCache()
	const clients, publishes = 40, 200
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(1, 0)}, map[string]string{resourcev3.RouteType: "0"})
	final := strconv.Itoa(publishes)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch := make(chan cachev3.Response, 1)
			sub := stream.NewSotwSubscription([]string{"route-0"}, true)
			version := ""
			deadline := time.After(20 * time.Second)
			for version != final {
				req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"route-0"}, VersionInfo: version}
				cancel, err := c.CreateWatch(req, &sub, ch)
				if err != nil {
					errs <- err
					return
				}
				select {
				case r := <-ch:
					sub.SetReturnedResources(r.GetReturnedResources())
					version = r.GetResponseVersion()
				case <-deadline:
					errs <- fmt.Errorf("client %d stuck at version %q", i, version)
					return
				}
				if i%2 == 0 {
					cancel() // half re-arm like a stream that got a new request
				}
			}
		}()
	}
	for v := 1; v <= publishes; v++ {
		mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(1, v)}, map[string]string{resourcev3.RouteType: strconv.Itoa(v)})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Delta: a subscriber gets what changed and what was withdrawn, nothing
// when a publish changes nothing of it.
func TestCacheDeltaSendsChangesOnly(t *testing.T) {
	c := NewCache()
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(3, 1)}, map[string]string{resourcev3.RouteType: "1"})
	ch := make(chan cachev3.DeltaResponse, 2)
	sub := stream.NewDeltaSubscription(nil, nil, nil, true)
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType}
	if _, err := c.CreateDeltaWatch(req, &sub, ch); err != nil {
		t.Fatal(err)
	}
	first := <-ch
	out, _ := first.GetDeltaDiscoveryResponse()
	if len(out.GetResources()) != 3 {
		t.Fatalf("first wildcard answer has %d resources, want 3", len(out.GetResources()))
	}
	sub.SetReturnedResources(first.GetReturnedResources())

	// route-0 changes, route-2 goes away, route-1 stays.
	next := routes(2, 1)
	next[0] = routes(1, 9)[0]
	req = &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: "1"}
	if _, err := c.CreateDeltaWatch(req, &sub, ch); err != nil {
		t.Fatal(err)
	}
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: next}, map[string]string{resourcev3.RouteType: "2"})
	var r cachev3.DeltaResponse
	select {
	case r = <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no delta response")
	}
	out, _ = r.GetDeltaDiscoveryResponse()
	if len(out.GetResources()) != 1 || out.GetResources()[0].GetName() != "route-0" || fmt.Sprint(out.GetRemovedResources()) != "[route-2]" {
		t.Fatalf("delta answer %v removed %v, want route-0 changed and route-2 removed", out.GetResources(), out.GetRemovedResources())
	}
	var rc routev3.RouteConfiguration
	if err := out.GetResources()[0].GetResource().UnmarshalTo(&rc); err != nil || !proto.Equal(&rc, next[0]) {
		t.Fatalf("delta resource = %v (%v), want the new route-0", &rc, err)
	}
	sub.SetReturnedResources(r.GetReturnedResources())
	ch2 := make(chan cachev3.DeltaResponse, 2)
	req = &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: "2"}
	if _, err := c.CreateDeltaWatch(req, &sub, ch2); err != nil {
		t.Fatal(err)
	}
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: next}, map[string]string{resourcev3.RouteType: "3"})
	select {
	case r := <-ch2:
		out, _ := r.GetDeltaDiscoveryResponse()
		t.Fatalf("same content under a new version sent %v", out)
	case <-time.After(50 * time.Millisecond):
	}
}

// A stream's record of what it was sent (go-control-plane's returned
// resources) follows every answer, whether the cache updates the map the
// subscription holds (same resources as last time) or makes a new one.
func TestCacheRecordsReturnedResourcesPerAnswer(t *testing.T) {
	c := NewCache()
	set := func(v string, w int) {
		mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(3, w)}, map[string]string{resourcev3.RouteType: v})
	}
	set("1", 1)
	// answer does what go-control-plane's server does with a response.
	answer := func(sub *stream.Subscription, names []string, version string) map[string]string {
		t.Helper()
		ch := make(chan cachev3.Response, 1)
		sub.SetResourceSubscription(names)
		req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: names, VersionInfo: version}
		if _, err := c.CreateWatch(req, sub, ch); err != nil {
			t.Fatal(err)
		}
		var r cachev3.Response
		select {
		case r = <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("no response")
		}
		if _, err := r.GetDiscoveryResponse(); err != nil {
			t.Fatal(err)
		}
		sub.SetReturnedResources(r.GetReturnedResources())
		return r.GetReturnedResources()
	}
	two := []string{"route-0", "route-2"}
	sub := stream.NewSotwSubscription(two, true)
	first := answer(&sub, two, "")
	if fmt.Sprint(first) != "map[route-0:1 route-2:1]" {
		t.Fatalf("first answer recorded %v", first)
	}
	set("2", 2)
	again := answer(&sub, two, "1")
	if fmt.Sprint(again) != "map[route-0:2 route-2:2]" || fmt.Sprint(sub.ReturnedResources()) != "map[route-0:2 route-2:2]" {
		t.Fatalf("second answer recorded %v (subscription %v)", again, sub.ReturnedResources())
	}
	// Another stream with the same names keeps its own record.
	other := stream.NewSotwSubscription(two, true)
	if got := answer(&other, two, ""); fmt.Sprint(got) != "map[route-0:2 route-2:2]" {
		t.Fatalf("other stream recorded %v", got)
	}
	set("3", 3)
	one := []string{"route-1"}
	if got := answer(&sub, one, "2"); fmt.Sprint(got) != "map[route-1:3]" {
		t.Fatalf("after changing names recorded %v", got)
	}
	if fmt.Sprint(other.ReturnedResources()) != "map[route-0:2 route-2:2]" {
		t.Fatalf("the other stream's record changed: %v", other.ReturnedResources())
	}
	all := stream.NewSotwSubscription(nil, true)
	if got := answer(&all, nil, ""); fmt.Sprint(got) != "map[route-0:3 route-1:3 route-2:3]" {
		t.Fatalf("wildcard recorded %v", got)
	}
	set("4", 4)
	if got := answer(&all, nil, "3"); fmt.Sprint(got) != "map[route-0:4 route-1:4 route-2:4]" {
		t.Fatalf("wildcard again recorded %v", got)
	}
}

// An ADS stream gets a publish's types make before break: new clusters
// before the routes that may name them; when nothing is added (a stable's
// withdrawal), the route that stops naming the cluster before the cluster
// goes.
func TestCacheAnswersMakeBeforeBreak(t *testing.T) {
	c := NewCache()
	all := []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}
	clusters := func(names ...string) map[string][]types.Resource {
		m := map[string][]types.Resource{
			resourcev3.ListenerType: {resourceOf(resourcev3.ListenerType, 1)},
			resourcev3.RouteType:    {&routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{fmt.Sprint(names)}}}}},
		}
		for _, n := range names {
			m[resourcev3.ClusterType] = append(m[resourcev3.ClusterType], &clusterv3.Cluster{Name: n})
			m[resourcev3.EndpointType] = append(m[resourcev3.EndpointType], &endpointv3.ClusterLoadAssignment{ClusterName: n})
		}
		return m
	}
	at := func(base, v string, changed ...string) map[string]string {
		m := map[string]string{}
		for _, t := range all {
			m[t] = base
		}
		for _, t := range changed {
			m[t] = v
		}
		return m
	}
	// order connects one ADS stream (every type fetched and ACKed, as the
	// server records it), publishes, and returns the types in the order
	// the stream got them.
	order := func(byType map[string][]types.Resource, versions map[string]string, n int) []string {
		t.Helper()
		ch := make(chan cachev3.Response, len(all))
		var cancels []func()
		for _, typ := range all {
			sub := stream.NewSotwSubscription(nil, true)
			if _, err := c.CreateWatch(&discoveryv3.DiscoveryRequest{TypeUrl: typ}, &sub, ch); err != nil {
				t.Fatal(err)
			}
			r := <-ch
			sub.SetReturnedResources(r.GetReturnedResources())
			v, _ := r.GetVersion()
			cancel, err := c.CreateWatch(&discoveryv3.DiscoveryRequest{TypeUrl: typ, VersionInfo: v}, &sub, ch)
			if err != nil {
				t.Fatal(err)
			}
			cancels = append(cancels, cancel)
		}
		noResponse(t, ch, "a stream that holds what is served")
		defer func() {
			for _, cancel := range cancels {
				cancel()
			}
		}()
		mustSet(t, c, byType, versions)
		var got []string
		for range n {
			got = append(got, shortType(recv(t, ch).GetTypeUrl()))
		}
		noResponse(t, ch, "a type that did not change")
		return got
	}
	mustSet(t, c, clusters("a", "b"), at("1", ""))
	if got := order(clusters("a", "b", "c"), at("1", "2", all...), 4); fmt.Sprint(got) != "[Cluster ClusterLoadAssignment Listener RouteConfiguration]" {
		t.Fatalf("a publish adding a cluster answered %v, want clusters first", got)
	}
	if got := order(clusters("a"), at("2", "3", resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType), 3); fmt.Sprint(got) != "[RouteConfiguration Cluster ClusterLoadAssignment]" {
		t.Fatalf("a withdrawal answered %v, want the route first", got)
	}
}
