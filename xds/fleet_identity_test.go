package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// A stream whose certificate names edge-1 may speak for edge-1 on every
// request (the node go-control-plane kept, or a new Node message with the
// same id), and is refused the moment a request names another node, even
// after requests that were allowed.
func TestFleetRefusesNodeSwitchMidStream(t *testing.T) {
	leaf := &x509.Certificate{DNSNames: []string{"edge-1"}}
	ctx := peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}},
	})
	f := NewFleet(slog.New(slog.DiscardHandler), nil, time.Now)
	if err := f.OnStreamOpen(ctx, 1, ""); err != nil {
		t.Fatal(err)
	}
	kept := &corev3.Node{Id: "edge-1"}
	req := func(n *corev3.Node) error {
		return f.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.RouteType})
	}
	for i, n := range []*corev3.Node{kept, kept, {Id: "edge-1"}} {
		if err := req(n); err != nil {
			t.Fatalf("request %d as edge-1: %v", i, err)
		}
	}
	if err := req(&corev3.Node{Id: "edge-2"}); err == nil {
		t.Fatal("a request naming edge-2 on edge-1's certificate was accepted")
	}
}
