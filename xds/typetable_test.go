package xds

import (
	"slices"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func TestByTypeKnownAndOtherTypes(t *testing.T) {
	var b byType[int]
	if b.len() != 0 {
		t.Fatalf("empty table has %d entries", b.len())
	}
	if _, ok := b.get(resourcev3.RouteType); ok {
		t.Fatal("empty table finds a route entry")
	}
	odd := "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	for i, typ := range []string{resourcev3.RouteType, odd, resourcev3.ClusterType, "x"} {
		v, added := b.getOrNew(typ)
		if !added {
			t.Fatalf("%s: getOrNew on an empty slot did not add", typ)
		}
		*v = i + 1
	}
	if v, added := b.getOrNew(odd); added || *v != 2 {
		t.Fatalf("getOrNew of an existing other type: added=%v value=%d", added, *v)
	}
	if v, ok := b.get(resourcev3.ClusterType); !ok || *v != 3 {
		t.Fatalf("cluster entry: ok=%v", ok)
	}
	if _, ok := b.get(resourcev3.ListenerType); ok {
		t.Fatal("listener entry found though never added")
	}
	if b.len() != 4 {
		t.Fatalf("len = %d, want 4", b.len())
	}
	var got []string
	for typ := range b.all() {
		got = append(got, typ)
	}
	// Known types first, in knownTypes' order; then the others.
	if got[0] != resourcev3.ClusterType || got[1] != resourcev3.RouteType {
		t.Fatalf("known types not first and in order: %v", got)
	}
	slices.Sort(got[2:])
	if !slices.Equal(got[2:], []string{odd, "x"}) {
		t.Fatalf("other types: %v", got[2:])
	}
	for i, typ := range knownTypes {
		if knownType(typ) != i {
			t.Fatalf("knownType(%s) = %d, want %d", typ, knownType(typ), i)
		}
	}
	if knownType(resourcev3.RouteType+"x") != -1 || knownType("") != -1 {
		t.Fatal("an unknown type URL has an index")
	}
}

func TestWatchListUnlinkIsIdempotent(t *testing.T) {
	var l watchList
	ws := []*sotwWatch{{}, {}, {}, {}}
	for _, w := range ws {
		l.add(w)
	}
	list := func() []*sotwWatch {
		var out []*sotwWatch
		for w := l.head; w != nil; w = w.next {
			out = append(out, w)
		}
		return out
	}
	ws[1].unlink() // middle
	ws[3].unlink() // head
	ws[3].unlink() // again: a watch answered, then cancelled
	if got := list(); !slices.Equal(got, []*sotwWatch{ws[2], ws[0]}) {
		t.Fatalf("after unlinking two: %d watches left", len(got))
	}
	ws[0].unlink() // tail
	ws[2].unlink()
	if l.head != nil {
		t.Fatal("list not empty after unlinking every watch")
	}
	l.add(ws[1]) // a removed watch can be added again
	if got := list(); !slices.Equal(got, []*sotwWatch{ws[1]}) {
		t.Fatal("re-added watch not listed")
	}
}
