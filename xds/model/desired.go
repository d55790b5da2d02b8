// Package model is the plain-Go contract between policy and xds: the
// desired state policy asks the fleet to run, and the facts the fleet
// reports back (convergence, stats). Desired state: the services
// the engine wants served, each with its two backends and the canary's
// share of traffic. It sits between package policy, which decides it, and
// package xds, which translates it into Envoy resources; it holds no
// policy and no Envoy types. Validate checks what translation relies on.
package model

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// State is what the fleet should run.
type State struct {
	Services []Service `yaml:"services" json:"services"`
}

// Service is one rollout's wanted traffic split.
type Service struct {
	Name     string   `yaml:"name" json:"name"`
	Listener Listener `yaml:"listener" json:"listener"`
	Stable   Backend  `yaml:"stable" json:"stable"`
	Canary   Backend  `yaml:"canary" json:"canary"`
	Outlier  Outlier  `yaml:"outlier" json:"outlier"`
	// CanaryWeight is the canary's percentage of traffic, 0..100.
	CanaryWeight int `yaml:"canaryWeight" json:"canaryWeight"`
	// CanaryPublished says the canary cluster exists in CDS. It is published
	// (make before break) before any route sends it traffic.
	CanaryPublished bool `yaml:"canaryPublished" json:"canaryPublished"`
	// StablePublished is false once the stable cluster has drained after
	// promotion and is withdrawn.
	StablePublished bool `yaml:"stablePublished" json:"stablePublished"`
	// Match: requests matching any entry go to the canary, on routes before
	// the weighted one (traffic.go).
	Match []Match `yaml:"match,omitempty" json:"match,omitempty"`
	// Mirror is the percentage of the weighted route's requests copied to
	// the canary (answers discarded); only at CanaryWeight 0.
	Mirror int `yaml:"mirror,omitempty" json:"mirror,omitempty"`
	// Affinity, when set, keeps users who got the canary on it.
	Affinity *Affinity `yaml:"affinity,omitempty" json:"affinity,omitempty"`
}

// Listener is where Envoy accepts the service's traffic.
type Listener struct {
	// Address is host:port; services with equal addresses (after
	// normalisation) share one Envoy listener.
	Address    string   `yaml:"address" json:"address"`
	Domains    []string `yaml:"domains" json:"domains"`
	PathPrefix string   `yaml:"pathPrefix" json:"pathPrefix"`
	// GRPCTargets are the targets proxyless gRPC clients dial
	// (xds:///host:port); each names a client-side listener.
	GRPCTargets []string `yaml:"grpcTargets,omitempty" json:"grpcTargets,omitempty"`
}

// CheckGRPCTarget reports whether t can name a proxyless gRPC target and
// its LDS resource: host[:port], no scheme, path, spaces or wildcards.
func CheckGRPCTarget(t string) error {
	if t == "" {
		return errors.New("must not be empty")
	}
	if strings.ContainsAny(t, "/ \t\n*?#") {
		return fmt.Errorf("%q must be host[:port] as dialled after xds:///, without scheme, path, spaces or wildcards", t)
	}
	if strings.HasPrefix(t, "ingress_") {
		return fmt.Errorf("%q collides with the Envoy listener names (ingress_*)", t)
	}
	return nil
}

// Backend is one version of the service: an Envoy cluster and its hosts.
type Backend struct {
	Cluster   string     `yaml:"cluster" json:"cluster"`
	Endpoints []Endpoint `yaml:"endpoints" json:"endpoints"`
}

// Endpoint is one host of a backend, an IP address and a port.
type Endpoint struct {
	IP   string `yaml:"ip" json:"ip"`
	Port uint32 `yaml:"port" json:"port"`
}

func (e Endpoint) String() string {
	if strings.Contains(e.IP, ":") {
		return fmt.Sprintf("[%s]:%d", e.IP, e.Port)
	}
	return fmt.Sprintf("%s:%d", e.IP, e.Port)
}

// Outlier is Envoy outlier detection on the canary cluster.
type Outlier struct {
	Consecutive5xx     uint32        `yaml:"consecutive5xx" json:"consecutive5xx"`
	Interval           time.Duration `yaml:"interval" json:"interval"`
	BaseEjectionTime   time.Duration `yaml:"baseEjectionTime" json:"baseEjectionTime"`
	MaxEjectionPercent uint32        `yaml:"maxEjectionPercent" json:"maxEjectionPercent"`
}

// ParseEndpoint reads "IP:port".
func ParseEndpoint(s string) (Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%q is not IP:port: %w", s, err)
	}
	if ap.Port() == 0 {
		return Endpoint{}, fmt.Errorf("%q: port 0", s)
	}
	return Endpoint{IP: ap.Addr().Unmap().String(), Port: uint32(ap.Port())}, nil
}

// ListenerKey normalises a listener address, so that [::1]:80 and
// [0:0::1]:80 name one listener. An address that does not parse is its own key.
func ListenerKey(address string) string {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return address
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// ErrInvalid is wrapped by every Validate error.
var ErrInvalid = errors.New("invalid desired state")

// Validate checks what translation relies on: names, weights, addresses,
// unique clusters, and domains unique per listener (Envoy rejects a route
// configuration that repeats one, case-insensitively). Errors name the
// service and the field.
func (s State) Validate() error {
	var errs []error
	bad := func(svc, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: service %q: %s: %s", ErrInvalid, svc, field, fmt.Sprintf(format, args...)))
	}
	names := map[string]bool{}
	clusters := map[string]string{}
	domains := map[string]string{}
	targets := map[string]string{}
	for _, svc := range s.Services {
		n := svc.Name
		if n == "" || strings.ContainsAny(n, ". \t\n") {
			bad(n, "name", "must be non-empty, without dots or spaces")
		}
		if names[n] {
			bad(n, "name", "appears twice")
		}
		names[n] = true
		if svc.CanaryWeight < 0 || svc.CanaryWeight > 100 {
			bad(n, "canaryWeight", "%d outside 0..100", svc.CanaryWeight)
		}
		if !svc.StablePublished && !svc.CanaryPublished {
			bad(n, "stablePublished", "neither stable nor canary is published")
		}
		ap, err := netip.ParseAddrPort(svc.Listener.Address)
		if err != nil || ap.Port() == 0 {
			bad(n, "listener.address", "%q is not IP:port", svc.Listener.Address)
		}
		if len(svc.Listener.Domains) == 0 {
			bad(n, "listener.domains", "empty")
		}
		if !strings.HasPrefix(svc.Listener.PathPrefix, "/") {
			bad(n, "listener.pathPrefix", "%q must start with /", svc.Listener.PathPrefix)
		}
		key := ListenerKey(svc.Listener.Address)
		for i, t := range svc.Listener.GRPCTargets {
			if err := CheckGRPCTarget(t); err != nil {
				bad(n, fmt.Sprintf("listener.grpcTargets[%d]", i), "%v", err)
			}
			if other, ok := targets[strings.ToLower(t)]; ok {
				bad(n, fmt.Sprintf("listener.grpcTargets[%d]", i), "%q is also served by %q", t, other)
			}
			targets[strings.ToLower(t)] = n
			k := key + " " + strings.ToLower(t)
			if other, ok := domains[k]; ok && other != n {
				bad(n, fmt.Sprintf("listener.grpcTargets[%d]", i), "%q on %s is also a domain of %q", t, svc.Listener.Address, other)
			}
		}
		for _, d := range svc.Listener.Domains {
			k := key + " " + strings.ToLower(d)
			if other, ok := domains[k]; ok {
				bad(n, "listener.domains", "%q on %s is also served by %q", d, svc.Listener.Address, other)
			}
			domains[k] = n
		}
		for _, b := range []struct {
			field     string
			be        Backend
			published bool
		}{{"stable", svc.Stable, svc.StablePublished}, {"canary", svc.Canary, svc.CanaryPublished}} {
			if !b.published {
				continue
			}
			if b.be.Cluster == "" || strings.Contains(b.be.Cluster, ".") {
				bad(n, b.field+".cluster", "%q must be non-empty, without dots", b.be.Cluster)
			}
			if other, ok := clusters[b.be.Cluster]; ok {
				bad(n, b.field+".cluster", "%q is also used by %q", b.be.Cluster, other)
			}
			clusters[b.be.Cluster] = n
			if len(b.be.Endpoints) == 0 {
				bad(n, b.field+".endpoints", "empty")
			}
			for i, e := range b.be.Endpoints {
				if _, err := netip.ParseAddr(e.IP); err != nil || e.Port == 0 || e.Port > 65535 {
					bad(n, fmt.Sprintf("%s.endpoints[%d]", b.field, i), "%s is not IP:port", e)
				}
			}
		}
		validateTraffic(svc, func(field, format string, args ...any) { bad(n, field, format, args...) })
		if svc.CanaryPublished {
			o := svc.Outlier
			if o.Interval <= 0 || o.BaseEjectionTime <= 0 || o.MaxEjectionPercent > 100 {
				bad(n, "outlier", "interval and baseEjectionTime must be positive and maxEjectionPercent 0..100, got %+v", o)
			}
		}
	}
	return errors.Join(errs...)
}

// Sorted returns s with its services sorted by name, for deterministic output.
func (s State) Sorted() State {
	out := State{Services: append([]Service(nil), s.Services...)}
	sort.Slice(out.Services, func(i, j int) bool { return out.Services[i].Name < out.Services[j].Name })
	return out
}

// MarshalText writes the endpoint as IP:port.
func (e Endpoint) MarshalText() ([]byte, error) { return []byte(e.String()), nil }

// UnmarshalText reads IP:port.
func (e *Endpoint) UnmarshalText(b []byte) error {
	v, err := ParseEndpoint(string(b))
	if err != nil {
		return err
	}
	*e = v
	return nil
}
