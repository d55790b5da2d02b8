// Package floor is the least an ADS server can do to move a weight: it
// pushes one pre-marshalled response to every open stream and counts the
// ACKs. No cache, no watches, no callbacks, no per-stream marshalling: the
// bytes are encoded once per push and written to every stream by that
// stream's goroutine. It is the baseline a control plane is measured
// against on the same machine, not a usable xDS server.
//
// A stream gets the current response of each type it subscribes to, and
// every later RDS push. SotW and delta ADS are both served. Safe for
// concurrent use.
package floor

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec rawCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
	"github.com/shiftplane/shiftplane/xds"
)

// raw is a message already in wire form; rawCodec writes it as it is.
type raw struct{ b []byte }

// rawCodec is the proto codec, except that a *raw is sent without encoding.
type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*raw); ok {
		return mem.BufferSlice{mem.SliceBuffer(r.b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// Resource is one named resource of a type, already packed.
type Resource struct {
	Name     string
	Resource *anypb.Any
}

// state is everything a push changes; streams read it whole.
type state struct {
	version string
	sotw    [fleetsim.NumTypes]*raw
	delta   [fleetsim.NumTypes]*raw
	changed chan struct{} // closed by the next push
}

// Server is the floor ADS server.
type Server struct {
	gs   *grpc.Server
	lis  net.Listener
	cur  atomic.Pointer[state]
	mu   sync.Mutex // serialises pushes
	acks atomic.Int64
	cur1 atomic.Int64 // ACKs of the current version's push
	open atomic.Int64
}

// New returns a server holding the initial resources of every type at
// version; Serve starts it.
func New(version string, initial [fleetsim.NumTypes][]Resource, opts ...grpc.ServerOption) (*Server, error) {
	s := &Server{}
	st := &state{version: version, changed: make(chan struct{})}
	for t := range fleetsim.NumTypes {
		var err error
		if st.sotw[t], st.delta[t], err = encode(t, version, initial[t]); err != nil {
			return nil, err
		}
	}
	s.cur.Store(st)
	base := []grpc.ServerOption{
		grpc.ForceServerCodecV2(rawCodec{encoding.GetCodecV2("proto")}),
		grpc.MaxConcurrentStreams(1 << 20),
		// The transport settings of xds.NewGRPCServer (fixed windows, no
		// BDP PINGs), so the floor stays a floor for shiftplane's server.
		grpc.InitialWindowSize(xds.StreamWindow),
		grpc.InitialConnWindowSize(xds.ConnWindow),
	}
	s.gs = grpc.NewServer(append(base, opts...)...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.gs, (*ads)(s))
	return s, nil
}

// encode builds and marshals the SotW and delta responses of one type.
// The nonce is the version: one message serves every stream.
func encode(t fleetsim.Type, version string, rs []Resource) (*raw, *raw, error) {
	rs = append([]Resource(nil), rs...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].Name < rs[j].Name })
	sotw := &discoveryv3.DiscoveryResponse{VersionInfo: version, TypeUrl: t.URL(), Nonce: version}
	delta := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: version, TypeUrl: t.URL(), Nonce: version}
	for _, r := range rs {
		sotw.Resources = append(sotw.Resources, r.Resource)
		// Per-resource versions are content hashes, as go-control-plane's.
		delta.Resources = append(delta.Resources, &discoveryv3.Resource{Name: r.Name, Version: cachev3.HashResource(r.Resource.GetValue()), Resource: r.Resource})
	}
	sb, err := proto.Marshal(sotw)
	if err != nil {
		return nil, nil, fmt.Errorf("floor: marshal %s: %w", t, err)
	}
	db, err := proto.Marshal(delta)
	if err != nil {
		return nil, nil, fmt.Errorf("floor: marshal delta %s: %w", t, err)
	}
	return &raw{sb}, &raw{db}, nil
}

// Serve serves on lis until Stop.
func (s *Server) Serve(lis net.Listener) {
	s.lis = lis
	go func() { _ = s.gs.Serve(lis) }()
}

// Addr is the address Serve listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Stop closes every stream and the listener.
func (s *Server) Stop() { s.gs.Stop() }

// PushRoutes makes routes the RDS content at version and wakes every stream
// to send it. It returns once the response is encoded and the streams are
// woken, not when they have sent it.
func (s *Server) PushRoutes(version string, routes []Resource) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	sotw, delta, err := encode(fleetsim.RDS, version, routes)
	if err != nil {
		return err
	}
	next := *old
	next.version, next.changed = version, make(chan struct{})
	next.sotw[fleetsim.RDS], next.delta[fleetsim.RDS] = sotw, delta
	s.cur1.Store(0)
	s.cur.Store(&next)
	close(old.changed)
	return nil
}

// Acks returns how many ACKs the server has received.
func (s *Server) Acks() int64 { return s.acks.Load() }

// AcksOfLatest returns the latest pushed version and how many ACKs of it
// the server has received.
func (s *Server) AcksOfLatest() (string, int64) {
	return s.cur.Load().version, s.cur1.Load()
}

// Streams returns how many streams are open.
func (s *Server) Streams() int64 { return s.open.Load() }

type ads Server

// request is what the stream loop needs of a SotW or delta request.
type request struct {
	typeURL string
	nonce   string
}

// serve is the per-stream loop shared by both variants: send the current
// response of each type on its first request, count ACKs, and send RDS
// again on every push.
func (a *ads) serve(ctx context.Context, reqs <-chan request, pick func(*state, fleetsim.Type) *raw, send func(*raw) error) error {
	s := (*Server)(a)
	s.open.Add(1)
	defer s.open.Add(-1)
	var subscribed [fleetsim.NumTypes]bool
	st := s.cur.Load()
	sentRDS := ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case req, ok := <-reqs:
			if !ok {
				return nil
			}
			t, ok := fleetsim.TypeOf(req.typeURL)
			if !ok {
				continue
			}
			if req.nonce != "" {
				s.acks.Add(1)
				if req.nonce == s.cur.Load().version {
					s.cur1.Add(1)
				}
				continue
			}
			if subscribed[t] {
				continue
			}
			subscribed[t] = true
			st = s.cur.Load()
			if err := send(pick(st, t)); err != nil {
				return err
			}
			if t == fleetsim.RDS {
				sentRDS = st.version
			}
		case <-st.changed:
			st = s.cur.Load()
			if subscribed[fleetsim.RDS] && st.version != sentRDS {
				if err := send(pick(st, fleetsim.RDS)); err != nil {
					return err
				}
				sentRDS = st.version
			}
		}
	}
}

func (a *ads) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	reqs := make(chan request, 8)
	go func() {
		defer close(reqs)
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- request{req.GetTypeUrl(), req.GetResponseNonce()}:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	return a.serve(stream.Context(), reqs,
		func(st *state, t fleetsim.Type) *raw { return st.sotw[t] },
		func(r *raw) error { return stream.SendMsg(r) })
}

func (a *ads) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	reqs := make(chan request, 8)
	go func() {
		defer close(reqs)
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- request{req.GetTypeUrl(), req.GetResponseNonce()}:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	return a.serve(stream.Context(), reqs,
		func(st *state, t fleetsim.Type) *raw { return st.delta[t] },
		func(r *raw) error { return stream.SendMsg(r) })
}
