package xds

import (
	"sync"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec wireCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Marshal once, send to all: a SotW response that carries every resource
// of a type is the same bytes for every stream except its nonce, which
// go-control-plane's server writes into the stream's own DiscoveryResponse
// just before it sends it. Cache.Set marshals that shared part once per
// type and publish (wireBody); the xDS server's codec (wireCodec) sends
// those bytes followed by the stream's nonce field instead of marshalling
// the response again on every stream. The result is byte for byte what
// proto.Marshal gives (fields in number order: version_info, resources,
// type_url, nonce).
//
// The codec finds the body from the response's resource slice: a full-set
// response shares its type's slice (preparedType.all), whose backing array
// identifies the prepared type. Anything that does not match the body
// exactly (another version, a subset of the resources, any other field
// set) is marshalled as usual.

// wireBody is a DiscoveryResponse of every resource of a prepared type at
// one version, without its nonce, marshalled.
type wireBody struct {
	version string
	body    mem.Buffer // a SliceBuffer: never freed, shared by every send
}

// wires maps the backing array of a served preparedType.all to the type.
// Cache.Set adds the types it starts serving and removes the ones it stops
// serving; a response of a type no longer listed is marshalled as usual.
var wires sync.Map // unsafe.Pointer → *preparedType

func wireKey(all []*anypb.Any) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(all)) }

// serveWire makes pt's wire body the one at version v and lists pt for the
// codec.
func serveWire(pt *preparedType, v string) error {
	if len(pt.all) == 0 {
		return nil // an empty slice has no array of its own to key on
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&discoveryv3.DiscoveryResponse{VersionInfo: v, Resources: pt.all, TypeUrl: pt.typeURL})
	if err != nil {
		return err
	}
	pt.wire.Store(&wireBody{version: v, body: mem.SliceBuffer(b)})
	wires.Store(wireKey(pt.all), pt)
	return nil
}

// retireWire unlists pt.
func retireWire(pt *preparedType) {
	if len(pt.all) > 0 {
		wires.CompareAndDelete(wireKey(pt.all), pt)
	}
}

// preparedWire returns m's wire form from its prepared body, or nil when m
// is not exactly a prepared full-set response plus a nonce.
func preparedWire(m *discoveryv3.DiscoveryResponse) mem.BufferSlice {
	if len(m.Resources) == 0 {
		return nil
	}
	e, ok := wires.Load(wireKey(m.Resources))
	if !ok {
		return nil
	}
	pt := e.(*preparedType)
	wb := pt.wire.Load()
	if wb == nil || len(m.Resources) != len(pt.all) || m.VersionInfo != wb.version || m.TypeUrl != pt.typeURL ||
		m.Canary || m.ControlPlane != nil || len(m.ResourceErrors) != 0 || len(m.ProtoReflect().GetUnknown()) != 0 {
		return nil
	}
	if m.Nonce == "" {
		return mem.BufferSlice{wb.body}
	}
	nonce := protowire.AppendString(protowire.AppendTag(make([]byte, 0, 2+len(m.Nonce)), 5, protowire.BytesType), m.Nonce)
	return mem.BufferSlice{wb.body, mem.SliceBuffer(nonce)}
}

// wireCodec is gRPC's proto codec, except that a prepared full-set
// DiscoveryResponse is sent from its shared bytes (preparedWire).
type wireCodec struct{ encoding.CodecV2 }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*discoveryv3.DiscoveryResponse); ok {
		if b := preparedWire(m); b != nil {
			return b, nil
		}
	}
	return c.CodecV2.Marshal(v)
}

// Unmarshal is the proto codec's, except that a request's type URL of a
// known type is replaced by the package's constant for it: every lookup
// keyed by it later (go-control-plane's per-stream watch map, twice per ACK
// and response; the cache's and the fleet tracker's type tables) then
// compares a string with itself instead of reading the bytes of one decoded
// a step ago.
func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.CodecV2.Unmarshal(data, v); err != nil {
		return err
	}
	switch m := v.(type) {
	case *discoveryv3.DiscoveryRequest:
		m.TypeUrl = internType(m.TypeUrl)
	case *discoveryv3.DeltaDiscoveryRequest:
		m.TypeUrl = internType(m.TypeUrl)
	}
	return nil
}

// internType returns the constant of a known type URL equal to t, or t.
func internType(t string) string {
	if i := knownType(t); i >= 0 {
		return knownTypes[i]
	}
	return t
}

func newWireCodec() wireCodec { return wireCodec{encoding.GetCodecV2("proto")} }
