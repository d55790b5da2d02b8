package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/shiftplane/shiftplane/policy/api"
)

// leaderHeader names the replica that served a policy API call (shiftctl
// prints it).
const leaderHeader = "shiftplane-leader"

// forwarder passes every policy API call, unary or streaming, to the
// leader's API: the in-process one when this replica leads, the leader's
// advertised address otherwise. Messages cross as raw bytes (an Empty with
// every field unknown keeps them verbatim), so it needs no knowledge of the
// services. Authentication happens before it (the public server's
// interceptors) and again at a remote leader, which gets the caller's
// metadata.
type forwarder struct {
	// local is the in-process API of this replica's term (nil when it
	// does not lead); self is this replica's ID; lead returns the leader's.
	local func() *grpc.ClientConn
	self  string
	lead  func() string
	dial  []grpc.DialOption

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newForwarder(cfg Config, self string, lead func() string, local func() *grpc.ClientConn) (*forwarder, error) {
	creds := insecure.NewCredentials()
	if cfg.API.TLS.Cert != "" {
		// A replica calls the leader with its own serving certificate, so
		// under mTLS it must chain to api.tls.clientCA like any client.
		cert, err := tls.LoadX509KeyPair(cfg.API.TLS.Cert, cfg.API.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("api.tls.cert/key: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if cfg.API.TLS.ClientCA != "" {
			pem, err := os.ReadFile(cfg.API.TLS.ClientCA)
			if err != nil {
				return nil, fmt.Errorf("api.tls.clientCA: %w", err)
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			tc.RootCAs = pool
		}
		creds = credentials.NewTLS(tc)
	}
	return &forwarder{local: local, self: self, lead: lead, dial: []grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(api.MaxMessageBytes), grpc.MaxCallSendMsgSize(api.MaxMessageBytes))}, conns: map[string]*grpc.ClientConn{}}, nil
}

// forwardedHeader marks a call one replica forwarded to another, so that
// two replicas with stale views of the leader never pass a call back and
// forth: a forwarded call is answered here or not at all.
const forwardedHeader = "shiftplane-forwarded"

// forwardWait bounds how long a call waits for a leader (an election, or a
// new leader starting its engine) before it fails with UNAVAILABLE.
const forwardWait = 10 * time.Second

// maxHops bounds how many replicas a call passes before the leader.
const maxHops = 2

// conn returns where to send a call, waiting (bounded by ctx and
// forwardWait) while there is no leader or it is still starting.
func (f *forwarder) conn(ctx context.Context, visited []string) (*grpc.ClientConn, string, error) {
	deadline := time.Now().Add(forwardWait)
	for {
		c, id, err := f.try(visited)
		if err == nil || time.Now().After(deadline) {
			return c, id, err
		}
		select {
		case <-ctx.Done():
			return nil, id, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// try picks the leader this replica sees. visited are the replicas a
// forwarded call already passed: replicas can disagree for a moment after
// an election (or a lost quorum), so a call may take one more hop to the
// leader this replica sees, but never back to one it came through.
func (f *forwarder) try(visited []string) (*grpc.ClientConn, string, error) {
	if c := f.local(); c != nil {
		return c, f.self, nil
	}
	id := f.lead()
	switch {
	case id == "":
		return nil, "", status.Error(codes.Unavailable, "no shiftplane leader elected yet; retry")
	case id == f.self:
		return nil, id, status.Error(codes.Unavailable, "this replica was elected leader and is starting its engine; retry")
	case slices.Contains(visited, id) || len(visited) >= maxHops:
		return nil, id, status.Errorf(codes.Unavailable, "forwarded here through %v, but this replica does not lead (it sees %s leading); retry", visited, id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[id]; ok {
		return c, id, nil
	}
	c, err := grpc.NewClient(id, f.dial...)
	if err != nil {
		return nil, id, status.Errorf(codes.Unavailable, "leader %s: %v", id, err)
	}
	f.conns[id] = c
	return c, id, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, c := range f.conns {
		c.Close()
		delete(f.conns, id)
	}
}

var errNoMethod = status.Error(codes.Internal, "forward: no method in the stream")

// handle is the public server's UnknownServiceHandler.
func (f *forwarder) handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return errNoMethod
	}
	md, _ := metadata.FromIncomingContext(ss.Context())
	conn, leaderID, err := f.conn(ss.Context(), md.Get(forwardedHeader))
	if err != nil {
		return err
	}
	out := md.Copy()
	out.Append(forwardedHeader, f.self)
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ss.Context(), out))
	defer cancel()
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	// Caller → leader.
	go func() {
		for {
			m := &emptypb.Empty{}
			if err := ss.RecvMsg(m); err != nil {
				if errors.Is(err, io.EOF) {
					_ = cs.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := cs.SendMsg(m); err != nil {
				return // the leader side ends the call; its status is read below
			}
		}
	}()
	// Leader → caller.
	first := true
	for {
		m := &emptypb.Empty{}
		err := cs.RecvMsg(m)
		if first {
			first = false
			h, _ := cs.Header()
			h = metadata.Join(h)
			h.Set(leaderHeader, leaderID)
			if herr := ss.SendHeader(h); herr != nil {
				return herr
			}
		}
		if errors.Is(err, io.EOF) {
			ss.SetTrailer(cs.Trailer())
			return nil
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			return err
		}
		if err := ss.SendMsg(m); err != nil {
			return err
		}
	}
}
