package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/shiftplane/shiftplane/policy/etcdstore"
)

// EtcdConfig is store.etcd: where the shared state of several replicas lives.
type EtcdConfig struct {
	Endpoints      []string      `mapstructure:"endpoints"`
	Prefix         string        `mapstructure:"prefix"`
	DialTimeout    time.Duration `mapstructure:"dialTimeout"`
	RequestTimeout time.Duration `mapstructure:"requestTimeout"`
	SessionTTL     time.Duration `mapstructure:"sessionTTL"`
	ReportEvery    time.Duration `mapstructure:"reportEvery"`
	Advertise      string        `mapstructure:"advertise"`
	TLS            struct {
		CA   string `mapstructure:"ca"`
		Cert string `mapstructure:"cert"`
		Key  string `mapstructure:"key"`
	} `mapstructure:"tls"`
}

func (e EtcdConfig) validate() []error {
	var errs []error
	if len(e.Endpoints) == 0 {
		errs = append(errs, errors.New("store.etcd.endpoints: at least one endpoint is needed with store.backend: etcd"))
	}
	for i, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("store.etcd.endpoints[%d]: must be an http:// or https:// URL, got %q", i, ep))
			continue
		}
		if u.Scheme == "https" && e.TLS.CA == "" {
			errs = append(errs, fmt.Errorf("store.etcd.endpoints[%d]: %q is https; set store.etcd.tls.ca", i, ep))
		}
	}
	if !strings.HasPrefix(e.Prefix, "/") {
		errs = append(errs, fmt.Errorf("store.etcd.prefix: must start with /, got %q", e.Prefix))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"store.etcd.dialTimeout", e.DialTimeout}, {"store.etcd.requestTimeout", e.RequestTimeout}, {"store.etcd.reportEvery", e.ReportEvery}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be > 0, got %s", d.key, d.v))
		}
	}
	if e.SessionTTL < time.Second || e.SessionTTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("store.etcd.sessionTTL: must be whole seconds, at least 1s, got %s", e.SessionTTL))
	}
	if e.Advertise != "" {
		if _, port, err := net.SplitHostPort(e.Advertise); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("store.etcd.advertise: must be host:port, got %q", e.Advertise))
		}
	}
	if (e.TLS.Cert == "") != (e.TLS.Key == "") {
		errs = append(errs, errors.New("store.etcd.tls: cert and key must be given together"))
	}
	for _, f := range []struct{ key, path string }{{"store.etcd.tls.ca", e.TLS.CA}, {"store.etcd.tls.cert", e.TLS.Cert}, {"store.etcd.tls.key", e.TLS.Key}} {
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f.key, err))
			}
		}
	}
	return errs
}

func (e EtcdConfig) storeConfig() etcdstore.Config {
	return etcdstore.Config{
		Endpoints: e.Endpoints, Prefix: e.Prefix, DialTimeout: e.DialTimeout, RequestTimeout: e.RequestTimeout,
		CA: e.TLS.CA, Cert: e.TLS.Cert, Key: e.TLS.Key,
	}
}
