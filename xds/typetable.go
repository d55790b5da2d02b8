package xds

import (
	"iter"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// knownTypes are the xDS types Envoy and grpc-go subscribe to. Per-stream
// and fleet-wide state of these types sits in arrays indexed by knownType,
// so the path every ACK and every response takes (Fleet's callbacks, the
// cache's watches) does no map lookup keyed by a 50-character type URL on
// memory the stream last touched a step ago. Other types still work, in a
// map.
var knownTypes = [...]string{
	resourcev3.ClusterType,
	resourcev3.EndpointType,
	resourcev3.ListenerType,
	resourcev3.RouteType,
}

const numKnownTypes = len(knownTypes)

// knownType is typeURL's index in knownTypes, or -1.
func knownType(typeURL string) int {
	switch typeURL {
	case resourcev3.ClusterType:
		return 0
	case resourcev3.EndpointType:
		return 1
	case resourcev3.ListenerType:
		return 2
	case resourcev3.RouteType:
		return 3
	}
	return -1
}

// byType maps a type URL to a *T: the known types in an array, others in a
// map. The zero value is empty and ready to use; not safe for concurrent
// use on its own.
type byType[T any] struct {
	known [numKnownTypes]*T
	other map[string]*T
}

func (b *byType[T]) get(typeURL string) (*T, bool) {
	if i := knownType(typeURL); i >= 0 {
		v := b.known[i]
		return v, v != nil
	}
	v, ok := b.other[typeURL]
	return v, ok
}

func (b *byType[T]) put(typeURL string, v *T) {
	if i := knownType(typeURL); i >= 0 {
		b.known[i] = v
		return
	}
	if b.other == nil {
		b.other = map[string]*T{}
	}
	b.other[typeURL] = v
}

// getOrNew returns the entry of typeURL, adding a new zero one if there is
// none (and reporting that it did).
func (b *byType[T]) getOrNew(typeURL string) (*T, bool) {
	if v, ok := b.get(typeURL); ok {
		return v, false
	}
	v := new(T)
	b.put(typeURL, v)
	return v, true
}

// len is the number of entries.
func (b *byType[T]) len() int {
	n := len(b.other)
	for _, v := range b.known {
		if v != nil {
			n++
		}
	}
	return n
}

// all yields every entry: the known types in knownTypes' order, then the
// others in no particular order.
func (b *byType[T]) all() iter.Seq2[string, *T] {
	return func(yield func(string, *T) bool) {
		for i, v := range b.known {
			if v != nil && !yield(knownTypes[i], v) {
				return
			}
		}
		for t, v := range b.other {
			if !yield(t, v) {
				return
			}
		}
	}
}
