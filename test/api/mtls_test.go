package api_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// certFiles is a PEM certificate and key on disk.
type certFiles struct{ cert, key string }

// issuer is a throwaway CA.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate, PEM
}

// serial numbers the certificates; only TestMTLS issues them.
var serial int64

func newCA(t *testing.T, dir, name string) *issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(dir, name+".pem")
	writePEM(t, file, "CERTIFICATE", der)
	return &issuer{cert: cert, key: key, file: file}
}

// issue signs a leaf certificate for 127.0.0.1 usable by servers and clients.
func (ca *issuer) issue(t *testing.T, dir, name string) certFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := certFiles{cert: filepath.Join(dir, name+".pem"), key: filepath.Join(dir, name+".key")}
	writePEM(t, f.cert, "CERTIFICATE", der)
	writePEM(t, f.key, "EC PRIVATE KEY", kder)
	return f
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMTLS: with api.tls.clientCA set, only clients with a certificate from
// that CA get in.
func TestMTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	srv := ca.issue(t, dir, "server")
	client := ca.issue(t, dir, "client")
	stranger := newCA(t, dir, "other-ca").issue(t, dir, "stranger")

	s := startServer(t, "--api-tls-cert", srv.cert, "--api-tls-key", srv.key, "--api-tls-client-ca", ca.file)
	path := writePlan(t, plan("web", 10000, "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 100"))

	// The server ends the handshake; what the client reads then varies.
	for name, args := range map[string][]string{
		"plaintext":              {"apply", "-f", path},
		"no client certificate":  {"--ca", ca.file, "apply", "-f", path},
		"certificate of another": {"--ca", ca.file, "--cert", stranger.cert, "--key", stranger.key, "apply", "-f", path},
	} {
		if r := s.ctl(nil, args...); r.Code != 1 || !strings.Contains(r.Stderr, "shiftctl: apply "+path+": cannot reach shiftplane at "+s.APIAddr) {
			t.Errorf("%s: %s", name, r)
		}
	}
	s.ctlArgs = []string{"--ca", ca.file, "--cert", client.cert, "--key", client.key}
	if out := s.mustCtl("list"); strings.Contains(out, "web") {
		t.Errorf("a refused apply created the rollout:\n%s", out)
	}
	if out := s.mustCtl("apply", "-f", path); !strings.Contains(out, `rollout "web" created`) {
		t.Errorf("apply over mTLS printed %q", out)
	}
}
