package policy_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/shiftplane/shiftplane/policy"
)

// validPlan is a plan with every rule satisfied; each case below breaks one.
func validPlan() policy.Plan {
	p := testPlan("checkout", wstep(10, 30*time.Second), wstep(50, time.Minute), pstep(), wstep(100, 0))
	p.OutlierDetection = &policy.OutlierDetection{Consecutive5xx: 3, Interval: dur(time.Second), BaseEjectionTime: dur(10 * time.Second), MaxEjectionPercent: 100}
	p.Analysis.MaxErrorRate = ptr(0.05)
	p.Analysis.MinRequests = ptr(10)
	p.Hooks.BeforeShift = []policy.Hook{{Webhook: &policy.Webhook{URL: "http://127.0.0.1:8080/expand"}}}
	p.Hooks.AfterPromote = []policy.Hook{{Webhook: &policy.Webhook{URL: "https://localhost/contract"}}}
	return p
}

// problem is an expected problem: its exact field and a part of its message.
type problem struct{ field, msg string }

func checkProblems(t *testing.T, got policy.Problems, want []problem) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Field != w.field || !strings.Contains(got[i].Msg, w.msg) {
			t.Errorf("problem %d = %q: %q, want %q: …%s…", i, got[i].Field, got[i].Msg, w.field, w.msg)
		}
	}
}

func TestValidPlanHasNoProblems(t *testing.T) {
	if ps := validPlan().Validate(policy.ValidateOptions{}); len(ps) != 0 {
		t.Fatalf("valid plan: %v", ps)
	}
	if ps := validPlan().WithDefaults().Validate(policy.ValidateOptions{}); len(ps) != 0 {
		t.Fatalf("valid plan with defaults: %v", ps)
	}
}

// TestValidate has a case for every rule of validate.go, each naming the
// exact field path it must report.
func TestValidate(t *testing.T) {
	tests := map[string]struct {
		edit func(p *policy.Plan)
		opts policy.ValidateOptions
		want []problem
	}{
		"name empty":                {edit: func(p *policy.Plan) { p.Name = "" }, want: []problem{{"name", `must match [a-z0-9-]{1,63}, got ""`}}},
		"name upper case":           {edit: func(p *policy.Plan) { p.Name = "Checkout" }, want: []problem{{"name", `got "Checkout"`}}},
		"name too long":             {edit: func(p *policy.Plan) { p.Name = strings.Repeat("a", 64) }, want: []problem{{"name", "must match"}}},
		"name of 63 is fine":        {edit: func(p *policy.Plan) { p.Name = strings.Repeat("a", 63) }},
		"listener address missing":  {edit: func(p *policy.Plan) { p.Listener.Address = "" }, want: []problem{{"listener.address", "is required"}}},
		"listener address no port":  {edit: func(p *policy.Plan) { p.Listener.Address = "0.0.0.0" }, want: []problem{{"listener.address", `must be host:port, got "0.0.0.0"`}}},
		"listener address DNS name": {edit: func(p *policy.Plan) { p.Listener.Address = "envoy:10000" }, want: []problem{{"listener.address", `host must be an IP address`}}},
		"listener address port 0":   {edit: func(p *policy.Plan) { p.Listener.Address = "0.0.0.0:0" }, want: []problem{{"listener.address", `port must be within 1..65535, got "0"`}}},
		"listener address port big": {edit: func(p *policy.Plan) { p.Listener.Address = "0.0.0.0:65536" }, want: []problem{{"listener.address", "port must be within 1..65535"}}},
		"listener address no host":  {edit: func(p *policy.Plan) { p.Listener.Address = ":10000" }, want: []problem{{"listener.address", "needs a host"}}},
		"listener IPv6 is fine":     {edit: func(p *policy.Plan) { p.Listener.Address = "[::]:10000" }},
		"empty domain":              {edit: func(p *policy.Plan) { p.Listener.Domains = []string{"a", ""} }, want: []problem{{"listener.domains[1]", "must not be empty"}}},
		"grpc target is fine":       {edit: func(p *policy.Plan) { p.Listener.GRPCTargets = []string{"checkout.example:50051"} }},
		"grpc target with path":     {edit: func(p *policy.Plan) { p.Listener.GRPCTargets = []string{"xds:///checkout"} }, want: []problem{{"listener.grpcTargets[0]", "must be host[:port]"}}},
		"grpc target empty":         {edit: func(p *policy.Plan) { p.Listener.GRPCTargets = []string{""} }, want: []problem{{"listener.grpcTargets[0]", "must not be empty"}}},
		"grpc target twice":         {edit: func(p *policy.Plan) { p.Listener.GRPCTargets = []string{"a:1", "A:1"} }, want: []problem{{"listener.grpcTargets[1]", "repeats listener.grpcTargets[0]"}}},
		"path prefix without slash": {edit: func(p *policy.Plan) { p.Listener.PathPrefix = "api" }, want: []problem{{"listener.pathPrefix", `must start with /, got "api"`}}},
		"stable cluster missing":    {edit: func(p *policy.Plan) { p.Stable.Cluster = "" }, want: []problem{{"stable.cluster", "is required"}}},
		"stable cluster with a dot": {edit: func(p *policy.Plan) { p.Stable.Cluster = "checkout.v1" }, want: []problem{{"stable.cluster", "(no dots)"}}},
		"canary cluster missing":    {edit: func(p *policy.Plan) { p.Canary.Cluster = "" }, want: []problem{{"canary.cluster", "is required"}}},
		"canary same as stable": {edit: func(p *policy.Plan) { p.Canary.Cluster = p.Stable.Cluster },
			want: []problem{{"canary.cluster", `must differ from stable.cluster, both are "checkout-v1"`}}},
		"stable endpoints missing": {edit: func(p *policy.Plan) { p.Stable.Endpoints = nil }, want: []problem{{"stable.endpoints", "needs at least one host:port"}}},
		"canary endpoint a name": {edit: func(p *policy.Plan) { p.Canary.Endpoints = []string{"127.0.0.1:1", "canary:8080"} },
			want: []problem{{"canary.endpoints[1]", "host must be an IP address"}}},
		"canary endpoint bad port": {edit: func(p *policy.Plan) { p.Canary.Endpoints = []string{"127.0.0.1:http"} },
			want: []problem{{"canary.endpoints[0]", `port must be within 1..65535, got "http"`}}},
		"duplicate endpoint": {edit: func(p *policy.Plan) { p.Stable.Endpoints = []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"} },
			want: []problem{{"stable.endpoints[2]", `duplicate endpoint "127.0.0.1:1"`}}},
		"outlier interval zero":         {edit: func(p *policy.Plan) { p.OutlierDetection.Interval = 0 }, want: []problem{{"outlierDetection.interval", "must be within 100ms..24h0m0s, got 0s"}}},
		"outlier base ejection zero":    {edit: func(p *policy.Plan) { p.OutlierDetection.BaseEjectionTime = 0 }, want: []problem{{"outlierDetection.baseEjectionTime", "must be within 1s..24h0m0s, got 0s"}}},
		"outlier max ejection over 100": {edit: func(p *policy.Plan) { p.OutlierDetection.MaxEjectionPercent = 101 }, want: []problem{{"outlierDetection.maxEjectionPercent", "must be within 0..100, got 101"}}},
		"no schedule": {edit: func(p *policy.Plan) { p.Steps = nil },
			want: []problem{{"steps", "is required (or linear, or exponential)"}}},
		"steps and linear": {edit: func(p *policy.Plan) { p.Linear = &policy.Linear{Step: 10, Every: dur(time.Minute)} },
			want: []problem{{"steps", "give only one of steps, linear and exponential"}}},
		"linear and exponential": {edit: func(p *policy.Plan) {
			p.Steps = nil
			p.Linear = &policy.Linear{Step: 10, Every: dur(time.Minute)}
			p.Exponential = &policy.Exponential{Start: 1, Factor: 2, Every: dur(time.Minute)}
		}, want: []problem{{"steps", "give only one"}}},
		"linear step 0": {edit: func(p *policy.Plan) { p.Steps = nil; p.Linear = &policy.Linear{Step: 0, Every: dur(time.Minute)} },
			want: []problem{{"linear.step", "must be within 1..100, got 0"}}},
		"linear step 101": {edit: func(p *policy.Plan) { p.Steps = nil; p.Linear = &policy.Linear{Step: 101, Every: dur(time.Minute)} },
			want: []problem{{"linear.step", "got 101"}}},
		"linear every 0": {edit: func(p *policy.Plan) { p.Steps = nil; p.Linear = &policy.Linear{Step: 10} },
			want: []problem{{"linear.every", "must be > 0"}}},
		"exponential start 0": {edit: func(p *policy.Plan) {
			p.Steps = nil
			p.Exponential = &policy.Exponential{Start: 0, Factor: 2, Every: dur(time.Minute)}
		}, want: []problem{{"exponential.start", "must be within 1..100, got 0"}}},
		"exponential factor 1": {edit: func(p *policy.Plan) {
			p.Steps = nil
			p.Exponential = &policy.Exponential{Start: 1, Factor: 1, Every: dur(time.Minute)}
		}, want: []problem{{"exponential.factor", "must be a finite number >= 1.1 (and <= 100), got 1"}}},
		"exponential every 0": {edit: func(p *policy.Plan) { p.Steps = nil; p.Exponential = &policy.Exponential{Start: 1, Factor: 2} },
			want: []problem{{"exponential.every", "must be > 0"}}},
		"weight and pause": {edit: func(p *policy.Plan) { p.Steps[1].Pause = &policy.Pause{} },
			want: []problem{{"steps[1]", "give either weight or pause, not both"}}},
		"neither weight nor pause": {edit: func(p *policy.Plan) { p.Steps[1] = policy.Step{Hold: dur(time.Second)} },
			want: []problem{{"steps[1]", "needs a weight or a pause"}}},
		"pause with a hold": {edit: func(p *policy.Plan) { p.Steps[2].Hold = dur(time.Minute) },
			want: []problem{{"steps[2].hold", "a pause waits for promote or resume; it takes no hold"}}},
		"weight over 100": {edit: func(p *policy.Plan) { p.Steps[3].Weight = intp(120) },
			want: []problem{{"steps[3].weight", "must be within 0..100, got 120"}}},
		"weight negative": {edit: func(p *policy.Plan) { p.Steps[0].Weight = intp(-1) },
			want: []problem{{"steps[0].weight", "must be within 0..100, got -1"}}},
		"weight going back": {edit: func(p *policy.Plan) { p.Steps[1].Weight = intp(5) },
			want: []problem{{"steps[1].weight", "must not be below the previous step's 10, got 5"}}},
		"same weight twice is fine": {edit: func(p *policy.Plan) { p.Steps[1].Weight = intp(10) }},
		"last weight not 100": {edit: func(p *policy.Plan) { p.Steps[3].Weight = intp(90) },
			want: []problem{{"steps[3].weight", "the last weight must be 100, got 90"}}},
		"last weight not 100, pause after it": {edit: func(p *policy.Plan) { p.Steps = []policy.Step{wstep(50, 0), pstep()} },
			want: []problem{{"steps[0].weight", "the last weight must be 100, got 50"}}},
		"only pauses": {edit: func(p *policy.Plan) { p.Steps = []policy.Step{pstep()} },
			want: []problem{{"steps", "needs at least one weight step, ending at 100"}}},
		"max error rate over 1": {edit: func(p *policy.Plan) { p.Analysis.MaxErrorRate = ptr(5.0) },
			want: []problem{{"analysis.maxErrorRate", "must be a finite number within 0..1 (a share of requests), got 5"}}},
		"max error rate negative": {edit: func(p *policy.Plan) { p.Analysis.MaxErrorRate = ptr(-0.1) },
			want: []problem{{"analysis.maxErrorRate", "got -0.1"}}},
		"min requests negative": {edit: func(p *policy.Plan) { p.Analysis.MinRequests = ptr(-1) },
			want: []problem{{"analysis.minRequests", "must be 0..1000000 (0 opts out of the evidence rule), got -1"}}},
		"hook with exec and webhook": {edit: func(p *policy.Plan) { p.Hooks.BeforeShift[0].Exec = []string{"./x"} },
			opts: policy.ValidateOptions{AllowExec: true},
			want: []problem{{"hooks.beforeShift[0]", "give either exec or webhook, not both"}}},
		"hook with neither": {edit: func(p *policy.Plan) {
			p.Hooks.AfterPromote = append(p.Hooks.AfterPromote, policy.Hook{Timeout: dur(time.Second)})
		},
			want: []problem{{"hooks.afterPromote[1]", "needs exec or webhook"}}},
		"exec hook rejected unless AllowExec": {edit: func(p *policy.Plan) { p.Hooks.AfterPromote[0] = policy.Hook{Exec: []string{"./migrate", "contract"}} },
			want: []problem{{"hooks.afterPromote[0].exec", "exec hooks are disabled on this server (set hooks.allowExec: true in its config)"}}},
		"exec hook allowed with AllowExec": {edit: func(p *policy.Plan) { p.Hooks.AfterPromote[0] = policy.Hook{Exec: []string{"./migrate", "contract"}} },
			opts: policy.ValidateOptions{AllowExec: true}},
		"exec hook with an empty command": {edit: func(p *policy.Plan) { p.Hooks.BeforeShift[0] = policy.Hook{Exec: []string{"", "x"}} },
			opts: policy.ValidateOptions{AllowExec: true},
			want: []problem{{"hooks.beforeShift[0].exec[0]", "the command must not be empty"}}},
		"webhook retries over 10": {edit: func(p *policy.Plan) { p.Hooks.BeforeShift[0].Retries = 12 },
			want: []problem{{"hooks.beforeShift[0].retries", "must be 0..10, got 12"}}},
		"webhook retries negative": {edit: func(p *policy.Plan) { p.Hooks.BeforeShift[0].Retries = -1 },
			want: []problem{{"hooks.beforeShift[0].retries", "must be 0..10, got -1"}}},
		"webhook retries 10 with a backoff is fine": {edit: func(p *policy.Plan) {
			p.Hooks.BeforeShift[0].Retries, p.Hooks.BeforeShift[0].RetryBackoff = 10, dur(time.Second)
		}},
		"retry backoff negative": {edit: func(p *policy.Plan) {
			p.Hooks.BeforeShift[0].Retries, p.Hooks.BeforeShift[0].RetryBackoff = 1, dur(-time.Second)
		}, want: []problem{{"hooks.beforeShift[0].retryBackoff", "must be >= 0, got -1s"}}},
		"retry backoff without retries": {edit: func(p *policy.Plan) { p.Hooks.AfterPromote[0].RetryBackoff = dur(time.Second) },
			want: []problem{{"hooks.afterPromote[0].retryBackoff", "needs retries > 0"}}},
		"exec hook with retries": {edit: func(p *policy.Plan) { p.Hooks.AfterPromote[0] = policy.Hook{Exec: []string{"./migrate"}, Retries: 2} },
			opts: policy.ValidateOptions{AllowExec: true},
			want: []problem{{"hooks.afterPromote[0].retries", "only webhooks are retried"}}},
		"webhook not http": {edit: func(p *policy.Plan) { p.Hooks.BeforeShift[0].Webhook.URL = "ftp://127.0.0.1/x" },
			want: []problem{{"hooks.beforeShift[0].webhook.url", `must be an http or https URL, got "ftp://127.0.0.1/x"`}}},
		"webhook without host": {edit: func(p *policy.Plan) { p.Hooks.BeforeShift[0].Webhook.URL = "http:///x" },
			want: []problem{{"hooks.beforeShift[0].webhook.url", "must be an http or https URL"}}},
		"webhook host not allowed by default": {edit: func(p *policy.Plan) { p.Hooks.AfterPromote[0].Webhook.URL = "https://hooks.example.com/contract" },
			want: []problem{{"hooks.afterPromote[0].webhook.url", `host "hooks.example.com" is not in hooks.allowHosts [127.0.0.1 ::1 localhost]`}}},
		"webhook host not in the allow list": {edit: func(p *policy.Plan) {},
			opts: policy.ValidateOptions{AllowHosts: []string{"hooks.internal"}},
			want: []problem{
				{"hooks.beforeShift[0].webhook.url", `host "127.0.0.1" is not in hooks.allowHosts [hooks.internal]`},
				{"hooks.afterPromote[0].webhook.url", `host "localhost" is not in hooks.allowHosts [hooks.internal]`},
			}},
		"webhook host in the allow list, any case": {edit: func(p *policy.Plan) { p.Hooks.AfterPromote[0].Webhook.URL = "https://Hooks.Internal:8443/x" },
			opts: policy.ValidateOptions{AllowHosts: []string{"hooks.internal", "localhost", "127.0.0.1"}}},
		"several problems, in field order": {edit: func(p *policy.Plan) {
			p.Name = "X"
			p.Steps[1].Weight = intp(5)
			p.Hooks.AfterPromote[0].Webhook.URL = "http://example.com/"
		}, want: []problem{{"name", "must match"}, {"steps[1].weight", "got 5"}, {"hooks.afterPromote[0].webhook.url", "example.com"}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := validPlan()
			tc.edit(&p)
			ps := p.Validate(tc.opts)
			checkProblems(t, ps, tc.want)
			if err := ps.Err(); (err != nil) != (len(tc.want) > 0) || err != nil && !errors.Is(err, policy.ErrInvalidPlan) {
				t.Errorf("Err() = %v", err)
			}
		})
	}
}

func TestValidateSet(t *testing.T) {
	a, b := validPlan(), validPlan()
	b.Name = "payments"
	b.Stable.Cluster, b.Canary.Cluster = "payments-v1", "payments-v2"
	b.Listener.Domains = []string{"payments.example"}
	tests := map[string]struct {
		edit  func(b *policy.Plan)
		files []string
		want  []problem
	}{
		"distinct plans":  {edit: func(b *policy.Plan) {}},
		"duplicate names": {edit: func(b *policy.Plan) { b.Name = a.Name }, want: []problem{{"name", `"checkout" is also the name of a plan in the same set`}}},
		"duplicate names in files": {edit: func(b *policy.Plan) { b.Name = a.Name }, files: []string{"a.yaml", "b.yaml"},
			want: []problem{{"name", `"checkout" is also the name of a plan in a.yaml`}}},
		"stable cluster reused": {edit: func(b *policy.Plan) { b.Stable.Cluster = a.Stable.Cluster },
			want: []problem{{"stable.cluster", `cluster "checkout-v1" is already used by plan "checkout"`}}},
		"canary cluster is another's stable": {edit: func(b *policy.Plan) { b.Canary.Cluster = a.Stable.Cluster },
			want: []problem{{"canary.cluster", `cluster "checkout-v1" is already used by plan "checkout"`}}},
		"same domain on the same listener": {edit: func(b *policy.Plan) { b.Listener.Domains = []string{"x", a.Listener.Domains[0]} },
			want: []problem{{"listener.domains", `domain "checkout.example" on 0.0.0.0:10000 is already served by plan "checkout"`}}},
		"same domain on another listener": {edit: func(b *policy.Plan) {
			b.Listener.Domains = a.Listener.Domains
			b.Listener.Address = "0.0.0.0:10001"
		}},
		"a default domain beside a named one": {edit: func(b *policy.Plan) { b.Listener.Domains = nil }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a, b := a, b
			b.Listener.Domains = append([]string(nil), b.Listener.Domains...)
			tc.edit(&b)
			ps := policy.ValidateSet([]policy.Plan{a, b}, tc.files)
			checkProblems(t, ps, tc.want)
			if tc.files != nil && len(ps) > 0 && ps[0].File != tc.files[1] {
				t.Errorf("problem names file %q, want %q", ps[0].File, tc.files[1])
			}
		})
	}
	// Two plans both left at the default domain "*" on one listener clash.
	x, y := a, b
	x.Listener.Domains, y.Listener.Domains = nil, nil
	checkProblems(t, policy.ValidateSet([]policy.Plan{x, y}, nil), []problem{{"listener.domains", `domain "*" on 0.0.0.0:10000 is already served by plan "checkout"`}})
}

const goodYAML = `name: checkout
listener:
  address: 0.0.0.0:10000
  domains: ["*"]
  pathPrefix: /
stable:
  cluster: checkout-v1
  endpoints: ["127.0.0.1:8081"]
canary:
  cluster: checkout-v2
  endpoints: ["127.0.0.1:8082"]
outlierDetection:
  consecutive5xx: 3
  interval: 1s
  baseEjectionTime: 10s
  maxEjectionPercent: 100
steps:
  - weight: 10
    hold: 30s
  - weight: 50
    hold: 1m
  - pause: {}
  - weight: 100
analysis:
  stableFor: 10s
  staleAfter: 10s
  rollbackAfter: 2m
hooks:
  beforeShift:  [{exec: ["./migrate", "expand"],   timeout: 2m}]
  afterPromote: [{webhook: {url: "http://127.0.0.1:9000/contract", timeout: 5s}}]
`

// TestParseDesignExample parses DESIGN.md's plan and checks every field.
func TestParseDesignExample(t *testing.T) {
	plans, ps := policy.ParseAndValidate([]byte(goodYAML), "checkout.yaml", policy.ValidateOptions{AllowExec: true})
	if len(ps) != 0 || len(plans) != 1 {
		t.Fatalf("%d plans, problems: %v", len(plans), ps)
	}
	p := plans[0]
	want := policy.Plan{
		Name:             "checkout",
		Listener:         policy.Listener{Address: "0.0.0.0:10000", Domains: []string{"*"}, PathPrefix: "/"},
		Stable:           policy.Backend{Cluster: "checkout-v1", Endpoints: []string{"127.0.0.1:8081"}},
		Canary:           policy.Backend{Cluster: "checkout-v2", Endpoints: []string{"127.0.0.1:8082"}},
		OutlierDetection: &policy.OutlierDetection{Consecutive5xx: 3, Interval: dur(time.Second), BaseEjectionTime: dur(10 * time.Second), MaxEjectionPercent: 100},
		Steps:            []policy.Step{wstep(10, 30*time.Second), wstep(50, time.Minute), pstep(), wstep(100, 0)},
		Analysis:         policy.Analysis{StableFor: durp(10 * time.Second), StaleAfter: dur(10 * time.Second), RollbackAfter: durp(2 * time.Minute)},
		Hooks: policy.Hooks{
			BeforeShift:  []policy.Hook{{Exec: []string{"./migrate", "expand"}, Timeout: dur(2 * time.Minute)}},
			AfterPromote: []policy.Hook{{Webhook: &policy.Webhook{URL: "http://127.0.0.1:9000/contract", Timeout: dur(5 * time.Second)}}},
		},
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("parsed\n%+v\nwant\n%+v", p, want)
	}
	// Without allowExec the same file is rejected, naming the hook.
	_, ps = policy.ParseAndValidate([]byte(goodYAML), "checkout.yaml", policy.ValidateOptions{})
	checkProblems(t, ps, []problem{{"hooks.beforeShift[0].exec", "exec hooks are disabled"}})
	if ps[0].File != "checkout.yaml" || !strings.HasPrefix(ps[0].String(), "checkout.yaml: hooks.beforeShift[0].exec: ") {
		t.Errorf("problem reads %q, want it to start with the file and the field", ps[0])
	}
	// The JSON form (the API's) round-trips to the same plan.
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back policy.Plan
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", data, err)
	}
	if !reflect.DeepEqual(back, p) {
		t.Errorf("JSON round trip\n%+v\nwant\n%+v", back, p)
	}
	// And so does YAML.
	data, err = yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	again, ps := policy.ParseYAML(data, "")
	if len(ps) != 0 || len(again) != 1 || !reflect.DeepEqual(again[0], p) {
		t.Errorf("YAML round trip: %v\n%s", ps, data)
	}
}

// TestParseProblems checks that decoding problems name the field path.
func TestParseProblems(t *testing.T) {
	head := "name: a\nlistener: {address: \"0.0.0.0:1\"}\nstable: {cluster: a1, endpoints: [\"127.0.0.1:1\"]}\ncanary: {cluster: a2, endpoints: [\"127.0.0.1:2\"]}\n"
	tests := map[string]struct {
		yaml string
		want []problem
	}{
		"unknown top-level field": {yaml: head + "stepz: []\nsteps: [{weight: 100}]\n", want: []problem{{"stepz", "unknown field"}}},
		"unknown nested field":    {yaml: head + "steps: [{weight: 100}]\nanalysis:\n  stableFour: 10s\n", want: []problem{{"analysis.stableFour", "unknown field"}}},
		"unknown field in a step": {yaml: head + "steps:\n  - weight: 10\n  - weight: 100\n    holdd: 1s\n", want: []problem{{"steps[1].holdd", "unknown field"}}},
		"unknown field in a flow mapping": {yaml: "name: a\nlistener: {address: \"0.0.0.0:1\", domainz: [x]}\nsteps: [{weight: 100}]\n",
			want: []problem{{"listener.domainz", "unknown field"}}},
		"weight not a number": {yaml: head + "steps:\n  - weight: 10\n  - weight: abc\n  - weight: 100\n", want: []problem{{"steps[1].weight", "must be a whole number, got `abc`"}}},
		"bad duration":        {yaml: head + "steps:\n  - weight: 10\n    hold: 10x\n  - weight: 100\n", want: []problem{{"steps[0].hold", `invalid duration "10x" (want e.g. 30s, 1m, 1h30m)`}}},
		"duration without unit": {yaml: head + "steps:\n  - weight: 10\n    hold: 30\n  - weight: 100\n",
			want: []problem{{"steps[0].hold", `invalid duration "30"`}}},
		"negative duration":                 {yaml: head + "steps: [{weight: 100}]\nanalysis:\n  stableFor: -5s\n", want: []problem{{"analysis.stableFor", `duration "-5s" must not be negative`}}},
		"string for a list":                 {yaml: "name: a\nstable:\n  cluster: b1\n  endpoints: \"127.0.0.1:1\"\n", want: []problem{{"stable.endpoints", "must be a list"}}},
		"type error in the first list item": {yaml: head + "steps:\n  - weight: x\n  - weight: 100\n", want: []problem{{"steps[0].weight", "must be a whole number, got `x`"}}},
		"several problems":                  {yaml: head + "stepz: 1\nsteps:\n  - weight: 1\n  - weight: x\n", want: []problem{{"stepz", "unknown field"}, {"steps[1].weight", "must be a whole number"}}},
		"syntax error":                      {yaml: "name: [x\n", want: []problem{{"", "document 1: yaml: line 1"}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			plans, ps := policy.ParseYAML([]byte(tc.yaml), "f.yaml")
			checkProblems(t, ps, tc.want)
			if len(plans) != 0 {
				t.Errorf("a document with problems returned a plan")
			}
			for _, p := range ps {
				if p.File != "f.yaml" {
					t.Errorf("problem %v does not name the file", p)
				}
			}
		})
	}
}

// TestParseAndValidateReportsOnce: a field that failed to decode is not
// reported again by validation.
func TestParseAndValidateReportsOnce(t *testing.T) {
	doc := strings.Replace(goodYAML, "weight: 50", "weight: fifty", 1)
	_, ps := policy.ParseAndValidate([]byte(doc), "f.yaml", policy.ValidateOptions{AllowExec: true})
	checkProblems(t, ps, []problem{{"steps[1].weight", "must be a whole number, got `fifty`"}})
}

func TestParseMultiDocument(t *testing.T) {
	second := strings.NewReplacer("checkout", "payments", "10000", "10001").Replace(goodYAML)
	tests := map[string]struct {
		yaml  string
		names []string
		want  []problem
	}{
		"two documents":             {yaml: goodYAML + "---\n" + second, names: []string{"checkout", "payments"}},
		"leading and trailing ---":  {yaml: "---\n" + goodYAML + "---\n" + second + "---\n", names: []string{"checkout", "payments"}},
		"empty documents skipped":   {yaml: goodYAML + "---\n---\n# only a comment\n---\n" + second, names: []string{"checkout", "payments"}},
		"a bad document is skipped": {yaml: goodYAML + "---\n" + second + "extra: 1\n", names: []string{"checkout"}, want: []problem{{"extra", "unknown field"}}},
		"a syntax error stops the file": {yaml: goodYAML + "---\nname: [x\n---\n" + second, names: []string{"checkout"},
			want: []problem{{"", "document 2: yaml: line"}}},
		"empty file": {yaml: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			plans, ps := policy.ParseYAML([]byte(tc.yaml), "f.yaml")
			checkProblems(t, ps, tc.want)
			var names []string
			for _, p := range plans {
				names = append(names, p.Name)
			}
			if !reflect.DeepEqual(names, tc.names) {
				t.Errorf("plans %v, want %v", names, tc.names)
			}
		})
	}
}

func TestLoadPaths(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	payments := strings.NewReplacer("checkout", "payments", "10000", "10001").Replace(goodYAML)
	search := strings.NewReplacer("checkout", "search", "10000", "10002").Replace(goodYAML)
	write("plans/b-checkout.yaml", goodYAML)
	write("plans/a-payments.yml", payments)
	write("plans/notes.txt", "not a plan")
	write("plans/sub/search.yaml", search) // folders are not recursive
	single := write("search.yaml", search)
	opts := policy.ValidateOptions{AllowExec: true}

	got, ps := policy.LoadPaths([]string{filepath.Join(dir, "plans"), single}, opts)
	if len(ps) != 0 {
		t.Fatalf("problems: %v", ps)
	}
	var names, files []string
	for _, sp := range got {
		names = append(names, sp.Plan.Name)
		files = append(files, filepath.Base(sp.File))
	}
	if want := []string{"checkout", "payments", "search"}; !reflect.DeepEqual(names, want) {
		t.Errorf("plans %v, want %v sorted by name", names, want)
	}
	if want := []string{"b-checkout.yaml", "a-payments.yml", "search.yaml"}; !reflect.DeepEqual(files, want) {
		t.Errorf("files %v, want %v", files, want)
	}

	// A plan in two files is a set problem naming both files.
	dup := write("dup.yaml", goodYAML)
	_, ps = policy.LoadPaths([]string{filepath.Join(dir, "plans", "b-checkout.yaml"), dup}, opts)
	if len(ps) == 0 || ps[0].Field != "name" || ps[0].File != dup || !strings.Contains(ps[0].Msg, "b-checkout.yaml") {
		t.Errorf("duplicate across files: %v", ps)
	}
	// A missing path, and a value problem, each name their file.
	bad := write("bad.yaml", strings.Replace(goodYAML, "weight: 50", "weight: 5", 1))
	_, ps = policy.LoadPaths([]string{filepath.Join(dir, "missing.yaml"), bad}, opts)
	if len(ps) != 2 || ps[0].File != filepath.Join(dir, "missing.yaml") || ps[1].File != bad || ps[1].Field != "steps[1].weight" {
		t.Fatalf("problems: %v", ps)
	}
	if line := ps[1].String(); line != bad+": steps[1].weight: must not be below the previous step's 10, got 5" {
		t.Errorf("problem line %q", line)
	}
}

func TestProblemsError(t *testing.T) {
	ps := policy.Problems{
		{File: "a.yaml", Field: "steps[2].weight", Msg: "must be within 0..100, got 120"},
		{Field: "name", Msg: "is required"},
		{Msg: "document 2: yaml: bad"},
	}
	want := "a.yaml: steps[2].weight: must be within 0..100, got 120\nname: is required\ndocument 2: yaml: bad"
	if ps.Error() != want {
		t.Errorf("Error() = %q, want %q", ps.Error(), want)
	}
	if !errors.Is(ps, policy.ErrInvalidPlan) || !errors.Is(ps.Err(), policy.ErrInvalidPlan) {
		t.Errorf("Problems does not wrap ErrInvalidPlan")
	}
	if policy.Problems(nil).Err() != nil {
		t.Errorf("no problems is not nil")
	}
}

func TestSchedule(t *testing.T) {
	m := time.Minute
	tests := map[string]struct {
		plan policy.Plan
		want []policy.Step
	}{
		"explicit steps as given": {plan: policy.Plan{Steps: []policy.Step{wstep(10, m), pstep(), wstep(100, 0)}},
			want: []policy.Step{wstep(10, m), pstep(), wstep(100, 0)}},
		"linear 30": {plan: policy.Plan{Linear: &policy.Linear{Step: 30, Every: dur(m)}},
			want: []policy.Step{wstep(30, m), wstep(60, m), wstep(90, m), wstep(100, 0)}},
		"linear 25 ends exactly at 100": {plan: policy.Plan{Linear: &policy.Linear{Step: 25, Every: dur(m)}},
			want: []policy.Step{wstep(25, m), wstep(50, m), wstep(75, m), wstep(100, 0)}},
		"linear 100": {plan: policy.Plan{Linear: &policy.Linear{Step: 100, Every: dur(m)}},
			want: []policy.Step{wstep(100, 0)}},
		"exponential 5×2": {plan: policy.Plan{Exponential: &policy.Exponential{Start: 5, Factor: 2, Every: dur(m)}},
			want: []policy.Step{wstep(5, m), wstep(10, m), wstep(20, m), wstep(40, m), wstep(80, m), wstep(100, 0)}},
		"exponential 10×3": {plan: policy.Plan{Exponential: &policy.Exponential{Start: 10, Factor: 3, Every: dur(m)}},
			want: []policy.Step{wstep(10, m), wstep(30, m), wstep(90, m), wstep(100, 0)}},
		"exponential with a small factor never repeats a weight": {plan: policy.Plan{Exponential: &policy.Exponential{Start: 1, Factor: 1.5, Every: dur(m)}},
			want: []policy.Step{wstep(1, m), wstep(2, m), wstep(3, m), wstep(5, m), wstep(7, m), wstep(11, m), wstep(17, m), wstep(25, m), wstep(38, m), wstep(57, m), wstep(86, m), wstep(100, 0)}},
		"exponential starting at 100": {plan: policy.Plan{Exponential: &policy.Exponential{Start: 100, Factor: 2, Every: dur(m)}},
			want: []policy.Step{wstep(100, 0)}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tc.plan.Schedule()
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Schedule() = %s, want %s", stepsString(got), stepsString(tc.want))
			}
			// A generated schedule is itself a valid steps list.
			p := validPlan()
			p.Steps = got
			if ps := p.Validate(policy.ValidateOptions{}); len(ps) != 0 {
				t.Errorf("generated steps do not validate: %v", ps)
			}
		})
	}
}

func stepsString(steps []policy.Step) string {
	var s []string
	for _, st := range steps {
		if st.Pause != nil {
			s = append(s, "pause")
		} else {
			s = append(s, fmt.Sprintf("%d/%s", *st.Weight, st.Hold))
		}
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestWithDefaults(t *testing.T) {
	p := policy.Plan{Name: "a"}.WithDefaults()
	if !reflect.DeepEqual(p.Listener.Domains, []string{"*"}) || p.Listener.PathPrefix != "/" {
		t.Errorf("listener defaults %+v", p.Listener)
	}
	if *p.OutlierDetection != policy.DefaultOutlierDetection() || p.OutlierDetection.MaxEjectionPercent != 100 {
		t.Errorf("outlier detection %+v", p.OutlierDetection)
	}
	a := p.Analysis
	if a.StaleAfter.D() != policy.DefaultStaleAfter || a.StableFor.D() != policy.DefaultStableFor || a.RollbackAfter.D() != policy.DefaultRollbackAfter ||
		a.DrainTimeout.D() != policy.DefaultDrainTimeout || *a.MinRequests != policy.DefaultMinRequests {
		t.Errorf("analysis defaults %+v", a)
	}
	// An explicit 0s stays 0: stableFor 0 counts at once, rollbackAfter 0 disables.
	q := policy.Plan{Analysis: policy.Analysis{StableFor: durp(0), RollbackAfter: durp(0)}}.WithDefaults()
	if q.Analysis.StableForDuration() != 0 || q.Analysis.RollbackAfterDuration() != 0 {
		t.Errorf("explicit zeros replaced: stableFor %s rollbackAfter %s", q.Analysis.StableForDuration(), q.Analysis.RollbackAfterDuration())
	}
	if (policy.Analysis{}).StableForDuration() != policy.DefaultStableFor || (policy.Analysis{}).RollbackAfterDuration() != policy.DefaultRollbackAfter {
		t.Errorf("unset durations do not default")
	}
	// WithDefaults does not write through to the original.
	orig := validPlan()
	orig.OutlierDetection = nil
	_ = orig.WithDefaults()
	if orig.OutlierDetection != nil {
		t.Errorf("WithDefaults changed its receiver")
	}
}

func TestDurationEncoding(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		"seconds":       {in: `"30s"`, want: 30 * time.Second},
		"composite":     {in: `"1h30m"`, want: 90 * time.Minute},
		"bare zero":     {in: `"0"`, want: 0},
		"no unit":       {in: `"30"`, wantErr: `invalid duration "30"`},
		"negative":      {in: `"-1s"`, wantErr: "must not be negative"},
		"number":        {in: `30`, wantErr: "duration must be a string"},
		"fractional ok": {in: `"1.5s"`, want: 1500 * time.Millisecond},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var d policy.Duration
			err := json.Unmarshal([]byte(tc.in), &d)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want …%s…", err, tc.wantErr)
				}
				return
			}
			if err != nil || d.D() != tc.want {
				t.Fatalf("got %s, %v; want %s", d, err, tc.want)
			}
			out, _ := json.Marshal(d)
			if string(out) != `"`+tc.want.String()+`"` {
				t.Errorf("marshals as %s", out)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
