package api_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/shiftplane/shiftplane/test/harness"
)

// TestWatchToSuccess runs a rollout to SUCCEEDED through shiftctl against
// a real Envoy: its stats, streamed to shiftplane's sink, are what make the
// signal clear.
func TestWatchToSuccess(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	v1 := harness.StartBackend(t, "v1")
	v2 := harness.StartBackend(t, "v2")
	envoy := harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "api-envoy", XDSAddr: s.XDSAddr})
	listener := harness.FreePort(t)
	path := writePlan(t, plan("checkout", listener, v1.Addr, v2.Addr, "  - weight: 50\n    hold: 1s\n  - weight: 100"))

	out := s.mustCtl("apply", "-f", path)
	if !strings.Contains(out, `rollout "checkout" created`) {
		t.Errorf("apply printed %q", out)
	}
	r := s.ctl(nil, "watch", "checkout")
	if r.Code != 0 {
		t.Fatalf("watch: %s", r)
	}
	// watch starts after apply returns: the rollout may have moved already,
	// but the drain after promotion (DrainQuiet 2s) is still ahead of it.
	for _, want := range []string{"event  PROMOTING → SUCCEEDED", "status SUCCEEDED  weight 100%  step 2/2  signal -"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("watch output lacks %q:\n%s", want, r.Stdout)
		}
	}
	if strings.Contains(r.Stdout, "\x1b") {
		t.Errorf("terminal codes in watch output to a pipe:\n%q", r.Stdout)
	}

	st := s.get("checkout")
	fleet := st["fleet"].(map[string]any)
	if st["phase"] != "SUCCEEDED" || st["canaryWeight"] != float64(100) || fleet["nodes"] != float64(1) || fleet["converged"] != true {
		t.Errorf("status after success: %v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if w, err := envoy.RouteWeights(ctx); err != nil || w["checkout-v2"] != 100 {
		t.Errorf("Envoy's routes: %v, %v; want all on checkout-v2", w, err)
	}

	out = s.mustCtl("fleet")
	if !strings.Contains(out, "api-envoy") || !strings.Contains(out, " yes ") || strings.Contains(out, "NACK:") {
		t.Errorf("fleet:\n%s", out)
	}
	out = s.mustCtl("history", "checkout")
	if !strings.Contains(out, "PROMOTING    SUCCEEDED") {
		t.Errorf("history:\n%s", out)
	}
	out = s.mustCtl("list")
	if !strings.Contains(out, "NAME      PHASE      WEIGHT  OBSERVED  STEP  SIGNAL  AGE\ncheckout  SUCCEEDED  100%    -         2/2   -") {
		t.Errorf("list:\n%s", out)
	}
}

// TestPauseResume: a paused rollout stays where it is; resume continues it.
// No Envoy: with no stats the signal is stale, so the rollout holds at its
// first weight, which is all this needs.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	// The engine moves only once an Envoy has ACKed: a real one connects.
	harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-web", XDSAddr: s.XDSAddr})
	s.mustCtl("apply", "-f", writePlan(t, plan("web", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 10\n    hold: 1s\n  - weight: 100")))
	s.waitPhase("web", "PROGRESSING", "HOLDING")

	out := s.mustCtl("pause", "web")
	if !strings.Contains(out, `rollout "web" paused (PAUSED, weight 10%, step 1/2)`) {
		t.Errorf("pause printed %q", out)
	}
	time.Sleep(300 * time.Millisecond)
	if st := s.get("web"); st["phase"] != "PAUSED" || st["canaryWeight"] != float64(10) {
		t.Errorf("paused rollout moved: %v", st)
	}
	if r := s.ctl(nil, "resume", "nope"); r.Code != 1 || r.Stderr != "shiftctl: rollout \"nope\" not found\n" {
		t.Errorf("resume of a missing rollout: %s", r)
	}
	out = s.mustCtl("resume", "web")
	if !strings.Contains(out, `rollout "web" resumed (PROGRESSING, weight 10%`) {
		t.Errorf("resume printed %q", out)
	}
	st := s.waitPhase("web", "PROGRESSING", "HOLDING")
	if st["canaryWeight"] != float64(10) {
		t.Errorf("after resume: %v", st)
	}
	if r := s.ctl(nil, "resume", "web"); r.Code != 1 || !strings.Contains(r.Stderr, "not PAUSED") {
		t.Errorf("resume of a running rollout: %s", r)
	}
	hist := s.mustCtl("history", "web")
	for _, want := range []string{"paused on request", "resumed on request"} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
}

// TestAbort: abort sends the rollout to ABORTED; watch exits non-zero;
// the reason is in the history; a finished rollout cannot be promoted; a
// reported FIRING shows in the status.
func TestAbort(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	// The engine moves only once an Envoy has ACKed: a real one connects.
	harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-api", XDSAddr: s.XDSAddr})
	s.mustCtl("apply", "-f", writePlan(t, plan("api", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 10\n    hold: 1s\n  - weight: 100")))
	s.waitPhase("api", "PROGRESSING", "HOLDING")

	out := s.mustCtl("report-signal", "api", "--state", "firing", "--ttl", "1m", "--reason", "p99 alert")
	if !strings.Contains(out, `signal of rollout "api" is now FIRING (reported by shiftctl: p99 alert)`) {
		t.Errorf("report-signal printed %q", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sig := s.get("api")["signal"].(map[string]any)
		if sig["state"] == "FIRING" && strings.Contains(sig["reason"].(string), "p99 alert") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reported FIRING not in the status: %v", sig)
		}
		time.Sleep(100 * time.Millisecond)
	}

	out = s.mustCtl("abort", "api", "--reason", "bad build 42")
	// The reply shows the weight the fleet holds: 0 only once Envoy ACKed it.
	if !strings.Contains(out, `rollout "api" aborting (ROLLING_BACK, weight 0%, `) &&
		!strings.Contains(out, `rollout "api" aborting (ROLLING_BACK, weight 10% (0% sent, not yet ACKed by the fleet), `) {
		t.Errorf("abort printed %q", out)
	}
	r := s.ctl(nil, "watch", "api")
	if r.Code != 2 || !strings.Contains(r.Stderr, `shiftctl: rollout "api" ended ABORTED`) {
		t.Errorf("watch of an aborted rollout: %s", r)
	}
	if st := s.get("api"); st["phase"] != "ABORTED" || st["canaryWeight"] != float64(0) {
		t.Errorf("after abort: %v", st)
	}
	if h := s.mustCtl("history", "api"); !strings.Contains(h, "aborted on request (bad build 42); weight 0") {
		t.Errorf("history lacks the abort reason:\n%s", h)
	}
	r = s.ctl(nil, "promote", "api")
	if r.Code != 1 || r.Stderr != "shiftctl: rollout \"api\" is ABORTED; only a progressing, holding or paused rollout can be promoted\n" {
		t.Errorf("promote of an aborted rollout: %s", r)
	}
	// Delete says what it does, and needs --force while the routes carry traffic.
	r = s.ctl(nil, "delete", "api")
	if r.Code != 1 || !strings.Contains(r.Stdout, `removes virtual host "api"`) || !strings.Contains(r.Stderr, "use --force") {
		t.Errorf("delete without --force: %s", r)
	}
	if out := s.mustCtl("delete", "api", "--dry-run"); !strings.Contains(out, `delete "api": removes virtual host "api"`) || strings.Contains(out, "deleted") {
		t.Errorf("delete --dry-run printed %q", out)
	}
	if out := s.mustCtl("delete", "api", "--force"); !strings.HasSuffix(out, "rollout \"api\" deleted\n") {
		t.Errorf("delete --force printed %q", out)
	}
	if r := s.ctl(nil, "get", "api"); r.Code != 1 || r.Stderr != "shiftctl: rollout \"api\" not found\n" {
		t.Errorf("get after delete: %s", r)
	}
}

// TestPromoteAtManualGate: a rollout waits at a pause step until promoted,
// then finishes; watch exits 0.
func TestPromoteAtManualGate(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	// The engine moves only once an Envoy has ACKed: a real one connects.
	harness.StartEnvoy(t, harness.EnvoyOptions{NodeID: "envoy-gate", XDSAddr: s.XDSAddr})
	s.mustCtl("apply", "-f", writePlan(t, plan("gate", harness.FreePort(t), "127.0.0.1:8081", "127.0.0.1:8082", "  - pause: {}\n  - weight: 100")))
	st := s.waitPhase("gate", "PAUSED")
	if st["stepIndex"] != float64(0) || st["canaryWeight"] != float64(0) {
		t.Errorf("at the gate: %v", st)
	}
	time.Sleep(300 * time.Millisecond)
	if st := s.get("gate"); st["phase"] != "PAUSED" {
		t.Fatalf("left the gate on its own: %v", st)
	}
	out := s.mustCtl("promote", "gate")
	if !strings.Contains(out, `rollout "gate" promoted (PROMOTING, weight 100%, step 2/2)`) &&
		!strings.Contains(out, `rollout "gate" promoted (PROMOTING, weight 0% (100% sent, not yet ACKed by the fleet), step 2/2)`) {
		t.Errorf("promote printed %q", out)
	}
	if r := s.ctl(nil, "watch", "gate"); r.Code != 0 || !strings.Contains(r.Stdout, "SUCCEEDED") {
		t.Errorf("watch after promote: %s", r)
	}
}

// TestGetMissing: a missing rollout is a one-line "not found" and exit 1.
func TestGetMissing(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, args := range [][]string{{"get", "nope"}, {"get", "nope", "-o", "json"}, {"history", "nope"}, {"watch", "nope"}, {"delete", "nope"}} {
		r := s.ctl(nil, args...)
		if r.Code != 1 || r.Stderr != "shiftctl: rollout \"nope\" not found\n" || r.Stdout != "" {
			t.Errorf("shiftctl %s: %s", strings.Join(args, " "), r)
		}
	}
	if r := s.ctl(nil, "get", "No_Such"); r.Code != 1 || r.Stderr != "shiftctl: name: must match [a-z0-9-]{1,63}, got \"No_Such\"\n" {
		t.Errorf("get of an invalid name: %s", r)
	}
}

// TestApplyBadPlan: every document of a file is applied; a bad one is
// refused with its field named and changes nothing.
func TestApplyBadPlan(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	good := plan("good", 10000, "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 100")
	bad := plan("bad", 10001, "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 10\n  - weight: 120")
	r := s.ctl(nil, "apply", "-f", writePlan(t, "# two plans\n---\n"+good+"---\n"+bad))
	if r.Code != 1 {
		t.Fatalf("apply with a bad document: %s", r)
	}
	if !strings.Contains(r.Stderr, `(document 2): invalid plan "bad": steps[1].weight: must be within 0..100, got 120`) {
		t.Errorf("stderr does not name the field:\n%s", r.Stderr)
	}
	if !strings.Contains(r.Stdout, `rollout "good" created`) {
		t.Errorf("the good document was not applied:\n%s", r)
	}
	list := s.mustCtl("list")
	if !strings.Contains(list, "good") || strings.Contains(list, "bad") {
		t.Errorf("list:\n%s", list)
	}
	// Reapplying changes nothing and says so, as kubectl apply does.
	if out := s.mustCtl("apply", "-f", writePlan(t, good)); !strings.Contains(out, `rollout "good" unchanged`) {
		t.Errorf("re-apply printed %q", out)
	}
}

// TestToken: with api.token set, a call without the right token is
// UNAUTHENTICATED and changes nothing; the token never reaches the log;
// health and reflection stay open.
func TestToken(t *testing.T) {
	t.Parallel()
	const token = "tok-3f9a1c-secret"
	s := startServer(t, "--api-token", token)
	path := writePlan(t, plan("web", 10000, "127.0.0.1:8081", "127.0.0.1:8082", "  - weight: 100"))

	for name, r := range map[string]result{
		"no token":    s.ctl(nil, "apply", "-f", path),
		"wrong token": s.ctl(nil, "--token", "tok-wrong", "apply", "-f", path),
		"wrong env":   s.ctl([]string{"SHIFTCTL_TOKEN=tok-wrong"}, "apply", "-f", path),
	} {
		if r.Code != 1 || !strings.Contains(r.Stderr, "unauthenticated: missing or invalid bearer token") {
			t.Errorf("%s: %s", name, r)
		}
	}
	if out := s.mustCtl("--token", token, "list"); strings.TrimSpace(out) != "NAME  PHASE  WEIGHT  OBSERVED  STEP  SIGNAL  AGE" {
		t.Errorf("refused applies created something:\n%s", out)
	}
	if r := s.ctl([]string{"SHIFTCTL_TOKEN=" + token}, "apply", "-f", path); r.Code != 0 {
		t.Fatalf("apply with the token from the environment: %s", r)
	}
	if r := s.ctl(nil, "--token", "tok-wrong", "delete", "web"); r.Code != 1 || !strings.Contains(r.Stderr, "unauthenticated") {
		t.Errorf("delete with a wrong token: %s", r)
	}
	if r := s.ctl(nil, "watch", "web"); r.Code != 1 || !strings.Contains(r.Stderr, "unauthenticated") {
		t.Errorf("watch without a token: %s", r)
	}
	if r := s.ctl(nil, "--token", token, "get", "web"); r.Code != 0 {
		t.Errorf("the rollout is gone after a refused delete: %s", r)
	}

	conn, err := grpc.NewClient(s.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "shiftplane.v1.RolloutService"})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check without a token: %v %v", hr, err)
	}
	if got := listServices(ctx, t, conn); !slices.Contains(got, "shiftplane.v1.RolloutService") {
		t.Errorf("reflection without a token: %v", got)
	}

	if log := s.Proc.Output(); strings.Contains(log, token) || strings.Contains(log, "tok-wrong") {
		t.Errorf("a token appears in the server log:\n%s", log)
	}
	if log := s.Proc.Output(); !strings.Contains(log, "policy API call refused") {
		t.Errorf("refused calls are not logged:\n%s", log)
	}
}

// TestTokenFile: api.tokenFile works like api.token.
func TestTokenFile(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "--api-token-file", file)
	if r := s.ctl(nil, "list"); r.Code != 1 || !strings.Contains(r.Stderr, "unauthenticated") {
		t.Errorf("list without a token: %s", r)
	}
	s.mustCtl("--token", "from-a-file", "list")
}

// TestReflection lists the services with grpc-go's reflection client, as
// grpcurl would.
func TestReflection(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	conn, err := grpc.NewClient(s.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := listServices(ctx, t, conn)
	for _, want := range []string{"shiftplane.v1.RolloutService", "shiftplane.v1.FleetService", "grpc.health.v1.Health"} {
		if !slices.Contains(got, want) {
			t.Errorf("reflection lists %v, missing %s", got, want)
		}
	}
	// The descriptors are served too, so a client can build requests.
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "shiftplane.v1.RolloutService"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file containing RolloutService: %v %v", resp, err)
	}
}

func listServices(ctx context.Context, t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names
}
