package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	promv1 "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	envoyconfigs "github.com/shiftplane/shiftplane/envoy-configs"
	"github.com/shiftplane/shiftplane/test/harness"
)

// attacker is a client of the xDS port that is not the Envoy it claims to be.
type attacker struct {
	name  string
	creds credentials.TransportCredentials
	// want is the gRPC code every attempt must end with.
	want codes.Code

	mu       sync.Mutex
	attempts int
	codes    map[codes.Code]int
	got      []string // anything served: config it must not see
}

func tlsCreds(t *testing.T, ca string, cert *harness.CertFiles) credentials.TransportCredentials {
	t.Helper()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		c, err := tls.LoadX509KeyPair(cert.Cert, cert.Key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return credentials.NewTLS(cfg)
}

// attack asks for every cluster as node and streams forged stats that say
// the canary's hosts are ejected, once. Each error's code is recorded.
func (a *attacker) attack(addr, node, canary string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(a.creds))
	if err != nil {
		a.record(codes.Unknown, "")
		return
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err == nil {
		err = ads.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node, Cluster: "e2e"}, TypeUrl: resourcev3.ClusterType})
	}
	if err == nil {
		var resp *discoveryv3.DiscoveryResponse
		resp, err = ads.Recv()
		if err == nil {
			a.record(codes.OK, fmt.Sprintf("%d clusters at version %s", len(resp.GetResources()), resp.GetVersionInfo()))
		}
	}
	if err != nil {
		a.record(status.Code(err), "")
	}

	ms, err := metricsv3.NewMetricsServiceClient(cc).StreamMetrics(ctx)
	if err == nil {
		for i := 0; i < 3 && err == nil; i++ {
			err = ms.Send(&metricsv3.StreamMetricsMessage{
				Identifier: &metricsv3.StreamMetricsMessage_Identifier{Node: &corev3.Node{Id: node}},
				EnvoyMetrics: []*promv1.MetricFamily{{
					Name:   proto.String("cluster." + canary + ".outlier_detection.ejections_active"),
					Type:   promv1.MetricType_GAUGE.Enum(),
					Metric: []*promv1.Metric{{Gauge: &promv1.Gauge{Value: proto.Float64(1)}}},
				}},
			})
			time.Sleep(50 * time.Millisecond)
		}
		// A stream the server ended answers Send with io.EOF; its status
		// comes from CloseAndRecv.
		_, err = ms.CloseAndRecv()
	}
	a.record(status.Code(err), "")
}

func (a *attacker) record(c codes.Code, served string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.attempts++
	if a.codes == nil {
		a.codes = map[codes.Code]int{}
	}
	a.codes[c]++
	if served != "" {
		a.got = append(a.got, served)
	}
}

// A rollout over mTLS with a real Envoy completes while three clients try
// to read config and forge "canary ejected" stats, over and over: one with
// no certificate, one with a certificate from another CA, and one with a
// valid fleet certificate for node "intruder" that claims node "edge-1"
// (the real Envoy) or an invented node. None is served config, none of
// their stats is read: the rollout never holds.
func TestMTLSFleetRefusesForgedClients(t *testing.T) {
	fleetCA, otherCA := harness.NewCA(t, "fleet"), harness.NewCA(t, "other")
	server := fleetCA.Issue(t, "shiftplane", "127.0.0.1")
	edge := fleetCA.Issue(t, "edge-1", "spiffe://e2e/envoy/edge-1")
	intruder := fleetCA.Issue(t, "intruder", "spiffe://e2e/envoy/intruder", "intruder")
	foreign := otherCA.Issue(t, "foreign", "spiffe://e2e/envoy/edge-1")

	sp := StartShiftplane(t, "--xds-tls-cert", server.Cert, "--xds-tls-key", server.Key, "--xds-tls-client-ca", fleetCA.CertPath, "--xds-ready-grace", "2s")
	v1, v2 := harness.StartBackend(t, "v1"), harness.StartBackend(t, "v2")
	listen := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	sp.WritePlan("sec.yaml", signalPlan("sec", listen, v1, v2, "5s"))
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "edge-1", Cluster: "e2e", XDSAddr: sp.XDSAddr,
		TLS: &envoyconfigs.TLS{Cert: edge.Cert, Key: edge.Key, CA: fleetCA.CertPath}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.WaitListener(ctx, listen); err != nil {
		t.Fatal(err)
	}

	attackers := []*attacker{
		{name: "no certificate", creds: tlsCreds(t, fleetCA.CertPath, nil), want: codes.Unavailable},
		{name: "another CA", creds: tlsCreds(t, fleetCA.CertPath, &foreign), want: codes.Unavailable},
		{name: "fleet certificate for another node", creds: tlsCreds(t, fleetCA.CertPath, &intruder), want: codes.PermissionDenied},
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, a := range attackers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				node := "edge-1"
				if i%2 == 1 {
					node = fmt.Sprintf("ghost-%d", i)
				}
				a.attack(sp.XDSAddr, node, "sec-v2")
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	var phases sync.Map
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				phases.Store(sp.Phase("sec"), true)
			}
		}
	})

	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	done := make(chan harness.LoadResult, 1)
	go func() {
		res, _ := harness.HTTPLoad(loadCtx, "http://"+listen+"/", harness.LoadOptions{Duration: 40 * time.Second, Rate: 200, Concurrency: 8})
		done <- res
	}()
	start := time.Now()
	sp.WaitPhase("sec", "SUCCEEDED", 40*time.Second)
	took := time.Since(start)
	close(stop)
	wg.Wait()
	stopLoad()
	res := <-done

	for _, p := range []string{"ROLLING_BACK", "ROLLED_BACK"} {
		if _, seen := phases.Load(p); seen {
			t.Errorf("the rollout went %s while the forged clients ran", p)
		}
	}
	// Holds for evidence (minRequests) are expected; one for an ejection
	// would be the forged stats read.
	for _, line := range strings.Split(sp.Proc.Output(), "\n") {
		if strings.Contains(line, "rollout event") && strings.Contains(line, "ejection") {
			t.Errorf("a forged ejection reached the engine: %s", line)
		}
	}
	for _, a := range attackers {
		t.Logf("%s: %d attempts, codes %v", a.name, a.attempts, a.codes)
		if len(a.got) > 0 {
			t.Errorf("%s was served config: %v", a.name, a.got)
		}
		if a.attempts < 10 {
			t.Errorf("%s: only %d attempts; the test needs the attack repeated", a.name, a.attempts)
		}
		for c, n := range a.codes {
			if c != a.want {
				t.Errorf("%s: %d attempts ended with %s, want every one %s", a.name, n, c, a.want)
			}
		}
	}
	refused := sp.Metric(`shiftplane_xds_refused_total{reason="identity"}`)
	t.Logf("SUCCEEDED %s after load started; load %d requests, %d failed; refused for identity: %g", took.Round(100*time.Millisecond), res.Total, res.Failures, refused)
	if refused < 10 {
		t.Errorf("shiftplane_xds_refused_total{reason=identity} = %g, want the intruder's streams counted", refused)
	}
	if res.Failures != 0 {
		t.Errorf("%d requests failed", res.Failures)
	}
}
