package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shiftplane/shiftplane/test/harness"
	"github.com/shiftplane/shiftplane/xds"
)

func serverCN(t *testing.T, addr string, ca string) string {
	t.Helper()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// Replacing the certificate files changes what new handshakes get,
// without a restart; a broken file keeps the last good one.
func TestServerTLSReloadsFiles(t *testing.T) {
	ca := harness.NewCA(t, "fleet")
	first := ca.Issue(t, "first", "127.0.0.1")
	second := ca.Issue(t, "second", "127.0.0.1")
	dir := t.TempDir()
	certPath, keyPath := dir+"/server.crt", dir+"/server.key"
	cp := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cp(first.Cert, certPath)
	cp(first.Key, keyPath)
	var mu sync.Mutex
	var reloadErrs []error
	cfg, err := xds.ServerTLS(xds.TLSFiles{Cert: certPath, Key: keyPath}, func(err error) { mu.Lock(); reloadErrs = append(reloadErrs, err); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	if cn := serverCN(t, lis.Addr().String(), ca.CertPath); cn != "first" {
		t.Fatalf("served %q, want first", cn)
	}
	// A new modification time, at least a second after the last check.
	time.Sleep(1100 * time.Millisecond)
	cp(second.Cert, certPath)
	cp(second.Key, keyPath)
	future := time.Now().Add(2 * time.Second)
	_ = os.Chtimes(certPath, future, future)
	if cn := serverCN(t, lis.Addr().String(), ca.CertPath); cn != "second" {
		t.Fatalf("after replacing the files served %q, want second", cn)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(certPath, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cn := serverCN(t, lis.Addr().String(), ca.CertPath); cn != "second" {
		t.Fatalf("after a broken file served %q, want the last good (second)", cn)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reloadErrs) == 0 {
		t.Fatal("a broken certificate file was not reported")
	}
}

// A flood of CDS-only streams that never ACK, from one address over many
// connections: at most MaxStreamsPerSource are held, the rest refused.
// Heap growth is logged (client and server share the process).
func TestStreamFloodFromOneSourceBounded(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	l := xds.DefaultLimits
	fleet := xds.NewFleet(log, xds.NewMetrics(nil), time.Now)
	gs := xds.NewGRPCServer(xds.ServerOptions(nil, l, nil)...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	xds.Register(ctx, gs, xds.NewCache(), fleet, log)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	const conns, perConn = 125, 16 // 2,000 streams
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused, held := 0, 0
	for c := 0; c < conns; c++ {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		client := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
		for s := 0; s < perConn; s++ {
			wg.Go(func() {
				sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
				defer scancel()
				st, err := client.StreamAggregatedResources(sctx)
				if err == nil {
					err = st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "flood"}, TypeUrl: resourcev3.ClusterType})
				}
				if err == nil {
					_, err = st.Recv()
				}
				mu.Lock()
				defer mu.Unlock()
				switch status.Code(err) {
				case codes.ResourceExhausted:
					refused++
				case codes.DeadlineExceeded:
					held++
				default:
					t.Errorf("stream ended with %v", err)
				}
			})
		}
	}
	// While they are held: the fleet tracks at most the cap.
	time.Sleep(2 * time.Second)
	n := len(fleet.Nodes())
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	wg.Wait()
	t.Logf("%d streams: %d held, %d refused; fleet tracked %d; heap in use %d → %d KiB (client and server)",
		conns*perConn, held, refused, n, before.HeapInuse>>10, during.HeapInuse>>10)
	if held != l.MaxStreamsPerSource || refused != conns*perConn-l.MaxStreamsPerSource {
		t.Fatalf("held %d, refused %d; want %d held", held, refused, l.MaxStreamsPerSource)
	}
	if n > l.MaxStreamsPerSource {
		t.Fatalf("fleet tracked %d streams, more than the cap %d", n, l.MaxStreamsPerSource)
	}
}
