package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Identity is who a stream's client certificate says it is: the SANs of a
// certificate that chained to xds.tls.clientCA. The zero Identity means the
// stream is not authenticated (no TLS, or TLS without a client CA).
type Identity struct {
	DNS  []string // DNS SANs
	URIs []string // URI SANs, e.g. spiffe://fleet.example/envoy/edge-1
}

// Authenticated reports whether a verified certificate named the stream.
func (id Identity) Authenticated() bool { return len(id.DNS) > 0 || len(id.URIs) > 0 }

// Allows reports whether the certificate may speak for nodeID: nodeID is
// one of its DNS SANs, one of its URI SANs, or the last path segment of a
// URI SAN (spiffe://fleet.example/envoy/edge-1 allows node "edge-1"). An
// unauthenticated identity allows every node (xds.insecure).
func (id Identity) Allows(nodeID string) bool {
	if !id.Authenticated() {
		return true
	}
	if nodeID == "" {
		return false
	}
	if slices.Contains(id.DNS, nodeID) || slices.Contains(id.URIs, nodeID) {
		return true
	}
	for _, u := range id.URIs {
		if i := strings.LastIndexByte(u, '/'); i >= 0 && u[i+1:] == nodeID && !strings.HasSuffix(u, "//"+nodeID) {
			return true
		}
	}
	return false
}

// Key is a stable string for the identity, to compare two streams'.
func (id Identity) Key() string {
	return strings.Join(id.DNS, ",") + "|" + strings.Join(id.URIs, ",")
}

func (id Identity) String() string {
	if !id.Authenticated() {
		return "(unauthenticated)"
	}
	return strings.Join(append(slices.Clone(id.URIs), id.DNS...), ",")
}

// PeerIdentity returns the identity of the stream whose context is ctx:
// the SANs of its verified client certificate, or the zero Identity.
func PeerIdentity(ctx context.Context) Identity {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}
	}
	leaf := info.State.VerifiedChains[0][0]
	id := Identity{DNS: slices.Clone(leaf.DNSNames)}
	for _, u := range leaf.URIs {
		id.URIs = append(id.URIs, u.String())
	}
	return id
}

// errNodeNotAllowed is the status a stream gets when its node id is not
// one its certificate names.
func errNodeNotAllowed(id Identity, node string) error {
	return status.Errorf(codes.PermissionDenied, "node.id %q is not allowed by the client certificate (%s)", node, id)
}

// TLSFiles are the PEM files of xds.tls.
type TLSFiles struct {
	Cert, Key string // server certificate and key
	ClientCA  string // CA client certificates must chain to ("": no mTLS)
}

// ServerTLS returns a TLS config for the xDS port that re-reads the files
// when their modification time changes (checked at most once a second, on
// a handshake). With ClientCA set, a client must present a certificate
// that chains to it. A broken file at reload keeps the last good one and is
// reported through onErr.
func ServerTLS(files TLSFiles, onErr func(error)) (*tls.Config, error) {
	r := &tlsReloader{files: files, onErr: onErr}
	if err := r.load(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.config(), nil
		},
	}, nil
}

type tlsReloader struct {
	files TLSFiles
	onErr func(error)

	mu      sync.Mutex
	cfg     *tls.Config
	mtimes  [3]time.Time
	checked time.Time
}

func (r *tlsReloader) stamp() [3]time.Time {
	var out [3]time.Time
	for i, p := range []string{r.files.Cert, r.files.Key, r.files.ClientCA} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			out[i] = st.ModTime()
		}
	}
	return out
}

func (r *tlsReloader) load() error {
	stamp := r.stamp()
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return fmt.Errorf("xds.tls.cert/xds.tls.key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	if r.files.ClientCA != "" {
		pem, err := os.ReadFile(r.files.ClientCA)
		if err != nil {
			return fmt.Errorf("xds.tls.clientCA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("xds.tls.clientCA: %s: no PEM certificate found", r.files.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	r.mu.Lock()
	r.cfg, r.mtimes = cfg, stamp
	r.mu.Unlock()
	return nil
}

func (r *tlsReloader) config() *tls.Config {
	r.mu.Lock()
	due := time.Since(r.checked) >= time.Second
	if due {
		r.checked = time.Now()
	}
	cfg, old := r.cfg, r.mtimes
	r.mu.Unlock()
	if due && r.stamp() != old {
		if err := r.load(); err != nil {
			if r.onErr != nil {
				r.onErr(err)
			}
		} else {
			r.mu.Lock()
			cfg = r.cfg
			r.mu.Unlock()
		}
	}
	return cfg
}
