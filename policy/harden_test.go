package policy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
	"github.com/shiftplane/shiftplane/xds"
)

// hardenBase is a valid plan in YAML; each case of TestHostilePlans
// replaces one line of it.
const hardenBase = `name: checkout
listener:
  address: 127.0.0.1:10000
  domains: ["shop.example.com"]
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
exponential: {start: 10, factor: 2, every: 30s}
analysis:
  maxErrorRate: 0.05
`

// hostilePlans are the plans of issue 20: each must be refused, naming the
// field, by `shiftplane validate` and by the API. old is a line of
// hardenBase, new what replaces it.
var hostilePlans = map[string]struct {
	old, new string
	field    string // the field the problem must name
	msg      string // a part of its message
	// apiRefused: the API cannot even carry the value (proto types); the
	// JSON form of the message must be refused by protojson instead.
	apiJSON string
	apiMsg  string // when protojson accepts apiJSON, what validation says
}{
	"factor NaN":        {old: "factor: 2", new: "factor: .nan", field: "exponential.factor", msg: "must be a finite number >= 1.1 (and <= 100), got NaN"},
	"factor +Inf":       {old: "factor: 2", new: "factor: .inf", field: "exponential.factor", msg: "got +Inf"},
	"factor -Inf":       {old: "factor: 2", new: "factor: -.inf", field: "exponential.factor", msg: "got -Inf"},
	"factor barely > 1": {old: "factor: 2", new: "factor: 1.0000000000000002", field: "exponential.factor", msg: "got 1.0000000000000002"},
	"factor huge":       {old: "factor: 2", new: "factor: 1e308", field: "exponential.factor", msg: "got 1e+308"},
	"weight 10.9": {old: "exponential: {start: 10, factor: 2, every: 30s}", new: "steps: [{weight: 10.9, hold: 1s}, {weight: 100}]",
		field: "steps[0].weight", msg: "must be a whole number, got 10.9", apiJSON: `{"steps":[{"weight":10.9}]}`},
	"weight 1e3": {old: "exponential: {start: 10, factor: 2, every: 30s}", new: "steps: [{weight: 1e3, hold: 1s}, {weight: 100}]",
		field: "steps[0].weight", msg: "must be a whole number, got 1e3",
		apiJSON: `{"steps":[{"weight":1e3},{"weight":100}]}`, apiMsg: "must be within 0..100, got 1000"},
	"domain with newline":    {old: `domains: ["shop.example.com"]`, new: `domains: ["shop.example.com\nx-evil: 1"]`, field: "listener.domains[0]", msg: "must be a host name"},
	"domain with CR":         {old: `domains: ["shop.example.com"]`, new: `domains: ["shop\r.example.com"]`, field: "listener.domains[0]", msg: "must be a host name"},
	"domain with NUL":        {old: `domains: ["shop.example.com"]`, new: `domains: ["shop\0.example.com"]`, field: "listener.domains[0]", msg: "must be a host name"},
	"domain with space":      {old: `domains: ["shop.example.com"]`, new: `domains: ["shop example.com"]`, field: "listener.domains[0]", msg: "must be a host name"},
	"domain two wildcards":   {old: `domains: ["shop.example.com"]`, new: `domains: ["*.example.*"]`, field: "listener.domains[0]", msg: "one * as a prefix or suffix"},
	"domain inner wildcard":  {old: `domains: ["shop.example.com"]`, new: `domains: ["shop.*.com"]`, field: "listener.domains[0]", msg: "one * as a prefix or suffix"},
	"domain repeated":        {old: `domains: ["shop.example.com"]`, new: `domains: ["shop.example.com", "SHOP.example.com"]`, field: "listener.domains[1]", msg: "repeats listener.domains[0]"},
	"domain too long":        {old: `domains: ["shop.example.com"]`, new: `domains: ["` + strings.Repeat("a", 300) + `"]`, field: "listener.domains[0]", msg: "at most 259 characters"},
	"path prefix newline":    {old: "pathPrefix: /", new: `pathPrefix: "/a\nb"`, field: "listener.pathPrefix", msg: "printable ASCII"},
	"outlier interval 1ns":   {old: "interval: 1s", new: "interval: 1ns", field: "outlierDetection.interval", msg: "must be within 100ms..24h0m0s, got 1ns"},
	"outlier ejection 1ms":   {old: "baseEjectionTime: 10s", new: "baseEjectionTime: 1ms", field: "outlierDetection.baseEjectionTime", msg: "must be within 1s..24h0m0s, got 1ms"},
	"outlier interval 1000h": {old: "interval: 1s", new: "interval: 1000h", field: "outlierDetection.interval", msg: "got 1000h0m0s"},
	"max error rate NaN":     {old: "maxErrorRate: 0.05", new: "maxErrorRate: .nan", field: "analysis.maxErrorRate", msg: "must be a finite number within 0..1"},
	"max error rate Inf":     {old: "maxErrorRate: 0.05", new: "maxErrorRate: .inf", field: "analysis.maxErrorRate", msg: "got +Inf"},
	"every beyond a year":    {old: "every: 30s", new: "every: 9000h", field: "exponential.every", msg: "must be at most 8760h0m0s"},
	"too many endpoints":     {old: `endpoints: ["127.0.0.1:8082"]`, new: "endpoints: [" + manyEndpoints(policy.MaxEndpoints+1) + "]", field: "canary.endpoints", msg: "at most 1000 endpoints, got 1001"},
	"exponential start 0":    {old: "start: 10", new: "start: 0", field: "exponential.start", msg: "must be within 1..100"},
	"exponential start huge": {old: "start: 10", new: "start: 1e30", field: "exponential.start", msg: "must be a whole number, got `1e30`", apiJSON: `{"exponential":{"start":1e30}}`},
	// canary.match, canary.sessionAffinity, mirror and matchOnly (issue 13).
	"match header not a token":                        {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: \"x canary\", exact: \"1\"}]", field: "canary.match[0].header", msg: "must be an HTTP token"},
	"match two names":                                 {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: a, cookie: b, exact: \"1\"}]", field: "canary.match[0]", msg: "give exactly one of header, cookie and query"},
	"match no comparison":                             {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: a}]", field: "canary.match[0]", msg: "give exactly one of exact, prefix, regex, present: true and absent: true, got 0"},
	"match two comparisons":                           {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: a, exact: x, present: true}]", field: "canary.match[0]", msg: "got 2"},
	"match regex unbalanced":                          {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: a, regex: \"([a-z\"}]", field: "canary.match[0].regex", msg: "does not compile as RE2"},
	"match regex backreference":                       {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{cookie: a, regex: '(a)\\1'}]", field: "canary.match[0].regex", msg: "does not compile as RE2"},
	"match regex lookahead":                           {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: a, regex: 'a(?=b)'}]", field: "canary.match[0].regex", msg: "does not compile as RE2"},
	"match regex too big":                             {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: a, regex: 'a{200}'}]", field: "canary.match[0].regex", msg: "compiles to about 206 RE2 instructions, Envoy refuses more than 100"},
	"match cookie regex too big wrapped":              {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{cookie: build, regex: '[a-z0-9]{40}'}]", field: "canary.match[0].regex", msg: "Envoy refuses more than 100"},
	"affinity cookie name too long for Envoy's regex": {old: canaryEndpoints, new: canaryEndpoints + "\n  sessionAffinity: {cookieName: " + strings.Repeat("c", 90) + ", maxAge: 1h}", field: "canary.sessionAffinity.cookieName", msg: "Envoy refuses more than 100"},
	"match cookie value semicolon":                    {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{cookie: t, exact: \"a;b\"}]", field: "canary.match[0].exact", msg: "a cookie value cannot hold"},
	"match header value newline":                      {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{header: t, exact: \"a\\nb\"}]", field: "canary.match[0].exact", msg: "must be printable ASCII"},
	"match query name":                                {old: canaryEndpoints, new: canaryEndpoints + "\n  match: [{query: \"a&b\", present: true}]", field: "canary.match[0].query", msg: "query parameter name"},
	"match on the stable":                             {old: `endpoints: ["127.0.0.1:8081"]`, new: `endpoints: ["127.0.0.1:8081"]` + "\n  match: [{header: a, present: true}]", field: "stable.match", msg: "only the canary takes match rules"},
	"affinity cookie name":                            {old: canaryEndpoints, new: canaryEndpoints + "\n  sessionAffinity: {cookieName: \"a=b\", maxAge: 1h}", field: "canary.sessionAffinity.cookieName", msg: "must be an HTTP token"},
	"affinity no cookie name":                         {old: canaryEndpoints, new: canaryEndpoints + "\n  sessionAffinity: {maxAge: 1h}", field: "canary.sessionAffinity.cookieName", msg: "must not be empty"},
	"affinity max-age 0":                              {old: canaryEndpoints, new: canaryEndpoints + "\n  sessionAffinity: {cookieName: c, maxAge: 0s}", field: "canary.sessionAffinity.maxAge", msg: "must be whole seconds within 1s..9600h0m0s (what browsers keep), got 0s"},
	"affinity max-age 500 days":                       {old: canaryEndpoints, new: canaryEndpoints + "\n  sessionAffinity: {cookieName: c, maxAge: 12000h}", field: "canary.sessionAffinity.maxAge", msg: "got 12000h0m0s"},
	"affinity max-age fraction":                       {old: canaryEndpoints, new: canaryEndpoints + "\n  sessionAffinity: {cookieName: c, maxAge: 1500ms}", field: "canary.sessionAffinity.maxAge", msg: "got 1.5s"},
	"affinity on the stable":                          {old: `endpoints: ["127.0.0.1:8081"]`, new: `endpoints: ["127.0.0.1:8081"]` + "\n  sessionAffinity: {cookieName: c, maxAge: 1h}", field: "stable.sessionAffinity", msg: "only the canary"},
	"affinity with a mirror step": {old: canaryToSchedule, new: canaryEndpoints + "\n  sessionAffinity: {cookieName: c, maxAge: 1h}\nsteps: [{mirror: 50, hold: 1s}, {weight: 100}]",
		field: "canary.sessionAffinity", msg: "cannot be combined with a mirror step (steps[0].mirror)"},
	"mirror with a weight":    {old: schedule, new: "steps: [{weight: 10, mirror: 50, hold: 1s}, {weight: 100}]", field: "steps[0].mirror", msg: "a mirror step sends no user traffic to the canary: give weight 0 or leave it out, got weight 10"},
	"mirror 150":              {old: schedule, new: "steps: [{mirror: 150, hold: 1s}, {weight: 100}]", field: "steps[0].mirror", msg: "must be a percentage within 1..100, got 150"},
	"mirror negative":         {old: schedule, new: "steps: [{mirror: -5, hold: 1s}, {weight: 100}]", field: "steps[0].mirror", msg: "got -5"},
	"mirror on a pause":       {old: schedule, new: "steps: [{pause: {}, mirror: 20}, {weight: 100}]", field: "steps[0].mirror", msg: "a pause step mirrors nothing"},
	"matchOnly without match": {old: schedule, new: "steps: [{matchOnly: {}, hold: 1s}, {weight: 100}]", field: "steps[0].matchOnly", msg: "needs canary.match"},
	"matchOnly with a weight": {old: canaryToSchedule, new: canaryEndpoints + "\n  match: [{header: a, present: true}]\nsteps: [{matchOnly: {}, weight: 5, hold: 1s}, {weight: 100}]",
		field: "steps[0].matchOnly", msg: "give weight 0 or leave it out, got weight 5"},
}

// Lines of hardenBase the traffic-policy cases extend.
const (
	canaryEndpoints  = `endpoints: ["127.0.0.1:8082"]`
	schedule         = "exponential: {start: 10, factor: 2, every: 30s}"
	canaryToSchedule = canaryEndpoints + `
outlierDetection:
  consecutive5xx: 3
  interval: 1s
  baseEjectionTime: 10s
  maxEjectionPercent: 100
` + schedule
)

func manyEndpoints(n int) string {
	es := make([]string, n)
	for i := range es {
		es[i] = fmt.Sprintf("\"10.%d.%d.%d:8082\"", i/65536%256, i/256%256, i%256)
	}
	return strings.Join(es, ", ")
}

func TestHostilePlans(t *testing.T) {
	if ps := hardenValidate(t, hardenBase); len(ps) != 0 {
		t.Fatalf("the base plan must be valid: %v", ps)
	}
	dir := t.TempDir()
	for name, tc := range hostilePlans {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(hardenBase, tc.old) {
				t.Fatalf("%q is not a line of the base plan", tc.old)
			}
			doc := strings.Replace(hardenBase, tc.old, tc.new, 1)
			start := time.Now()

			// shiftplane validate: policy.LoadPaths over a file.
			f := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
			if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			_, ps := policy.LoadPaths([]string{f}, policy.ValidateOptions{})
			wantProblem(t, "validate", ps, tc.field, tc.msg)

			// The API: the same plan as a message, converted and validated.
			if tc.apiJSON != "" {
				// Whole-number fields are int32 in the proto: the
				// message cannot carry 10.9, and its JSON is refused.
				var pb shiftplanev1.Plan
				err := protojson.Unmarshal([]byte(tc.apiJSON), &pb)
				switch {
				case err == nil && tc.apiMsg == "":
					t.Errorf("API: protojson accepted %s", tc.apiJSON)
				case err == nil:
					_, ps := api.PlanFromProto(&pb, policy.ValidateOptions{})
					wantProblem(t, "API", ps, tc.field, tc.apiMsg)
				}
			} else {
				plans, ps := policy.ParseYAML([]byte(doc), name)
				if len(ps) != 0 || len(plans) != 1 {
					t.Fatalf("the case must parse for the API path: %v", ps)
				}
				_, ps = api.PlanFromProto(api.PlanToProto(plans[0]), policy.ValidateOptions{})
				wantProblem(t, "API", ps, tc.field, tc.msg)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %s, want under a second", d)
			}
		})
	}
}

func hardenValidate(t *testing.T, doc string) policy.Problems {
	t.Helper()
	_, ps := policy.ParseAndValidate([]byte(doc), "base.yaml", policy.ValidateOptions{})
	return ps
}

func wantProblem(t *testing.T, where string, ps policy.Problems, field, msg string) {
	t.Helper()
	for _, p := range ps {
		if p.Field == field && strings.Contains(p.Msg, msg) {
			return
		}
	}
	t.Errorf("%s: no problem %s: …%s…; got %v", where, field, msg, ps)
}

// TestScheduleFactorsBounded: Schedule ends quickly for any factor, valid
// or not, and its weights only rise and end at 100.
func TestScheduleFactorsBounded(t *testing.T) {
	for _, f := range []float64{1.0000000000000002, 1.1, 1.5, 2, 100, 1e308} {
		for _, start := range []int{1, 10, 99, 100} {
			p := policy.Plan{Exponential: &policy.Exponential{Start: start, Factor: f, Every: policy.Duration(time.Second)}}
			steps := p.Schedule()
			if len(steps) > 101 {
				t.Errorf("start %d factor %g: %d steps", start, f, len(steps))
			}
			checkRising(t, steps)
		}
	}
	// The weights of valid plans are what they always were.
	p := policy.Plan{Exponential: &policy.Exponential{Start: 10, Factor: 1.5, Every: policy.Duration(time.Second)}}
	var got []int
	for _, s := range p.Schedule() {
		got = append(got, *s.Weight)
	}
	if fmt.Sprint(got) != "[10 15 22 33 50 75 100]" {
		t.Errorf("start 10 factor 1.5 = %v", got)
	}
}

func checkRising(t *testing.T, steps []policy.Step) {
	t.Helper()
	last := -1
	for _, s := range steps {
		if s.Weight == nil {
			continue
		}
		if *s.Weight <= last || *s.Weight > 100 {
			t.Fatalf("weights not strictly rising within 0..100: %d after %d", *s.Weight, last)
		}
		last = *s.Weight
	}
	if last != 100 {
		t.Fatalf("schedule ends at %d, not 100", last)
	}
}

// checkTranslates asserts what every valid plan must do (translateProblem).
func checkTranslates(t *testing.T, p policy.Plan) {
	t.Helper()
	if err := translateProblem(p); err != nil {
		t.Fatal(err)
	}
}

// translateProblem says what is wrong when a plan does not schedule within
// a bounded number of steps, or does not translate at every weight of its
// schedule into resources that pass go-control-plane's generated validation.
func translateProblem(p policy.Plan) error {
	steps := p.Schedule()
	if len(steps) > policy.MaxSteps+1 {
		return fmt.Errorf("plan %q: %d steps", p.Name, len(steps))
	}
	weights := []int{0}
	for _, s := range steps {
		if s.Weight != nil {
			weights = append(weights, *s.Weight)
		}
	}
	// Every step as the engine publishes it, with its traffic policy
	// (canary.match, mirror, affinity), then the plain weights.
	wp := p.WithDefaults()
	var services []policy.ServiceState
	for i, s := range wp.Schedule() {
		st := policy.State{Phase: policy.PhaseProgressing, StepIndex: i, CanaryPublished: true, StablePublished: true, Created: time.Unix(1700000000, 0)}
		if s.Pause != nil {
			st.Phase = policy.PhasePaused
		} else {
			st.Weight = *s.Weight
		}
		ss := policy.ServiceStateFor(p, st.Weight)
		policy.TrafficFor(wp, wp.Schedule(), st).Apply(&ss)
		services = append(services, ss)
	}
	for _, w := range weights {
		services = append(services, policy.ServiceStateFor(p, w))
	}
	for _, ss := range services {
		w := ss.CanaryWeight
		res, err := xds.Translate(policy.DesiredState{Services: []policy.ServiceState{ss}})
		if err != nil {
			return fmt.Errorf("plan %q at weight %d validates but does not translate: %v", p.Name, w, err)
		}
		for _, group := range [][]any{anys(res.Clusters), anys(res.Endpoints), anys(res.Listeners), anys(res.Routes)} {
			for _, r := range group {
				v, ok := r.(interface{ ValidateAll() error })
				if !ok {
					return fmt.Errorf("%T has no ValidateAll", r)
				}
				if err := v.ValidateAll(); err != nil {
					return fmt.Errorf("plan %q at weight %d: %T fails Envoy's validation: %v", p.Name, w, r, err)
				}
			}
		}
	}
	return nil
}

func anys[T any](xs []T) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// TestValidPlansTranslate: the examples, the base plan and a plan at every
// size cap translate into resources Envoy's validation accepts.
func TestValidPlansTranslate(t *testing.T) {
	docs := map[string]string{"base": hardenBase, "at the caps": capPlanYAML()}
	files, _ := filepath.Glob("../examples/*.yaml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[f] = string(b)
	}
	for name, doc := range docs {
		plans, ps := policy.ParseAndValidate([]byte(doc), name, policy.ValidateOptions{})
		if len(ps) != 0 {
			t.Fatalf("%s: %v", name, ps)
		}
		for _, p := range plans {
			checkTranslates(t, p)
		}
	}
}

// capPlanYAML is the largest plan validation accepts in each dimension that
// grows a message: endpoints, domains, steps.
func capPlanYAML() string {
	doc := strings.Replace(hardenBase, `endpoints: ["127.0.0.1:8081"]`, "endpoints: ["+manyEndpoints(policy.MaxEndpoints)+"]", 1)
	canary := make([]string, policy.MaxEndpoints)
	for i := range canary {
		canary[i] = fmt.Sprintf("\"10.200.%d.%d:8082\"", i/256, i%256)
	}
	doc = strings.Replace(doc, `endpoints: ["127.0.0.1:8082"]`, "endpoints: ["+strings.Join(canary, ", ")+"]", 1)
	domains := make([]string, policy.MaxDomains)
	for i := range domains {
		domains[i] = fmt.Sprintf("%q", fmt.Sprintf("shop-%d.%s.example.com", i, strings.Repeat("x", 200)))
	}
	doc = strings.Replace(doc, `domains: ["shop.example.com"]`, "domains: ["+strings.Join(domains, ", ")+"]", 1)
	steps := make([]string, 0, policy.MaxSteps)
	for i := 0; i < policy.MaxSteps-1; i++ {
		steps = append(steps, fmt.Sprintf("{weight: %d, hold: 8760h}", i/2))
	}
	steps = append(steps, "{weight: 100}")
	return strings.Replace(doc, "exponential: {start: 10, factor: 2, every: 30s}", "steps: ["+strings.Join(steps, ", ")+"]", 1)
}
