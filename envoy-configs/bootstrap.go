// Package envoyconfigs renders the Envoy bootstrap that connects an Envoy
// to shiftplane (bootstrap.yaml.tmpl, embedded), for the demo, the e2e
// harness and users who need one bootstrap per Envoy instance.
package envoyconfigs

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"text/template"
)

//go:embed bootstrap.yaml.tmpl
var bootstrapTemplate string

// Defaults of the rendered envoy.yaml.
const (
	DefaultNodeID     = "envoy-1"
	DefaultCluster    = "shiftplane-fleet"
	DefaultAdminPort  = 9901
	DefaultXDSAddress = "127.0.0.1:18000"
)

// ErrInvalid is wrapped by every error Render returns for a bad value.
var ErrInvalid = errors.New("invalid bootstrap value")

// Bootstrap holds the per-instance values of the bootstrap template.
type Bootstrap struct {
	NodeID     string // node.id, unique per Envoy
	Cluster    string // node.cluster, the fleet
	AdminPort  int    // 0..65535 on 127.0.0.1; 0 = kernel picks
	XDSAddress string // "IP:port" of shiftplane's ADS server
	// XDSAddresses, if set, lists every replica of an HA shiftplane
	// (store.backend: etcd) instead of XDSAddress: the xds_cluster gets one
	// host per replica and Envoy reconnects to another when one goes away.
	XDSAddresses []string
	UseDelta     bool // DELTA_GRPC instead of GRPC
	// TLS, if set, makes Envoy connect to the xDS port (ADS and the stats
	// sink) over mTLS.
	TLS *TLS
}

// TLS are the files of the xds_cluster's mTLS transport socket, as Envoy
// reads them (absolute paths on the Envoy's host).
type TLS struct {
	Cert string // the Envoy's client certificate; its SAN names node.id
	Key  string // its private key
	CA   string // CA the shiftplane server certificate chains to
	SNI  string // server name sent (optional)
}

// Default returns the values envoy.yaml is rendered with.
func Default() Bootstrap {
	return Bootstrap{
		NodeID:     DefaultNodeID,
		Cluster:    DefaultCluster,
		AdminPort:  DefaultAdminPort,
		XDSAddress: DefaultXDSAddress,
	}
}

// Template returns the raw template text.
func Template() string { return bootstrapTemplate }

var tmpl = template.Must(template.New("bootstrap.yaml.tmpl").
	Funcs(template.FuncMap{"json": jsonString}).
	Option("missingkey=error").
	Parse(bootstrapTemplate))

// Render validates b and returns the bootstrap YAML. An empty XDSAddress
// means DefaultXDSAddress.
func (b Bootstrap) Render() ([]byte, error) {
	data, err := b.templateData()
	if err != nil {
		return nil, err
	}
	var sb strings.Builder
	if err := tmpl.Execute(&sb, data); err != nil {
		return nil, fmt.Errorf("render bootstrap: %w", err)
	}
	return []byte(sb.String()), nil
}

type templateData struct {
	Bootstrap
	XDSHosts []hostPort
}

type hostPort struct {
	Host string
	Port int
}

func (b Bootstrap) templateData() (templateData, error) {
	if err := checkName("nodeID", b.NodeID); err != nil {
		return templateData{}, err
	}
	if err := checkName("cluster", b.Cluster); err != nil {
		return templateData{}, err
	}
	if b.TLS != nil {
		for _, f := range []struct{ field, v string }{{"tls.cert", b.TLS.Cert}, {"tls.key", b.TLS.Key}, {"tls.ca", b.TLS.CA}} {
			if err := checkName(f.field, f.v); err != nil {
				return templateData{}, err
			}
		}
		if b.TLS.SNI != "" {
			if err := checkName("tls.sni", b.TLS.SNI); err != nil {
				return templateData{}, err
			}
		}
	}
	if b.AdminPort < 0 || b.AdminPort > 65535 {
		return templateData{}, fmt.Errorf("%w: adminPort: must be 0..65535, got %d", ErrInvalid, b.AdminPort)
	}
	if len(b.XDSAddresses) > 0 {
		d := templateData{Bootstrap: b}
		seen := map[string]bool{}
		for i, a := range b.XDSAddresses {
			hp, err := parseXDSAddress(fmt.Sprintf("xdsAddresses[%d]", i), a)
			if err != nil {
				return templateData{}, err
			}
			if seen[a] {
				return templateData{}, fmt.Errorf("%w: xdsAddresses[%d]: %q is listed twice", ErrInvalid, i, a)
			}
			seen[a] = true
			d.XDSHosts = append(d.XDSHosts, hp)
		}
		return d, nil
	}
	addr := b.XDSAddress
	if addr == "" {
		addr = DefaultXDSAddress
	}
	hp, err := parseXDSAddress("xdsAddress", addr)
	if err != nil {
		return templateData{}, err
	}
	return templateData{Bootstrap: b, XDSHosts: []hostPort{hp}}, nil
}

func parseXDSAddress(field, addr string) (hostPort, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return hostPort{}, fmt.Errorf("%w: %s: %q: %v", ErrInvalid, field, addr, err)
	}
	// xds_cluster is STATIC, and Envoy rejects a hostname there at load time.
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return hostPort{}, fmt.Errorf("%w: %s: %q: host must be an IP literal (the xds_cluster is STATIC, no DNS)", ErrInvalid, field, addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return hostPort{}, fmt.Errorf("%w: %s: %q: port must be 1..65535", ErrInvalid, field, addr)
	}
	return hostPort{Host: ip.String(), Port: port}, nil
}

func checkName(field, v string) error {
	if v == "" {
		return fmt.Errorf("%w: %s: must not be empty", ErrInvalid, field)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s: %q: control characters are not allowed", ErrInvalid, field, v)
		}
	}
	return nil
}

// jsonString quotes s as a JSON string, which is also a valid YAML scalar.
func jsonString(s string) (string, error) {
	out, err := json.Marshal(s)
	return string(out), err
}
