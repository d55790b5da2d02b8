package xds

import (
	"bytes"
	"context"
	"testing"
	"time"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// answer opens a SotW watch of RDS naming names at version and returns
// what the cache answers, with nonce written in as the server does.
func answerRDS(t *testing.T, c *Cache, names []string, version, nonce string) *discoveryv3.DiscoveryResponse {
	t.Helper()
	ch := make(chan cachev3.Response, 1)
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: names, VersionInfo: version}
	sub := stream.NewSotwSubscription(names, true)
	if _, err := c.CreateWatch(req, &sub, ch); err != nil {
		t.Fatal(err)
	}
	out := recv(t, ch)
	out.Nonce = nonce
	return out
}

// wireOf is what the xDS server's codec sends for m.
func wireOf(t *testing.T, m *discoveryv3.DiscoveryResponse) []byte {
	t.Helper()
	bs, err := newWireCodec().Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Free()
	return bs.Materialize()
}

// A full-state response is sent from the bytes Set marshalled once, plus
// the stream's nonce, and those are exactly proto.Marshal's; anything
// else (a subset of the resources, another version, another field set) is
// marshalled as usual and is just as exact.
func TestWireCodecSendsPreparedBytes(t *testing.T) {
	c := NewCache()
	mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(3, 1)}, map[string]string{resourcev3.RouteType: "7"})

	exact := func(t *testing.T, m *discoveryv3.DiscoveryResponse) {
		t.Helper()
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got := wireOf(t, m)
		if !bytes.Equal(got, want) {
			t.Fatalf("codec wrote %d bytes that differ from proto.Marshal's %d", len(got), len(want))
		}
		var back discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(m, &back, protocmp.Transform()); d != "" {
			t.Fatalf("decoded response differs (-sent +decoded):\n%s", d)
		}
	}

	t.Run("full state, prepared", func(t *testing.T) {
		for _, nonce := range []string{"1", "123456789012", ""} {
			m := answerRDS(t, c, nil, "", nonce)
			if preparedWire(m) == nil {
				t.Fatalf("nonce %q: a full-state response was marshalled again, not sent from its prepared bytes", nonce)
			}
			exact(t, m)
		}
	})
	t.Run("every name, prepared", func(t *testing.T) {
		m := answerRDS(t, c, []string{"route-2", "route-0", "route-1"}, "", "9")
		if preparedWire(m) == nil {
			t.Fatal("a response naming every resource was not sent from its prepared bytes")
		}
		exact(t, m)
	})
	t.Run("subset, marshalled", func(t *testing.T) {
		m := answerRDS(t, c, []string{"route-1"}, "", "3")
		if preparedWire(m) != nil {
			t.Fatal("a one-resource answer used the full set's bytes")
		}
		exact(t, m)
	})
	for name, change := range map[string]func(m *discoveryv3.DiscoveryResponse){
		"version":       func(m *discoveryv3.DiscoveryResponse) { m.VersionInfo = "8" },
		"type":          func(m *discoveryv3.DiscoveryResponse) { m.TypeUrl = resourcev3.ClusterType },
		"canary":        func(m *discoveryv3.DiscoveryResponse) { m.Canary = true },
		"control plane": func(m *discoveryv3.DiscoveryResponse) { m.ControlPlane = &corev3.ControlPlane{Identifier: "x"} },
		"fewer":         func(m *discoveryv3.DiscoveryResponse) { m.Resources = m.Resources[:2] },
	} {
		t.Run("changed "+name+", marshalled", func(t *testing.T) {
			m := answerRDS(t, c, nil, "", "4")
			change(m)
			if preparedWire(m) != nil {
				t.Fatalf("a response with its %s changed was sent from the prepared bytes", name)
			}
			exact(t, m)
		})
	}
	t.Run("after the next publish", func(t *testing.T) {
		old := answerRDS(t, c, nil, "", "5")
		mustSet(t, c, map[string][]types.Resource{resourcev3.RouteType: routes(3, 2)}, map[string]string{resourcev3.RouteType: "8"})
		if preparedWire(old) != nil {
			t.Fatal("a response of a type no longer served still used its prepared bytes")
		}
		exact(t, old)
		m := answerRDS(t, c, nil, "7", "6")
		if m.GetVersionInfo() != "8" || preparedWire(m) == nil {
			t.Fatalf("the new version (%q) is not sent from prepared bytes", m.GetVersionInfo())
		}
		exact(t, m)
	})
	t.Run("same resources at a new version", func(t *testing.T) {
		p, err := c.Prepare(map[string][]types.Resource{resourcev3.RouteType: routes(3, 3)})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"9", "10"} {
			if err := c.Set(context.Background(), p, map[string]string{resourcev3.RouteType: v}); err != nil {
				t.Fatal(err)
			}
			m := answerRDS(t, c, nil, "", "1")
			if m.GetVersionInfo() != v || preparedWire(m) == nil {
				t.Fatalf("version %s: got %q, prepared %v", v, m.GetVersionInfo(), preparedWire(m) != nil)
			}
			exact(t, m)
		}
	})
}

// Over a real gRPC stream from NewGRPCServer, a client receives the
// prepared response intact, nonce included, and its ACK is accepted.
func TestWireCodecOverGRPC(t *testing.T) {
	srv := startTestServer(t)
	if _, err := srv.pub.Set(context.Background(), testState(10), "initial"); err != nil {
		t.Fatal(err)
	}
	want := answerRDS(t, srv.cache, nil, "", "")
	rn := names(want)
	c := dialADS(t, srv.addr, "n1")
	c.send(resourcev3.RouteType, rn, "", "", "")
	got, err := c.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got.GetNonce() == "" {
		t.Fatal("response has no nonce")
	}
	want.Nonce = got.GetNonce()
	if preparedWire(want) == nil {
		t.Fatal("the served RDS response is not a prepared one")
	}
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Fatalf("received response differs (-prepared +received):\n%s", d)
	}
	c.send(resourcev3.RouteType, rn, got.GetVersionInfo(), got.GetNonce(), "")
	acked := func() string {
		for _, n := range srv.fleet.Nodes() {
			for _, ts := range n.Types {
				if n.ID == "n1" && ts.TypeURL == resourcev3.RouteType {
					return ts.Acked
				}
			}
		}
		return ""
	}
	deadline := time.Now().Add(5 * time.Second)
	for acked() != got.GetVersionInfo() {
		if time.Now().After(deadline) {
			t.Fatalf("the ACK of the prepared response was not recorded: acked %q, want %q", acked(), got.GetVersionInfo())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A decoded request's known type URL is the package's constant (the same
// bytes, not an equal copy); an unknown one, and every other field, is as
// decoded.
func TestWireCodecInternsRequestTypeURL(t *testing.T) {
	c := newWireCodec()
	for _, typeURL := range []string{resourcev3.RouteType, resourcev3.ClusterType, "type.example.com/Other"} {
		in := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: "7", ResponseNonce: "3", ResourceNames: []string{"r"}}
		b, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		got := &discoveryv3.DiscoveryRequest{}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(in, got, protocmp.Transform()); diff != "" {
			t.Fatalf("%s: decoded request differs (-want +got):\n%s", typeURL, diff)
		}
		i := knownType(typeURL)
		same := unsafe.StringData(got.TypeUrl) == unsafe.StringData(knownTypes[max(i, 0)])
		if i >= 0 && !same {
			t.Errorf("%s: type URL not interned", typeURL)
		}
		if i < 0 && same {
			t.Errorf("%s: unknown type URL replaced", typeURL)
		}
		d := &discoveryv3.DeltaDiscoveryRequest{}
		db, _ := proto.Marshal(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL})
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(db)}, d); err != nil {
			t.Fatal(err)
		}
		if i >= 0 && unsafe.StringData(d.TypeUrl) != unsafe.StringData(knownTypes[i]) {
			t.Errorf("%s: delta type URL not interned", typeURL)
		}
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0xff})}, &discoveryv3.DiscoveryRequest{}); err == nil {
		t.Error("a malformed request decoded without error")
	}
}
