package api

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/boltstore"
	"github.com/shiftplane/shiftplane/policy/signal"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/test/fakeclock"
)

// fakePublisher stands in for xds: every publish is a new version.
type fakePublisher struct {
	mu sync.Mutex
	n  int
}

func (p *fakePublisher) Publish(context.Context, policy.DesiredState, string) (policy.PublishResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	v := strconv.Itoa(p.n)
	return policy.PublishResult{ClusterVersion: v, ListenerVersion: v, RouteVersion: v}, nil
}

// convergedFleet is a fleet of one node that ACKs everything at once.
type convergedFleet struct{}

func (convergedFleet) Convergence(policy.ResourceKind, string) policy.Convergence {
	return policy.Convergence{Converged: true, Nodes: 1}
}

type fakeNodes []Node

func (f fakeNodes) Nodes() []Node { return f }

// env is an engine and the API over it, served on an in-memory listener.
type env struct {
	engine *policy.Engine
	gate   *signal.Gate
	clock  *fakeclock.Clock
	client shiftplanev1.RolloutServiceClient
	fleet  shiftplanev1.FleetServiceClient
	svc    *Service
}

func newEnv(t *testing.T, nodes ...Node) *env {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "shiftplane.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	clock := fakeclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	// No stats source: reported signals are the gate's only data.
	gate := signal.NewGate(nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	engine, err := policy.New(ctx, policy.Options{
		Store: store, Publisher: &fakePublisher{}, Fleet: convergedFleet{}, Gate: gate,
		Clock: clock, DrainQuiet: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	svc := New(Options{Engine: engine, Signals: gate, Fleet: fakeNodes(nodes), Now: clock.Now, WatchPoll: 10 * time.Millisecond})

	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	svc.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { svc.Close(); gs.Stop() })
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &env{engine: engine, gate: gate, clock: clock, svc: svc,
		client: shiftplanev1.NewRolloutServiceClient(conn), fleet: shiftplanev1.NewFleetServiceClient(conn)}
}

// tick advances the clock by d and ticks the engine.
func (e *env) tick(t *testing.T, d time.Duration) {
	t.Helper()
	e.clock.Advance(d)
	if err := e.engine.Tick(); err != nil {
		t.Fatal(err)
	}
}

// tickUntil ticks in steps of d until the rollout is in phase want.
func (e *env) tickUntil(t *testing.T, name string, want policy.Phase, d time.Duration) {
	t.Helper()
	for range 200 {
		st, err := e.engine.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.State.Phase == want {
			return
		}
		e.tick(t, d)
	}
	st, _ := e.engine.Get(name)
	t.Fatalf("rollout %q is %s (%s), want %s", name, st.State.Phase, st.State.Reason, want)
}

func (e *env) apply(t *testing.T, p *shiftplanev1.Plan) *shiftplanev1.Rollout {
	t.Helper()
	resp, err := e.client.Apply(context.Background(), &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_Plan{Plan: p}})
	if err != nil {
		t.Fatalf("apply %s: %v", p.GetName(), err)
	}
	return resp.GetRollout()
}

func weightStep(w int32, hold time.Duration) *shiftplanev1.Step {
	s := &shiftplanev1.Step{Kind: &shiftplanev1.Step_Weight{Weight: w}}
	if hold > 0 {
		s.Hold = durationpb.New(hold)
	}
	return s
}

func pauseStep() *shiftplanev1.Step {
	return &shiftplanev1.Step{Kind: &shiftplanev1.Step_Pause{Pause: &shiftplanev1.Pause{}}}
}

// validPlan is a plan the server accepts; n keeps names, clusters and
// listeners apart.
func validPlan(name string, n int) *shiftplanev1.Plan {
	return &shiftplanev1.Plan{
		Name:     name,
		Listener: &shiftplanev1.Listener{Address: "127.0.0.1:" + strconv.Itoa(10000+n)},
		Stable:   &shiftplanev1.Backend{Cluster: name + "-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary:   &shiftplanev1.Backend{Cluster: name + "-v2", Endpoints: []string{"127.0.0.1:8082"}},
		Steps:    []*shiftplanev1.Step{weightStep(10, time.Second), weightStep(100, 0)},
		// Reported signals are the gate's only data here, and they carry no
		// traffic: these plans opt out of the evidence rule.
		Analysis: &shiftplanev1.Analysis{StableFor: durationpb.New(0), RollbackAfter: durationpb.New(0), DrainTimeout: durationpb.New(time.Second), MinRequests: proto.Int32(0)},
	}
}

func withPlan(mutate func(p *shiftplanev1.Plan)) *shiftplanev1.ApplyRequest {
	p := validPlan("web", 1)
	mutate(p)
	return &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_Plan{Plan: p}}
}

func withYAML(y string) *shiftplanev1.ApplyRequest {
	return &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_PlanYaml{PlanYaml: y}}
}

const webYAML = `name: web
listener: {address: 127.0.0.1:10001}
stable: {cluster: web-v1, endpoints: ["127.0.0.1:8081"]}
canary: {cluster: web-v2, endpoints: ["127.0.0.1:8082"]}
`

// TestBadInput sends every user-supplied field a bad value and checks the
// code, the message naming the field, the BadRequest violations, and that
// nothing changed.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	e.apply(t, validPlan("existing", 0))
	// A rollout that rolled back: firing for rollbackAfter.
	rolled := validPlan("rolled", 2)
	rolled.Analysis.RollbackAfter = durationpb.New(time.Second)
	e.apply(t, rolled)
	if err := e.gate.Report("rolled", policy.SignalClear, "", "test", time.Hour, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	e.tickUntil(t, "rolled", policy.PhaseProgressing, 100*time.Millisecond)
	if err := e.gate.Report("rolled", policy.SignalFiring, "errors", "test", time.Hour, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	e.tickUntil(t, "rolled", policy.PhaseRolledBack, 500*time.Millisecond)
	ctx := context.Background()
	c := e.client
	long := strings.Repeat("x", 1025)

	type call func() error
	apply := func(req *shiftplanev1.ApplyRequest) call {
		return func() error { _, err := c.Apply(ctx, req); return err }
	}
	report := func(req *shiftplanev1.ReportSignalRequest) call {
		return func() error { _, err := c.ReportSignal(ctx, req); return err }
	}
	clearReq := func(mutate func(r *shiftplanev1.ReportSignalRequest)) *shiftplanev1.ReportSignalRequest {
		r := &shiftplanev1.ReportSignalRequest{Rollout: "existing", State: shiftplanev1.SignalState_SIGNAL_STATE_CLEAR, Source: "ci"}
		mutate(r)
		return r
	}
	tests := map[string]struct {
		call   call
		code   codes.Code
		want   []string // substrings of the message
		fields []string // BadRequest field violations, in order
		absent string   // must not be in the message
	}{
		"apply weight out of range": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Steps[1] = weightStep(120, 0) })),
			code: codes.InvalidArgument, want: []string{`invalid plan "web": steps[1].weight: must be within 0..100, got 120`},
			fields: []string{"steps[1].weight"},
		},
		"apply every problem in the message": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Name = "Web"
				p.Steps[1] = weightStep(120, 0)
				p.Canary.Cluster = "web.v2"
			})),
			code:   codes.InvalidArgument,
			want:   []string{`name: must match [a-z0-9-]{1,63}, got "Web"`, `canary.cluster: must match [A-Za-z0-9_-]{1,128} (no dots), got "web.v2"`, "steps[1].weight: must be within 0..100, got 120"},
			fields: []string{"name", "canary.cluster", "steps[1].weight"},
		},
		"apply step without weight or pause": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Steps[0] = &shiftplanev1.Step{} })),
			code: codes.InvalidArgument, want: []string{"steps[0]: needs a weight or a pause"}, fields: []string{"steps[0]"},
		},
		"apply pause with a hold": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				s := pauseStep()
				s.Hold = durationpb.New(time.Second)
				p.Steps = []*shiftplanev1.Step{s, weightStep(100, 0)}
			})),
			code: codes.InvalidArgument, want: []string{"steps[0].hold: a pause waits for promote or resume; it takes no hold"}, fields: []string{"steps[0].hold"},
		},
		"apply weights going backwards": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Steps = []*shiftplanev1.Step{weightStep(50, 0), weightStep(20, 0), weightStep(100, 0)}
			})),
			code: codes.InvalidArgument, want: []string{"steps[1].weight: must not be below the previous step's 50, got 20"}, fields: []string{"steps[1].weight"},
		},
		"apply last weight not 100": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Steps = []*shiftplanev1.Step{weightStep(50, 0)} })),
			code: codes.InvalidArgument, want: []string{"steps[0].weight: the last weight must be 100, got 50"}, fields: []string{"steps[0].weight"},
		},
		"apply negative hold": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Steps[0].Hold = durationpb.New(-time.Second) })),
			code: codes.InvalidArgument, want: []string{"steps[0].hold: must not be negative, got -1s"}, fields: []string{"steps[0].hold"},
		},
		"apply malformed duration": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Steps[0].Hold = &durationpb.Duration{Seconds: 1, Nanos: -1} })),
			code: codes.InvalidArgument, want: []string{"steps[0].hold: invalid duration"}, fields: []string{"steps[0].hold"},
		},
		"apply no steps": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Steps = nil })),
			code: codes.InvalidArgument, want: []string{"steps: is required (or linear, or exponential)"}, fields: []string{"steps"},
		},
		"apply steps and linear": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Linear = &shiftplanev1.Linear{Step: 10, Every: durationpb.New(time.Second)}
			})),
			code: codes.InvalidArgument, want: []string{"steps: give only one of steps, linear and exponential"}, fields: []string{"steps"},
		},
		"apply linear step and every": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Steps = nil
				p.Linear = &shiftplanev1.Linear{Step: 0, Every: durationpb.New(-time.Second)}
			})),
			code: codes.InvalidArgument, want: []string{"linear.every: must not be negative, got -1s", "linear.step: must be within 1..100, got 0"},
			fields: []string{"linear.every", "linear.step"}, absent: "linear.every: must be > 0",
		},
		"apply exponential": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Steps = nil
				p.Exponential = &shiftplanev1.Exponential{Start: 101, Factor: 1, Every: durationpb.New(time.Second)}
			})),
			code: codes.InvalidArgument, want: []string{"exponential.start: must be within 1..100, got 101", "exponential.factor: must be a finite number >= 1.1 (and <= 100), got 1"},
			fields: []string{"exponential.start", "exponential.factor"},
		},
		"apply listener": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Listener = &shiftplanev1.Listener{Address: "localhost:80", Domains: []string{""}, PathPrefix: "api"}
			})),
			code: codes.InvalidArgument,
			want: []string{`listener.address: host must be an IP address (Envoy does not resolve names here), got "localhost"`,
				"listener.domains[0]: must not be empty", `listener.pathPrefix: must start with /, got "api"`},
			fields: []string{"listener.address", "listener.domains[0]", "listener.pathPrefix"},
		},
		"apply no listener": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Listener = nil })),
			code: codes.InvalidArgument, want: []string{"listener.address: is required"}, fields: []string{"listener.address"},
		},
		"apply backends": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Stable = &shiftplanev1.Backend{Cluster: "", Endpoints: []string{"127.0.0.1:99999"}}
				p.Canary = &shiftplanev1.Backend{Cluster: "web-v2", Endpoints: nil}
			})),
			code:   codes.InvalidArgument,
			want:   []string{"stable.cluster: is required", `stable.endpoints[0]: port must be within 1..65535, got "99999"`, "canary.endpoints: needs at least one host:port"},
			fields: []string{"stable.cluster", "stable.endpoints[0]", "canary.endpoints"},
		},
		"apply same cluster twice": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Canary.Cluster = "web-v1" })),
			code: codes.InvalidArgument, want: []string{`canary.cluster: must differ from stable.cluster, both are "web-v1"`}, fields: []string{"canary.cluster"},
		},
		"apply cluster of another rollout": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Canary.Cluster = "existing-v2" })),
			code: codes.InvalidArgument, want: []string{`canary.cluster: cluster "existing-v2" is already used by plan "existing"`}, fields: []string{"canary.cluster"},
		},
		"apply domain of another rollout": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) { p.Listener.Address = "127.0.0.1:10000" })),
			code: codes.InvalidArgument, want: []string{`listener.domains: domain "*" on 127.0.0.1:10000 is already served by plan "existing"`}, fields: []string{"listener.domains"},
		},
		"apply outlier detection": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.OutlierDetection = &shiftplanev1.OutlierDetection{Consecutive_5Xx: 3, Interval: durationpb.New(-time.Second), MaxEjectionPercent: 101}
			})),
			code:   codes.InvalidArgument,
			want:   []string{"outlierDetection.interval: must not be negative, got -1s", "outlierDetection.baseEjectionTime: must be within 1s..24h0m0s, got 0s", "outlierDetection.maxEjectionPercent: must be within 0..100, got 101"},
			fields: []string{"outlierDetection.interval", "outlierDetection.baseEjectionTime", "outlierDetection.maxEjectionPercent"},
		},
		"apply analysis": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Analysis = &shiftplanev1.Analysis{
					StableFor: durationpb.New(-time.Second), StaleAfter: durationpb.New(-time.Second), RollbackAfter: durationpb.New(-time.Second),
					DrainTimeout: durationpb.New(-time.Second), MaxErrorRate: proto.Float64(1.5), MinRequests: proto.Int32(-1),
				}
			})),
			code: codes.InvalidArgument,
			want: []string{"analysis.stableFor: must not be negative, got -1s", "analysis.staleAfter: must not be negative",
				"analysis.rollbackAfter: must not be negative", "analysis.drainTimeout: must not be negative",
				"analysis.maxErrorRate: must be a finite number within 0..1 (a share of requests), got 1.5", "analysis.minRequests: must be 0..1000000 (0 opts out of the evidence rule), got -1"},
			fields: []string{"analysis.stableFor", "analysis.staleAfter", "analysis.rollbackAfter", "analysis.drainTimeout", "analysis.maxErrorRate", "analysis.minRequests"},
		},
		"apply exec hook without argv": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Hooks = &shiftplanev1.Hooks{BeforeShift: []*shiftplanev1.Hook{{Action: &shiftplanev1.Hook_Exec{Exec: &shiftplanev1.ExecHook{}}}}}
			})),
			code: codes.InvalidArgument, want: []string{"hooks.beforeShift[0].exec: needs at least the program to run (argv[0])"},
			fields: []string{"hooks.beforeShift[0].exec"}, absent: "needs exec or webhook",
		},
		"apply exec hook not allowed": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Hooks = &shiftplanev1.Hooks{BeforeShift: []*shiftplanev1.Hook{{Action: &shiftplanev1.Hook_Exec{Exec: &shiftplanev1.ExecHook{Argv: []string{"./migrate"}}}}}}
			})),
			code: codes.InvalidArgument, want: []string{"hooks.beforeShift[0].exec: exec hooks are disabled on this server"}, fields: []string{"hooks.beforeShift[0].exec"},
		},
		"apply hook without action": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Hooks = &shiftplanev1.Hooks{AfterPromote: []*shiftplanev1.Hook{{Timeout: durationpb.New(-time.Second)}}}
			})),
			code: codes.InvalidArgument, want: []string{"hooks.afterPromote[0].timeout: must not be negative, got -1s", "hooks.afterPromote[0]: needs exec or webhook"},
			fields: []string{"hooks.afterPromote[0].timeout", "hooks.afterPromote[0]"},
		},
		"apply webhook": {
			call: apply(withPlan(func(p *shiftplanev1.Plan) {
				p.Hooks = &shiftplanev1.Hooks{AfterPromote: []*shiftplanev1.Hook{
					{Action: &shiftplanev1.Hook_Webhook{Webhook: &shiftplanev1.WebhookHook{Url: "http://example.com/hook"}}},
					{Action: &shiftplanev1.Hook_Webhook{Webhook: &shiftplanev1.WebhookHook{Url: "ftp://127.0.0.1/x", Timeout: durationpb.New(-time.Second)}}},
				}}
			})),
			code: codes.InvalidArgument,
			want: []string{`hooks.afterPromote[0].webhook.url: host "example.com" is not in hooks.allowHosts`,
				"hooks.afterPromote[1].webhook.timeout: must not be negative, got -1s", `hooks.afterPromote[1].webhook.url: must be an http or https URL, got "ftp://127.0.0.1/x"`},
			fields: []string{"hooks.afterPromote[1].webhook.timeout", "hooks.afterPromote[0].webhook.url", "hooks.afterPromote[1].webhook.url"},
		},
		"apply nothing": {
			call: apply(&shiftplanev1.ApplyRequest{}),
			code: codes.InvalidArgument, want: []string{"plan: is required: send a plan message or planYaml"}, fields: []string{"plan"},
		},
		"apply empty plan message": {
			// On the wire an unset plan in the oneof arrives as an empty plan.
			call: apply(&shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_Plan{}}),
			code: codes.InvalidArgument, want: []string{`invalid plan: name: must match [a-z0-9-]{1,63}, got ""; listener.address: is required`, "steps: is required"},
			fields: []string{"name", "listener.address", "stable.cluster", "stable.endpoints", "canary.cluster", "canary.endpoints", "steps"},
		},
		"apply yaml weight out of range": {
			call: apply(withYAML(webYAML + "steps: [{weight: 10}, {weight: 120}]\n")),
			code: codes.InvalidArgument, want: []string{`invalid plan "web": steps[1].weight: must be within 0..100, got 120`}, fields: []string{"steps[1].weight"},
		},
		"apply yaml unknown field": {
			call: apply(withYAML(webYAML + "steps:\n  - wieght: 10\n  - weight: 100\n")),
			code: codes.InvalidArgument, want: []string{"steps[0].wieght: unknown field", "steps[0]: needs a weight or a pause"},
			fields: []string{"steps[0].wieght", "steps[0]"},
		},
		"apply yaml wrong type": {
			call: apply(withYAML(webYAML + "steps:\n  - weight: 10\n  - weight: ten\n")),
			code: codes.InvalidArgument, want: []string{"steps[1].weight: must be a whole number, got `ten`"}, fields: []string{"steps[1].weight"},
		},
		"apply yaml bad duration": {
			call: apply(withYAML(webYAML + "steps:\n  - weight: 10\n    hold: soon\n  - weight: 100\n")),
			code: codes.InvalidArgument, want: []string{`steps[0].hold: invalid duration "soon"`}, fields: []string{"steps[0].hold"},
		},
		"apply yaml syntax error": {
			call: apply(withYAML("name: [web\n")),
			code: codes.InvalidArgument, want: []string{"document 1"},
		},
		"apply yaml two documents": {
			call: apply(withYAML(webYAML + "steps: [{weight: 100}]\n---\n" + webYAML + "steps: [{weight: 100}]\n")),
			code: codes.InvalidArgument, want: []string{"planYaml: holds 2 plan documents; send one per Apply call"}, fields: []string{"planYaml"},
		},
		"apply yaml empty": {
			call: apply(withYAML("# nothing here\n")),
			code: codes.InvalidArgument, want: []string{"planYaml: holds no plan document"}, fields: []string{"planYaml"},
		},
		"get no name": {
			call: func() error { _, err := c.Get(ctx, &shiftplanev1.GetRequest{}); return err },
			code: codes.InvalidArgument, want: []string{"name: is required"}, fields: []string{"name"},
		},
		"get bad name": {
			call: func() error { _, err := c.Get(ctx, &shiftplanev1.GetRequest{Name: "Web/1"}); return err },
			code: codes.InvalidArgument, want: []string{`name: must match [a-z0-9-]{1,63}, got "Web/1"`}, fields: []string{"name"},
		},
		"get unknown": {
			call: func() error { _, err := c.Get(ctx, &shiftplanev1.GetRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"watch bad name": {
			call: func() error { return firstWatchErr(ctx, c, "") },
			code: codes.InvalidArgument, want: []string{"name: is required"}, fields: []string{"name"},
		},
		"watch unknown": {
			call: func() error { return firstWatchErr(ctx, c, "nope") },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"pause bad name": {
			call: func() error { _, err := c.Pause(ctx, &shiftplanev1.PauseRequest{Name: "-" + long}); return err },
			code: codes.InvalidArgument, want: []string{"name: must match"}, fields: []string{"name"},
		},
		"pause unknown": {
			call: func() error { _, err := c.Pause(ctx, &shiftplanev1.PauseRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"pause finished": {
			call: func() error { _, err := c.Pause(ctx, &shiftplanev1.PauseRequest{Name: "rolled"}); return err },
			code: codes.FailedPrecondition, want: []string{`rollout "rolled" is ROLLED_BACK and cannot be paused`}, absent: "failed precondition",
		},
		"resume unknown": {
			call: func() error { _, err := c.Resume(ctx, &shiftplanev1.ResumeRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"resume not paused": {
			call: func() error { _, err := c.Resume(ctx, &shiftplanev1.ResumeRequest{Name: "existing"}); return err },
			code: codes.FailedPrecondition, want: []string{`rollout "existing" is `, `, not PAUSED`},
		},
		"promote no name": {
			call: func() error { _, err := c.Promote(ctx, &shiftplanev1.PromoteRequest{}); return err },
			code: codes.InvalidArgument, want: []string{"name: is required"}, fields: []string{"name"},
		},
		"promote unknown": {
			call: func() error { _, err := c.Promote(ctx, &shiftplanev1.PromoteRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"promote rolled back": {
			call: func() error { _, err := c.Promote(ctx, &shiftplanev1.PromoteRequest{Name: "rolled"}); return err },
			code: codes.FailedPrecondition, want: []string{`rollout "rolled" is ROLLED_BACK; only a progressing, holding or paused rollout can be promoted`},
		},
		"abort unknown": {
			call: func() error { _, err := c.Abort(ctx, &shiftplanev1.AbortRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"abort reason too long": {
			call: func() error {
				_, err := c.Abort(ctx, &shiftplanev1.AbortRequest{Name: "existing", Reason: long})
				return err
			},
			code: codes.InvalidArgument, want: []string{"reason: must be at most 1024 bytes, got 1025"}, fields: []string{"reason"},
		},
		"abort finished": {
			call: func() error { _, err := c.Abort(ctx, &shiftplanev1.AbortRequest{Name: "rolled"}); return err },
			code: codes.FailedPrecondition, want: []string{`rollout "rolled" already finished (ROLLED_BACK)`},
		},
		"delete no name": {
			call: func() error { _, err := c.Delete(ctx, &shiftplanev1.DeleteRequest{}); return err },
			code: codes.InvalidArgument, want: []string{"name: is required"}, fields: []string{"name"},
		},
		"delete unknown": {
			call: func() error { _, err := c.Delete(ctx, &shiftplanev1.DeleteRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"history unknown": {
			call: func() error { _, err := c.History(ctx, &shiftplanev1.HistoryRequest{Name: "nope"}); return err },
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"history negative limit": {
			call: func() error {
				_, err := c.History(ctx, &shiftplanev1.HistoryRequest{Name: "existing", Limit: -1})
				return err
			},
			code: codes.InvalidArgument, want: []string{"limit: must be >= 0 (0 means all), got -1"}, fields: []string{"limit"},
		},
		"report no rollout": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Rollout = "" })),
			code: codes.InvalidArgument, want: []string{"rollout: is required"}, fields: []string{"rollout"},
		},
		"report unknown rollout": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Rollout = "nope" })),
			code: codes.NotFound, want: []string{`rollout "nope" not found`},
		},
		"report no state": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.State = shiftplanev1.SignalState_SIGNAL_STATE_UNSPECIFIED })),
			code: codes.InvalidArgument, want: []string{"state: must be SIGNAL_STATE_CLEAR or SIGNAL_STATE_FIRING, got SIGNAL_STATE_UNSPECIFIED"}, fields: []string{"state"},
		},
		"report stale": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.State = shiftplanev1.SignalState_SIGNAL_STATE_STALE })),
			code: codes.InvalidArgument, want: []string{"state: must be SIGNAL_STATE_CLEAR or SIGNAL_STATE_FIRING, got SIGNAL_STATE_STALE"}, fields: []string{"state"},
		},
		"report unknown state number": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.State = 42 })),
			code: codes.InvalidArgument, want: []string{"state: must be SIGNAL_STATE_CLEAR or SIGNAL_STATE_FIRING, got 42"}, fields: []string{"state"},
		},
		"report negative ttl": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Ttl = durationpb.New(-time.Second) })),
			code: codes.InvalidArgument, want: []string{"ttl: must be positive, got -1s"}, fields: []string{"ttl"},
		},
		"report zero ttl": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Ttl = durationpb.New(0) })),
			code: codes.InvalidArgument, want: []string{"ttl: must be positive, got 0s"}, fields: []string{"ttl"},
		},
		"report ttl over an hour": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Ttl = durationpb.New(1000 * time.Hour) })),
			code: codes.InvalidArgument, want: []string{"ttl: must be at most 1h0m0s (report again to keep a signal), got 1000h0m0s"}, fields: []string{"ttl"},
		},
		"report malformed ttl": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Ttl = &durationpb.Duration{Seconds: -1, Nanos: 5} })),
			code: codes.InvalidArgument, want: []string{"ttl: invalid duration"}, fields: []string{"ttl"},
		},
		"report reason too long": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Reason = long })),
			code: codes.InvalidArgument, want: []string{"reason: must be at most 1024 bytes, got 1025"}, fields: []string{"reason"},
		},
		"report source too long": {
			call: report(clearReq(func(r *shiftplanev1.ReportSignalRequest) { r.Source = long })),
			code: codes.InvalidArgument, want: []string{"source: must be at most 128 bytes, got 1025"}, fields: []string{"source"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := snapshot(t, e)
			err := tc.call()
			st, _ := status.FromError(err)
			if st.Code() != tc.code {
				t.Fatalf("code = %s (%v), want %s", st.Code(), err, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(st.Message(), w) {
					t.Errorf("message %q does not contain %q", st.Message(), w)
				}
			}
			if tc.absent != "" && strings.Contains(st.Message(), tc.absent) {
				t.Errorf("message %q contains %q", st.Message(), tc.absent)
			}
			if got := violations(st); tc.code == codes.InvalidArgument && tc.fields != nil && !reflect.DeepEqual(got, tc.fields) {
				t.Errorf("BadRequest fields = %q, want %q", got, tc.fields)
			}
			if after := snapshot(t, e); after != before {
				t.Errorf("a refused call changed the rollouts:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func firstWatchErr(ctx context.Context, c shiftplanev1.RolloutServiceClient, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := c.Watch(ctx, &shiftplanev1.WatchRequest{Name: name})
	if err != nil {
		return err
	}
	_, err = s.Recv()
	return err
}

// snapshot is every rollout's name, phase, weight and history length.
func snapshot(t *testing.T, e *env) string {
	t.Helper()
	var b strings.Builder
	for _, st := range e.engine.List() {
		evs, err := e.engine.History(st.Plan.Name, 0)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(st.Plan.Name + "=" + string(st.State.Phase) + "/" + strconv.Itoa(st.State.Weight) + "/" + strconv.Itoa(len(evs)) + " ")
	}
	return b.String()
}

func violations(st *status.Status) []string {
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

const fullYAML = `name: checkout
listener:
  address: 0.0.0.0:10000
  domains: ["shop.example.com", "*.shop.example.com"]
  pathPrefix: /api
stable:
  cluster: checkout-v1
  endpoints: ["127.0.0.1:8081", "127.0.0.1:8083"]
canary:
  cluster: checkout-v2
  endpoints: ["127.0.0.1:8082"]
outlierDetection:
  consecutive5xx: 3
  interval: 1s
  baseEjectionTime: 10s
  maxEjectionPercent: 100
steps:
  - weight: 0
    hold: 5s
  - weight: 10
    hold: 30s
  - pause: {}
  - weight: 100
analysis:
  stableFor: 0s
  staleAfter: 7s
  rollbackAfter: 2m
  maxErrorRate: 0.05
  minRequests: 30
  drainTimeout: 20s
hooks:
  beforeShift: [{webhook: {url: "http://127.0.0.1:9000/pre", timeout: 3s}, timeout: 5s, retries: 3, retryBackoff: 200ms}]
  afterPromote: [{webhook: {url: "http://localhost:9000/post"}}]
`

// TestPlanRoundTrip: a plan read from YAML survives policy → proto →
// policy unchanged, and applying it as a message or as YAML stores the same
// plan.
func TestPlanRoundTrip(t *testing.T) {
	plans, ps := policy.ParseAndValidate([]byte(fullYAML), "", policy.ValidateOptions{})
	if len(ps) > 0 || len(plans) != 1 {
		t.Fatalf("fixture: %v", ps)
	}
	want := plans[0]
	got, ps := PlanFromProto(PlanToProto(want), policy.ValidateOptions{})
	if len(ps) > 0 {
		t.Fatalf("PlanFromProto(PlanToProto(plan)): %v", ps)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip changed the plan:\n got %+v\nwant %+v", got, want)
	}
	for _, p := range []policy.Plan{{Linear: &policy.Linear{Step: 20, Every: policy.Duration(time.Minute)}},
		{Exponential: &policy.Exponential{Start: 5, Factor: 2, Every: policy.Duration(time.Minute)}}} {
		p.Name = "gen"
		got, _ := PlanFromProto(PlanToProto(p), policy.ValidateOptions{})
		if !reflect.DeepEqual(got, p) {
			t.Errorf("round trip of %+v gave %+v", p, got)
		}
	}

	e := newEnv(t)
	ctx := context.Background()
	byYAML, err := e.client.Apply(ctx, withYAML(fullYAML))
	if err != nil {
		t.Fatal(err)
	}
	if !byYAML.GetCreated() {
		t.Error("first apply: created = false")
	}
	byMsg, err := e.client.Apply(ctx, &shiftplanev1.ApplyRequest{Source: &shiftplanev1.ApplyRequest_Plan{Plan: PlanToProto(want)}})
	if err != nil {
		t.Fatal(err)
	}
	if byMsg.GetCreated() {
		t.Error("second apply of the same plan: created = true")
	}
	if !proto.Equal(byYAML.GetRollout().GetPlan(), byMsg.GetRollout().GetPlan()) {
		t.Errorf("plan applied as YAML:\n%s\nas a message:\n%s", prototext.Format(byYAML.GetRollout().GetPlan()), prototext.Format(byMsg.GetRollout().GetPlan()))
	}
	if src := byMsg.GetRollout().GetSource(); src != "api" {
		t.Errorf("source = %q, want api", src)
	}
}

func TestStatusToProto(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := policy.Plan{Name: "web", Stable: policy.Backend{Cluster: "web-v1"}, Canary: policy.Backend{Cluster: "web-v2"}}
	st := policy.Status{
		Rollout: policy.Rollout{Plan: p, Source: "file:/plans/web.yaml", State: policy.State{
			Phase: policy.PhaseHolding, StepIndex: 1, Weight: 25, Reason: "signal firing: ejections",
			HoldCounted: 3 * time.Second, RouteVersion: "17", Created: created, Updated: created.Add(time.Minute), HookError: "hook broke",
		}},
		Signal:        policy.Signal{State: policy.SignalFiring, Reason: "node envoy-1: ejections_active=1", Since: created.Add(30 * time.Second)},
		HoldRemaining: 27 * time.Second,
		StepCount:     4,
		Fleet:         policy.Convergence{Converged: true, Nodes: 3},
		FleetWeight:   20, WeightPending: true, // the fleet holds 20, 25 is on its way
	}
	want := &shiftplanev1.Rollout{
		Name: "web", Phase: shiftplanev1.Phase_PHASE_HOLDING, CanaryWeight: 20, TargetWeight: 25, WeightPending: true, StepIndex: 1, StepCount: 4,
		HoldRemaining: durationpb.New(27 * time.Second), HoldCounted: durationpb.New(3 * time.Second),
		Signal:  &shiftplanev1.Signal{State: shiftplanev1.SignalState_SIGNAL_STATE_FIRING, Reason: "node envoy-1: ejections_active=1", Since: timestamppb.New(created.Add(30 * time.Second))},
		Fleet:   &shiftplanev1.FleetStatus{Nodes: 3, Converged: true, RouteVersion: "17"},
		Message: "signal firing: ejections", Reason: "signal firing: ejections",
		Plan:      PlanToProto(p),
		CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(created.Add(time.Minute)),
		StableCluster: "web-v1", CanaryCluster: "web-v2", Source: "file:/plans/web.yaml", HookError: "hook broke",
	}
	if got := StatusToProto(st); !proto.Equal(got, want) {
		t.Errorf("StatusToProto:\n got %s\nwant %s", prototext.Format(got), prototext.Format(want))
	}
	for _, ph := range policy.Phases {
		if PhaseToProto(ph) == shiftplanev1.Phase_PHASE_UNSPECIFIED {
			t.Errorf("phase %s has no enum value", ph)
		}
	}
	for _, s := range []policy.SignalState{policy.SignalClear, policy.SignalFiring, policy.SignalStale} {
		if SignalStateFromProto(SignalStateToProto(s)) != s {
			t.Errorf("signal state %s does not round-trip", s)
		}
	}
}

// TestOperations drives one rollout through the API: pause, resume, a
// reported FIRING that holds it, CLEAR, the manual gate, promote, and the
// history recording an abort reason on another.
func TestOperations(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client
	p := validPlan("web", 1)
	p.Steps = []*shiftplanev1.Step{weightStep(20, time.Second), pauseStep(), weightStep(100, 0)}
	r := e.apply(t, p)
	if r.GetPhase() != shiftplanev1.Phase_PHASE_PENDING || r.GetStepCount() != 3 {
		t.Fatalf("after apply: %s", prototext.Format(r))
	}

	report := func(state shiftplanev1.SignalState) *shiftplanev1.Signal {
		t.Helper()
		resp, err := c.ReportSignal(ctx, &shiftplanev1.ReportSignalRequest{Rollout: "web", State: state, Source: "ci", Reason: "from the test", Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetSignal()
	}
	if sig := report(shiftplanev1.SignalState_SIGNAL_STATE_CLEAR); sig.GetState() != shiftplanev1.SignalState_SIGNAL_STATE_CLEAR {
		t.Errorf("after reporting CLEAR: %s", prototext.Format(sig))
	}
	e.tickUntil(t, "web", policy.PhaseProgressing, 100*time.Millisecond)

	pause, err := c.Pause(ctx, &shiftplanev1.PauseRequest{Name: "web"})
	if err != nil || pause.GetRollout().GetPhase() != shiftplanev1.Phase_PHASE_PAUSED {
		t.Fatalf("pause: %v %s", err, prototext.Format(pause.GetRollout()))
	}
	e.tick(t, 5*time.Second)
	if got, _ := c.Get(ctx, &shiftplanev1.GetRequest{Name: "web"}); got.GetRollout().GetPhase() != shiftplanev1.Phase_PHASE_PAUSED || got.GetRollout().GetCanaryWeight() != 20 {
		t.Fatalf("paused rollout moved: %s", prototext.Format(got.GetRollout()))
	}
	resume, err := c.Resume(ctx, &shiftplanev1.ResumeRequest{Name: "web"})
	if err != nil || resume.GetRollout().GetPhase() != shiftplanev1.Phase_PHASE_PROGRESSING {
		t.Fatalf("resume: %v %s", err, prototext.Format(resume.GetRollout()))
	}

	sig := report(shiftplanev1.SignalState_SIGNAL_STATE_FIRING)
	if sig.GetState() != shiftplanev1.SignalState_SIGNAL_STATE_FIRING || sig.GetReason() != "reported by ci: from the test" {
		t.Errorf("after reporting FIRING: %s", prototext.Format(sig))
	}
	e.tickUntil(t, "web", policy.PhaseHolding, 100*time.Millisecond)
	report(shiftplanev1.SignalState_SIGNAL_STATE_CLEAR)
	e.tickUntil(t, "web", policy.PhasePaused, 100*time.Millisecond) // the manual gate
	got, _ := c.Get(ctx, &shiftplanev1.GetRequest{Name: "web"})
	if r := got.GetRollout(); r.GetStepIndex() != 1 || r.GetCanaryWeight() != 20 {
		t.Fatalf("at the gate: %s", prototext.Format(r))
	}
	promote, err := c.Promote(ctx, &shiftplanev1.PromoteRequest{Name: "web"})
	if err != nil || promote.GetRollout().GetPhase() != shiftplanev1.Phase_PHASE_PROMOTING || promote.GetRollout().GetCanaryWeight() != 100 {
		t.Fatalf("promote: %v %s", err, prototext.Format(promote.GetRollout()))
	}
	e.tickUntil(t, "web", policy.PhaseSucceeded, 200*time.Millisecond)

	list, err := c.List(ctx, &shiftplanev1.ListRequest{})
	if err != nil || len(list.GetRollouts()) != 1 || list.GetRollouts()[0].GetPhase() != shiftplanev1.Phase_PHASE_SUCCEEDED {
		t.Fatalf("list: %v %v", err, list)
	}
	hist, err := c.History(ctx, &shiftplanev1.HistoryRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	evs := hist.GetEvents()
	if len(evs) < 5 || evs[0].GetToPhase() != shiftplanev1.Phase_PHASE_PENDING || evs[len(evs)-1].GetToPhase() != shiftplanev1.Phase_PHASE_SUCCEEDED {
		t.Errorf("history: %v", evs)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].GetSeq() <= evs[i-1].GetSeq() {
			t.Errorf("history not oldest first: seq %d after %d", evs[i].GetSeq(), evs[i-1].GetSeq())
		}
	}
	last2, err := c.History(ctx, &shiftplanev1.HistoryRequest{Name: "web", Limit: 2})
	if err != nil || len(last2.GetEvents()) != 2 || !proto.Equal(last2.GetEvents()[1], evs[len(evs)-1]) {
		t.Errorf("history limit 2: %v %v", err, last2.GetEvents())
	}

	e.apply(t, validPlan("other", 2))
	if _, err := c.Abort(ctx, &shiftplanev1.AbortRequest{Name: "other", Reason: "bad build 1234"}); err != nil {
		t.Fatal(err)
	}
	e.tickUntil(t, "other", policy.PhaseAborted, 100*time.Millisecond)
	oh, _ := c.History(ctx, &shiftplanev1.HistoryRequest{Name: "other"})
	found := false
	for _, ev := range oh.GetEvents() {
		found = found || strings.Contains(ev.GetReason(), "bad build 1234")
	}
	if !found {
		t.Errorf("abort reason not in history: %v", oh.GetEvents())
	}
	// A finished rollout takes no signal.
	e.tick(t, time.Second)
	if _, err := c.ReportSignal(ctx, &shiftplanev1.ReportSignalRequest{Rollout: "other", State: shiftplanev1.SignalState_SIGNAL_STATE_FIRING}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("report-signal on a finished rollout: %v, want FailedPrecondition", err)
	}

	// Delete takes the service's routes away: refused without force, shown
	// by a dry run, done with force.
	_, err = c.Delete(ctx, &shiftplanev1.DeleteRequest{Name: "other"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--force") || !strings.Contains(err.Error(), "listener 127.0.0.1:10002 is removed") {
		t.Errorf("delete without force: %v, want FailedPrecondition naming --force and the listener", err)
	}
	dry, err := c.Delete(ctx, &shiftplanev1.DeleteRequest{Name: "other", DryRun: true})
	if err != nil || !strings.Contains(dry.GetEffect(), `virtual host "other"`) {
		t.Errorf("dry run: %q, %v", dry.GetEffect(), err)
	}
	if _, err := c.Get(ctx, &shiftplanev1.GetRequest{Name: "other"}); err != nil {
		t.Errorf("get after a refused delete and a dry run: %v", err)
	}
	if _, err := c.Delete(ctx, &shiftplanev1.DeleteRequest{Name: "other", Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, &shiftplanev1.GetRequest{Name: "other"}); status.Code(err) != codes.NotFound {
		t.Errorf("get after delete: %v, want NotFound", err)
	}
}

// TestReportSignalDefaultTTL: without a ttl a report lasts the rollout's
// analysis.staleAfter.
func TestReportSignalDefaultTTL(t *testing.T) {
	e := newEnv(t)
	p := validPlan("web", 1)
	p.Analysis.StaleAfter = durationpb.New(3 * time.Second)
	e.apply(t, p)
	ctx := context.Background()
	resp, err := e.client.ReportSignal(ctx, &shiftplanev1.ReportSignalRequest{Rollout: "web", State: shiftplanev1.SignalState_SIGNAL_STATE_FIRING})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetSignal(); got.GetState() != shiftplanev1.SignalState_SIGNAL_STATE_FIRING || got.GetReason() != "reported by api" {
		t.Errorf("signal = %s, want FIRING reported by the default source", prototext.Format(got))
	}
	st, _ := e.engine.Get("web")
	q := policy.SignalQuery{Rollout: "web", CanaryCluster: "web-v2", Analysis: st.Plan.WithDefaults().Analysis, Since: st.State.Created}
	e.clock.Advance(2 * time.Second)
	if s := e.gate.Evaluate(e.clock.Now(), q); s.State != policy.SignalFiring {
		t.Errorf("2s later: %s, want FIRING still", s.State)
	}
	e.clock.Advance(2 * time.Second)
	if s := e.gate.Evaluate(e.clock.Now(), q); s.State != policy.SignalStale {
		t.Errorf("4s later (staleAfter 3s): %s, want STALE", s.State)
	}
}

// TestWatch: the current status first, then events and changes; the
// stream ends NOT_FOUND when the rollout is deleted.
func TestWatch(t *testing.T) {
	e := newEnv(t)
	e.apply(t, validPlan("web", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := e.client.Watch(ctx, &shiftplanev1.WatchRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetStatus().GetPhase() != shiftplanev1.Phase_PHASE_PENDING {
		t.Fatalf("first message: %s, want the PENDING status", prototext.Format(first))
	}
	if _, err := e.client.Pause(ctx, &shiftplanev1.PauseRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	var sawEvent, sawStatus bool
	for !sawEvent || !sawStatus {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if ev := m.GetEvent(); ev != nil && ev.GetToPhase() == shiftplanev1.Phase_PHASE_PAUSED {
			if !strings.Contains(ev.GetReason(), "paused") || ev.GetRollout() != "web" {
				t.Errorf("pause event: %s", prototext.Format(ev))
			}
			sawEvent = true
		}
		if st := m.GetStatus(); st != nil && st.GetPhase() == shiftplanev1.Phase_PHASE_PAUSED {
			if !sawEvent {
				t.Error("the PAUSED status came before its event")
			}
			sawStatus = true
		}
	}
	// Another rollout's changes are not sent.
	e.apply(t, validPlan("other", 2))
	if _, err := e.client.Delete(ctx, &shiftplanev1.DeleteRequest{Name: "web", Force: true}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `rollout "web" was deleted`) {
				t.Errorf("stream ended with %v, want NotFound: deleted", err)
			}
			break
		}
		if name := m.GetStatus().GetName() + m.GetEvent().GetRollout(); name != "web" {
			t.Errorf("watch of web got a message about %q", name)
		}
	}
}

// watchStream is a server-side Watch stream for calling Service.Watch
// directly.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	mu   sync.Mutex
	sent []*shiftplanev1.WatchResponse
}

func (s *watchStream) Context() context.Context { return s.ctx }

func (s *watchStream) Send(m *shiftplanev1.WatchResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, m)
	return nil
}

// TestWatchEndsWithClient: the handler returns (and unsubscribes) when the
// client goes away or the service closes.
func TestWatchEndsWithClient(t *testing.T) {
	e := newEnv(t)
	e.apply(t, validPlan("web", 1))
	for name, stop := range map[string]func(cancel context.CancelFunc){
		"client cancels": func(cancel context.CancelFunc) { cancel() },
		"service closes": func(context.CancelFunc) { e.svc.Close() },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s := &watchStream{ctx: ctx}
			done := make(chan error, 1)
			go func() { done <- e.svc.Watch(&shiftplanev1.WatchRequest{Name: "web"}, s) }()
			time.Sleep(50 * time.Millisecond)
			stop(cancel)
			select {
			case err := <-done:
				if err == nil {
					t.Error("Watch returned nil, want a status")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Watch did not return")
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.sent) == 0 || s.sent[0].GetStatus().GetName() != "web" {
				t.Errorf("first message: %v, want web's status", s.sent)
			}
		})
	}
}

func TestListNodes(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	nodes := []Node{
		{ID: "envoy-1", Cluster: "fleet", Protocol: "delta", ConnectedSince: since, LastStatsReport: since.Add(time.Minute), Converged: false,
			Types: []NodeType{{TypeURL: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", Acked: "4", Nacked: "5", NackError: "bad route", NackTime: since.Add(2 * time.Minute)}}},
		{ID: "envoy-2", Cluster: "fleet", Protocol: "sotw", ConnectedSince: since, Converged: true},
	}
	e := newEnv(t, nodes...)
	resp, err := e.fleet.ListNodes(context.Background(), &shiftplanev1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &shiftplanev1.ListNodesResponse{Nodes: []*shiftplanev1.Node{
		{Id: "envoy-1", Cluster: "fleet", Protocol: "delta", ConnectedSince: timestamppb.New(since), LastStatsReport: timestamppb.New(since.Add(time.Minute)),
			Types: []*shiftplanev1.TypeStatus{{TypeUrl: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", AckedVersion: "4", NackedVersion: "5", NackError: "bad route", NackTime: timestamppb.New(since.Add(2 * time.Minute))}}},
		{Id: "envoy-2", Cluster: "fleet", Protocol: "sotw", ConnectedSince: timestamppb.New(since), Converged: true},
	}}
	if !proto.Equal(resp, want) {
		t.Errorf("ListNodes:\n got %s\nwant %s", prototext.Format(resp), prototext.Format(want))
	}
}

func TestToStatusInternal(t *testing.T) {
	err := toStatus("web", errors.New("disk full"))
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), `rollout "web": disk full`) {
		t.Errorf("toStatus = %v", err)
	}
}

// TestTrafficPlanRoundTrip: canary.match, canary.sessionAffinity, mirror
// and matchOnly steps survive policy → proto → policy.
func TestTrafficPlanRoundTrip(t *testing.T) {
	base := `name: search
listener: {address: 127.0.0.1:10002}
stable: {cluster: search-v1, endpoints: ["127.0.0.1:9181"]}
canary:
  cluster: search-v2
  endpoints: ["127.0.0.1:9182"]
`
	for name, doc := range map[string]string{
		"match, matchOnly and mirror": base + `  match:
    - {header: x-canary, exact: "true"}
    - {header: x-tenant, prefix: beta-}
    - {cookie: build, regex: "v2\\.[0-9]+"}
    - {query: preview, present: true}
    - {header: x-legacy, absent: true}
steps:
  - {matchOnly: {}, hold: 10m}
  - {mirror: 50, hold: 5m}
  - {weight: 10, hold: 5m}
  - {weight: 100}
`,
		"session affinity": base + `  sessionAffinity: {cookieName: shiftplane-search, maxAge: 24h}
steps: [{weight: 10, hold: 1m}, {weight: 100}]
`,
	} {
		t.Run(name, func(t *testing.T) {
			plans, ps := policy.ParseAndValidate([]byte(doc), "", policy.ValidateOptions{})
			if len(ps) > 0 || len(plans) != 1 {
				t.Fatalf("fixture: %v", ps)
			}
			got, ps := PlanFromProto(PlanToProto(plans[0]), policy.ValidateOptions{})
			if len(ps) > 0 {
				t.Fatalf("PlanFromProto(PlanToProto(plan)): %v", ps)
			}
			if !reflect.DeepEqual(got, plans[0]) {
				t.Errorf("round trip changed the plan:\n got %+v\nwant %+v", got, plans[0])
			}
		})
	}
}
