package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestSplitYAMLDocs(t *testing.T) {
	tests := map[string]struct {
		in   string
		want []string
	}{
		"one":                   {in: "name: a\n", want: []string{"name: a\n"}},
		"leading separator":     {in: "---\nname: a\n", want: []string{"name: a\n"}},
		"two":                   {in: "name: a\n---\nname: b\n", want: []string{"name: a\n", "name: b\n"}},
		"trailing and comment":  {in: "name: a\n--- # next\n# only a comment\n---\n", want: []string{"name: a\n"}},
		"content on separator":  {in: "name: a\n--- {name: b}\n", want: []string{"name: a\n", "{name: b}\n"}},
		"end marker":            {in: "name: a\n...\n---\nname: b", want: []string{"name: a\n", "name: b"}},
		"dashes inside a value": {in: "name: a\nnote: \"---\"\n  ---x\n", want: []string{"name: a\nnote: \"---\"\n  ---x\n"}},
		"empty":                 {in: "\n# nothing\n", want: nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := splitYAMLDocs(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("splitYAMLDocs(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func rollout() *shiftplanev1.Rollout {
	return &shiftplanev1.Rollout{
		Name: "checkout", Phase: shiftplanev1.Phase_PHASE_PROGRESSING, CanaryWeight: 0, StepIndex: 0, StepCount: 4,
		HoldRemaining: durationpb.New(12 * time.Second),
		Signal:        &shiftplanev1.Signal{State: shiftplanev1.SignalState_SIGNAL_STATE_CLEAR, Reason: "no ejections"},
		Fleet:         &shiftplanev1.FleetStatus{Nodes: 2, Converged: true, RouteVersion: "7"},
		CreatedAt:     timestamppb.New(now.Add(-90 * time.Second)),
	}
}

// TestRolloutJSON pins the `get -o json` contract of DESIGN.md: zeros are
// printed, names are camelCase, the output is indented and stable.
func TestRolloutJSON(t *testing.T) {
	b, err := rolloutJSON(rollout())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	for key, want := range map[string]any{"name": "checkout", "phase": "PROGRESSING", "canaryWeight": float64(0), "stepIndex": float64(0)} {
		if m[key] != want {
			t.Errorf("%s = %v, want %v", key, m[key], want)
		}
	}
	if sig := m["signal"].(map[string]any); sig["state"] != "CLEAR" || sig["reason"] != "no ejections" {
		t.Errorf("signal = %v", sig)
	}
	if fl := m["fleet"].(map[string]any); fl["nodes"] != float64(2) || fl["converged"] != true {
		t.Errorf("fleet = %v", fl)
	}
	if !bytes.Contains(b, []byte("\n  \"name\": \"checkout\",\n")) {
		t.Errorf("not indented by two spaces:\n%s", b)
	}
	again, _ := rolloutJSON(rollout())
	if !bytes.Equal(b, again) {
		t.Error("two renderings differ")
	}
}

func TestRolloutYAML(t *testing.T) {
	b, err := rolloutYAML(rollout())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["name"] != "checkout" || m["canaryWeight"] != 0 || m["phase"] != "PROGRESSING" {
		t.Errorf("yaml:\n%s", b)
	}
	if !strings.HasPrefix(string(b), "name: checkout\nphase: PROGRESSING\n") || strings.Contains(string(b), "{") {
		t.Errorf("want block YAML in the JSON's field order:\n%s", b)
	}
}

func TestRolloutTable(t *testing.T) {
	other := rollout()
	other.Name = "a-much-longer-name"
	other.Phase = shiftplanev1.Phase_PHASE_ROLLED_BACK
	other.CanaryWeight = 100
	other.StepIndex = 3
	other.Signal.State = shiftplanev1.SignalState_SIGNAL_STATE_FIRING
	other.CreatedAt = timestamppb.New(now.Add(-3 * time.Hour))
	share := 9.8125
	served := rollout()
	served.Name = "served"
	served.CanaryWeight = 10
	served.Observed = &shiftplanev1.StepTraffic{Nodes: 2, StableRequests: 1443, CanaryRequests: 157, CanaryShare: &share}
	quiet := rollout()
	quiet.Name = "quiet"
	quiet.Observed = &shiftplanev1.StepTraffic{Nodes: 2}
	var b bytes.Buffer
	if err := writeRolloutTable(&b, []*shiftplanev1.Rollout{rollout(), other, served, quiet}, now); err != nil {
		t.Fatal(err)
	}
	// No data is never 0%: without a node's report the share is "no stats
	// yet", with reports but no request "no traffic yet".
	want := "" +
		"NAME                PHASE        WEIGHT  OBSERVED        STEP  SIGNAL  AGE\n" +
		"checkout            PROGRESSING  0%      no stats yet    1/4   CLEAR   1m\n" +
		"a-much-longer-name  ROLLED_BACK  100%    -               4/4   FIRING  3h\n" +
		"served              PROGRESSING  10%     9.8%            1/4   CLEAR   1m\n" +
		"quiet               PROGRESSING  0%      no traffic yet  1/4   CLEAR   1m\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", 59 * time.Second: "59s", 61 * time.Minute: "1h", 47 * time.Hour: "47h", 72 * time.Hour: "3d", -time.Second: "0s"} {
		if got := age(timestamppb.New(now.Add(-d)), now); got != want {
			t.Errorf("age(%s) = %q, want %q", d, got, want)
		}
	}
	if got := age(nil, now); got != "-" {
		t.Errorf("age(nil) = %q", got)
	}
}

func TestFleetTable(t *testing.T) {
	nodes := []*shiftplanev1.Node{
		{Id: "envoy-1", Cluster: "fleet", ClientKind: "envoy", UserAgent: "envoy 1.40.0", Protocol: "sotw", Converged: true, ConnectedSince: timestamppb.New(now.Add(-5 * time.Minute)), LastStatsReport: timestamppb.New(now.Add(-time.Second)),
			Types: []*shiftplanev1.TypeStatus{{TypeUrl: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", AckedVersion: "4"}}},
		{Id: "envoy-2", Cluster: "fleet", Protocol: "delta", ConnectedSince: timestamppb.New(now.Add(-time.Minute)),
			Types: []*shiftplanev1.TypeStatus{{TypeUrl: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", AckedVersion: "3", NackedVersion: "4", NackError: "duplicate\nroute", NackTime: timestamppb.New(now.Add(-2 * time.Second))}}},
	}
	nodes = append(nodes, &shiftplanev1.Node{Id: "grpc-1", Cluster: "fleet", ClientKind: "proxyless-grpc", UserAgent: "gRPC Go 1.85.0", Protocol: "sotw", ConnectedSince: timestamppb.New(now.Add(-time.Minute)),
		Types: []*shiftplanev1.TypeStatus{{TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener", AckedVersion: "5", Missing: []string{"shop.example:50051"}}}})
	var b bytes.Buffer
	if err := writeFleet(&b, nodes, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"NODE     CLUSTER  KIND                             PROTOCOL  CONVERGED  CONNECTED  LAST STATS  ACKED                 NACKS\n",
		"envoy-1  fleet    envoy (envoy 1.40.0)             sotw      yes        5m         1s ago      RouteConfiguration=4  0\n",
		"envoy-2  fleet    -                                delta     no         1m         never       RouteConfiguration=3  1\n",
		"grpc-1   fleet    proxyless-grpc (gRPC Go 1.85.0)  sotw      no         1m         never       Listener=5            0\n",
		"NACK: envoy-2 rejected RouteConfiguration version 4 2s ago: duplicate; route\n",
		"MISSING: grpc-1 asked for Listener \"shop.example:50051\", which version 5 does not serve\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("fleet output lacks %q:\n%s", want, b.String())
		}
	}
	// Several replicas: a REPLICA column first.
	nodes[0].Replica, nodes[1].Replica = "10.0.0.1:18001", "10.0.0.2:18001"
	b.Reset()
	if err := writeFleet(&b, nodes, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"REPLICA         NODE     CLUSTER  KIND",
		"10.0.0.1:18001  envoy-1  fleet    envoy (envoy 1.40.0)             sotw      yes",
		"10.0.0.2:18001  envoy-2  fleet    -                                delta     no",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("fleet output with replicas lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	_ = writeFleet(&b, nil, now)
	if b.String() != "no Envoy is connected\n" {
		t.Errorf("empty fleet: %q", b.String())
	}
}

func TestWatcherPlain(t *testing.T) {
	var b bytes.Buffer
	w := newWatcher(&b, false, nil)
	r := rollout()
	w.status(r)
	r.HoldRemaining = durationpb.New(11 * time.Second) // only the hold moved: no new line
	w.status(r)
	w.event(&shiftplanev1.Event{Time: timestamppb.New(now), FromPhase: shiftplanev1.Phase_PHASE_PROGRESSING, ToPhase: shiftplanev1.Phase_PHASE_HOLDING, Weight: 10, Reason: "signal firing"})
	r.Phase = shiftplanev1.Phase_PHASE_HOLDING
	w.status(r)
	w.done()
	out := b.String()
	if n := strings.Count(out, "status "); n != 2 {
		t.Errorf("%d status lines, want 2:\n%s", n, out)
	}
	if strings.Contains(out, "\r") || strings.Contains(out, "\x1b") {
		t.Errorf("terminal control codes in plain output: %q", out)
	}
	if !strings.Contains(out, "event  PROGRESSING → HOLDING  weight 10%  step 1/4  signal firing") {
		t.Errorf("event line missing:\n%s", out)
	}
}

func TestWatcherTTY(t *testing.T) {
	var b bytes.Buffer
	w := newWatcher(&b, true, nil)
	r := rollout()
	r.CanaryWeight = 50
	w.status(r)
	w.event(&shiftplanev1.Event{Time: timestamppb.New(now), ToPhase: shiftplanev1.Phase_PHASE_PROGRESSING, FromPhase: shiftplanev1.Phase_PHASE_PROGRESSING, Reason: "step 1"})
	w.done()
	out := b.String()
	bar := "[" + strings.Repeat("█", barWidth/2) + strings.Repeat("░", barWidth/2) + "]  50%  PROGRESSING  step 1/4 (hold 12s left)  signal CLEAR"
	if !strings.Contains(out, bar) {
		t.Errorf("no progress bar %q in %q", bar, out)
	}
	if !strings.Contains(out, "\r\x1b[K") || !strings.HasSuffix(out, "\n") {
		t.Errorf("want the line redrawn in place and a final newline: %q", out)
	}
	if got := progressBar(100, barWidth); got != "["+strings.Repeat("█", barWidth)+"]" {
		t.Errorf("progressBar(100) = %q", got)
	}
}

func TestFinalResult(t *testing.T) {
	r := rollout()
	r.Phase = shiftplanev1.Phase_PHASE_SUCCEEDED
	if err := finalResult(r); err != nil {
		t.Errorf("SUCCEEDED: %v", err)
	}
	for _, p := range []shiftplanev1.Phase{shiftplanev1.Phase_PHASE_ROLLED_BACK, shiftplanev1.Phase_PHASE_ABORTED, shiftplanev1.Phase_PHASE_FAILED} {
		r.Phase = p
		r.Reason = "why"
		var ee *exitError
		if err := finalResult(r); !errors.As(err, &ee) || ee.code != exitRolloutFailure || !strings.Contains(ee.msg, phaseName(p)+": why") {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestRunUsageErrors: mistakes on the command line fail with one line,
// before any call.
func TestRunUsageErrors(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"no name":       {args: []string{"get"}, want: "shiftctl: get needs exactly one rollout NAME, got 0 arguments\n"},
		"two names":     {args: []string{"pause", "a", "b"}, want: "shiftctl: pause needs exactly one rollout NAME, got 2 arguments\n"},
		"bad output":    {args: []string{"get", "a", "-o", "xml"}, want: "shiftctl: -o: must be json, yaml, wide or name, got \"xml\"\n"},
		"apply no file": {args: []string{"apply"}, want: "shiftctl: apply needs -f PLAN (a YAML file, or - for stdin)\n"},
		"missing file":  {args: []string{"apply", "-f", "/nonexistent/plan.yaml"}, want: "shiftctl: open /nonexistent/plan.yaml: no such file or directory\n"},
		"bad state":     {args: []string{"report-signal", "a", "--state", "stale"}, want: "shiftctl: --state: must be firing or clear, got \"stale\"\n"},
		"bad ttl":       {args: []string{"report-signal", "a", "--state", "firing", "--ttl", "-1s"}, want: "shiftctl: --ttl: must be positive, got -1s\n"},
		"cert alone":    {args: []string{"--cert", "c.pem", "list"}, want: "shiftctl: --cert and --key must be given together\n"},
		"unknown verb":  {args: []string{"frobnicate"}, want: "shiftctl: unknown command \"frobnicate\" for \"shiftctl\"\n"},
		"unknown flag":  {args: []string{"list", "--nope"}, want: "shiftctl: unknown flag: --nope\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errOut, false)
			if code != exitFailed || errOut.String() != tc.want {
				t.Errorf("exit %d, stderr %q; want exit %d, %q", code, errOut.String(), exitFailed, tc.want)
			}
		})
	}
}

// TestWatcherFitsWidth: on a narrow terminal the live line is cut to one
// column less than the width (the bar shrinks first), so it never wraps.
func TestWatcherFitsWidth(t *testing.T) {
	for _, cols := range []int{40, 80, 120} {
		var b bytes.Buffer
		w := newWatcher(&b, true, func() int { return cols })
		r := rollout()
		r.Message = strings.Repeat("long ", 40)
		r.HoldRemaining = durationpb.New(59*time.Minute + 54*time.Second)
		w.status(r)
		line := strings.TrimPrefix(b.String(), "\r\x1b[K")
		if n := len([]rune(line)); n >= cols {
			t.Errorf("%d columns: line of %d cells: %q", cols, n, line)
		}
		if !strings.Contains(line, "PROGRESSING  step 1/4") {
			t.Errorf("%d columns: the words were cut: %q", cols, line)
		}
		if cols >= 120 && !strings.Contains(line, "[░░░") {
			t.Errorf("%d columns: no bar: %q", cols, line)
		}
	}
}

// A stream that has ACKed nothing is shown as not ready, not as behind.
func TestFleetTableNotReady(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var buf strings.Builder
	nodes := []*shiftplanev1.Node{
		{Id: "stranger", Cluster: "x", Protocol: "sotw", NotReady: true, ConnectedSince: timestamppb.New(now.Add(-time.Second))},
		{Id: "envoy-1", Cluster: "e", Protocol: "sotw", Converged: true, ConnectedSince: timestamppb.New(now.Add(-time.Minute))},
	}
	if err := writeFleet(&buf, nodes, now); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "stranger  x        -     sotw      not ready") || !strings.Contains(out, "envoy-1   e        -     sotw      yes") {
		t.Errorf("fleet table:\n%s", out)
	}
}

// TestObservedOutput: the split the fleet served is shown next to the
// weight on the live line, and on the event (watch, history) that ends a
// step.
func TestObservedOutput(t *testing.T) {
	share := 9.8125
	step := &shiftplanev1.StepTraffic{StepIndex: 0, Weight: 10, Phase: shiftplanev1.Phase_PHASE_PROGRESSING, Nodes: 2, StableRequests: 1443, CanaryRequests: 157, CanaryShare: &share}
	ev := &shiftplanev1.Event{Time: timestamppb.New(now), FromPhase: shiftplanev1.Phase_PHASE_PROGRESSING, ToPhase: shiftplanev1.Phase_PHASE_PROGRESSING,
		Weight: 40, StepIndex: 1, Reason: "step 2", Observed: step}
	const served = "step 1 at 10% served v2 9.8% of 1600 requests (v1 1443, v2 157)"

	var b bytes.Buffer
	w := newWatcher(&b, true, nil)
	r := rollout()
	r.CanaryWeight = 10
	r.Observed = step
	w.status(r)
	w.event(ev)
	w.done()
	if !strings.Contains(b.String(), " 10% (observed 9.8% of 1600)  PROGRESSING") {
		t.Errorf("live line without the observed share: %q", b.String())
	}
	if !strings.Contains(b.String(), "observed  "+served) {
		t.Errorf("event without the step's observed split: %q", b.String())
	}

	b.Reset()
	r.ObservedSteps = []*shiftplanev1.StepTraffic{step, {StepIndex: 1, Weight: 40, Phase: shiftplanev1.Phase_PHASE_PROGRESSING, Nodes: 2, TransitionStableRequests: 30, TransitionCanaryRequests: 12}}
	r.Observed = r.ObservedSteps[1]
	if err := writeDetail(&b, r, nil, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Observed:  settling; 42 request(s) while the fleet took the weight (not in the share), from 2 node(s)",
		"STEP  PHASE        WEIGHT  OBSERVED  V1    V2   SETTLING  NODES", "1     PROGRESSING  10%     9.8%      1443  157  0         2",
		"2     PROGRESSING  40%     settling  0     0    42        2"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("get NAME lacks %q:\n%s", want, b.String())
		}
	}

	b.Reset()
	if err := writeHistory(&b, []*shiftplanev1.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| "+served) {
		t.Errorf("history without the step's observed split:\n%s", b.String())
	}
}

// A mirror step's copies are named apart from the canary's share.
func TestShareTextMirrorStep(t *testing.T) {
	zero := 0.0
	for _, tc := range []struct {
		o    *shiftplanev1.StepTraffic
		want string
	}{
		{&shiftplanev1.StepTraffic{Nodes: 1, Mirror: 50, StableRequests: 200, MirroredRequests: 100, CanaryShare: &zero}, "0.0% (+100 mirrored)"},
		{&shiftplanev1.StepTraffic{Nodes: 1, Mirror: 50, StableRequests: 200, MirroredRequests: 100}, "no share (v2 100 mirrored + matched)"},
	} {
		if got := shareText(tc.o); got != tc.want {
			t.Errorf("shareText(%v) = %q, want %q", tc.o, got, tc.want)
		}
	}
	o := &shiftplanev1.StepTraffic{Nodes: 1, Mirror: 50, StableRequests: 200, MirroredRequests: 100, CanaryShare: &zero}
	if got, want := stepSplitText(o), "v2 0.0% of 200 requests (v1 200, v2 0); v2 got 100 mirrored copies (not user requests)"; got != want {
		t.Errorf("stepSplitText = %q, want %q", got, want)
	}
}
