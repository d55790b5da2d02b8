// Package policy holds shiftplane's rollout plans and their validation, the
// rollout state machine and engine, signal gates, and the store interface.
// Nothing here builds Envoy protos: the engine's output is DesiredState,
// which package xds translates.
package policy

import (
	"encoding/json"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Plan is one rollout, as written in YAML or sent through the API.
// The YAML and JSON names are the outside contract of DESIGN.md.
type Plan struct {
	Name             string            `yaml:"name" json:"name"`
	Listener         Listener          `yaml:"listener" json:"listener"`
	Stable           Backend           `yaml:"stable" json:"stable"`
	Canary           Backend           `yaml:"canary" json:"canary"`
	OutlierDetection *OutlierDetection `yaml:"outlierDetection,omitempty" json:"outlierDetection,omitempty"`
	Steps            []Step            `yaml:"steps,omitempty" json:"steps,omitempty"`
	Linear           *Linear           `yaml:"linear,omitempty" json:"linear,omitempty"`
	Exponential      *Exponential      `yaml:"exponential,omitempty" json:"exponential,omitempty"`
	Analysis         Analysis          `yaml:"analysis,omitempty" json:"analysis,omitempty"`
	Hooks            Hooks             `yaml:"hooks,omitempty" json:"hooks,omitempty"`
}

// Listener is where Envoy accepts the service's traffic.
type Listener struct {
	Address    string   `yaml:"address" json:"address"`
	Domains    []string `yaml:"domains,omitempty" json:"domains,omitempty"`
	PathPrefix string   `yaml:"pathPrefix,omitempty" json:"pathPrefix,omitempty"`
	// GRPCTargets are the host:port targets proxyless gRPC clients dial
	// (xds:///host:port); each gets a client-side (api_listener) Listener.
	GRPCTargets []string `yaml:"grpcTargets,omitempty" json:"grpcTargets,omitempty"`
}

// Backend is one version of the service: an Envoy cluster and its hosts.
// Match and SessionAffinity are the canary's traffic policy (traffic.go);
// the stable takes neither.
type Backend struct {
	Cluster   string   `yaml:"cluster" json:"cluster"`
	Endpoints []string `yaml:"endpoints" json:"endpoints"`
	// Match lists requests that always go to the canary while the rollout
	// runs (testers, A/B): a request matching any entry reaches v2.
	Match []Match `yaml:"match,omitempty" json:"match,omitempty"`
	// SessionAffinity keeps a user who got the canary on it (a cookie).
	SessionAffinity *SessionAffinity `yaml:"sessionAffinity,omitempty" json:"sessionAffinity,omitempty"`
}

// Match is one request matcher of canary.match: exactly one of Header,
// Cookie and Query names what is looked at, and exactly one of Exact,
// Prefix, Regex (RE2), Present and Absent says how.
type Match struct {
	Header  string `yaml:"header,omitempty" json:"header,omitempty"`
	Cookie  string `yaml:"cookie,omitempty" json:"cookie,omitempty"`
	Query   string `yaml:"query,omitempty" json:"query,omitempty"`
	Exact   string `yaml:"exact,omitempty" json:"exact,omitempty"`
	Prefix  string `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	Regex   string `yaml:"regex,omitempty" json:"regex,omitempty"`
	Present bool   `yaml:"present,omitempty" json:"present,omitempty"`
	Absent  bool   `yaml:"absent,omitempty" json:"absent,omitempty"`
}

// SessionAffinity is Flagger's sessionAffinity: responses the canary
// serves through the weighted route set CookieName (kept MaxAge), and
// requests carrying it go to the canary until the rollout ends.
type SessionAffinity struct {
	CookieName string   `yaml:"cookieName" json:"cookieName"`
	MaxAge     Duration `yaml:"maxAge" json:"maxAge"`
}

// OutlierDetection is Envoy's outlier detection on the canary cluster.
type OutlierDetection struct {
	Consecutive5xx     uint32   `yaml:"consecutive5xx" json:"consecutive5xx"`
	Interval           Duration `yaml:"interval" json:"interval"`
	BaseEjectionTime   Duration `yaml:"baseEjectionTime" json:"baseEjectionTime"`
	MaxEjectionPercent uint32   `yaml:"maxEjectionPercent" json:"maxEjectionPercent"`
}

// Step is one entry of the schedule: a weight and its hold, or a manual gate.
type Step struct {
	Weight *int     `yaml:"weight,omitempty" json:"weight,omitempty"`
	Hold   Duration `yaml:"hold,omitempty" json:"hold,omitempty"`
	Pause  *Pause   `yaml:"pause,omitempty" json:"pause,omitempty"`
	// Mirror is the percentage (1..100) of the stable's requests Envoy
	// copies to the canary, whose answers it discards. Only at weight 0
	// (the weight may be left out): a mirror step moves no user.
	Mirror int `yaml:"mirror,omitempty" json:"mirror,omitempty"`
	// MatchOnly is a weight-0 step where only requests matching
	// canary.match reach the canary (Argo's setHeaderRoute).
	MatchOnly *MatchOnly `yaml:"matchOnly,omitempty" json:"matchOnly,omitempty"`
}

// MatchOnly marks a step that sends only canary.match requests to the
// canary. It has no fields.
type MatchOnly struct{}

// Pause is a manual gate: the rollout waits for promote or resume.
type Pause struct{}

// Linear generates steps of `step` percent, each held for `every`.
type Linear struct {
	Step  int      `yaml:"step" json:"step"`
	Every Duration `yaml:"every" json:"every"`
}

// Exponential generates steps start, start*factor, ... up to 100.
type Exponential struct {
	Start  int      `yaml:"start" json:"start"`
	Factor float64  `yaml:"factor" json:"factor"`
	Every  Duration `yaml:"every" json:"every"`
}

// Analysis says how the signal gates the schedule.
type Analysis struct {
	// StableFor is how long the signal must stay clear before a hold counts again.
	StableFor *Duration `yaml:"stableFor,omitempty" json:"stableFor,omitempty"`
	// StaleAfter is how long without fresh signal data before the signal is stale.
	StaleAfter Duration `yaml:"staleAfter,omitempty" json:"staleAfter,omitempty"`
	// RollbackAfter is how long firing without a break before rolling back; 0 disables.
	RollbackAfter *Duration `yaml:"rollbackAfter,omitempty" json:"rollbackAfter,omitempty"`
	// MaxErrorRate is the canary 5xx share (0..1) above which the signal
	// fires, ejected host or not; unset means DefaultMaxErrorRate, 0 disables.
	MaxErrorRate *float64 `yaml:"maxErrorRate,omitempty" json:"maxErrorRate,omitempty"`
	// MinRequests is how many canary requests each weight step must see
	// before it may end (evidence of traffic), and the fewest requests in a
	// window for MaxErrorRate to judge. Unset means DefaultMinRequests; 0 opts
	// out of the evidence rule, for very quiet services.
	MinRequests *int `yaml:"minRequests,omitempty" json:"minRequests,omitempty"`
	// DrainTimeout bounds the wait for the stable cluster to drain after promotion
	// when no stats arrive.
	DrainTimeout Duration `yaml:"drainTimeout,omitempty" json:"drainTimeout,omitempty"`
}

// Hooks run at fixed points of a rollout.
type Hooks struct {
	BeforeShift  []Hook `yaml:"beforeShift,omitempty" json:"beforeShift,omitempty"`
	AfterPromote []Hook `yaml:"afterPromote,omitempty" json:"afterPromote,omitempty"`
}

// Hook is a command or a webhook; exactly one is set.
type Hook struct {
	Exec    []string `yaml:"exec,omitempty" json:"exec,omitempty"`
	Webhook *Webhook `yaml:"webhook,omitempty" json:"webhook,omitempty"`
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// Retries are extra attempts of a webhook after a network error or a 5xx
	// answer, never after a 4xx (0..10). Exec hooks take none: a command is
	// not known to be safe to run twice.
	Retries int `yaml:"retries,omitempty" json:"retries,omitempty"`
	// RetryBackoff is the wait before the first retry, doubled before each
	// next one (DefaultRetryBackoff when 0). No wait runs past Timeout.
	RetryBackoff Duration `yaml:"retryBackoff,omitempty" json:"retryBackoff,omitempty"`
}

// Webhook is a POST of the rollout's status JSON; 2xx means go on.
type Webhook struct {
	URL     string   `yaml:"url" json:"url"`
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Defaults applied to fields a plan leaves out.
const (
	DefaultStaleAfter    = 10 * time.Second
	DefaultStableFor     = 10 * time.Second
	DefaultRollbackAfter = 2 * time.Minute
	DefaultDrainTimeout  = 30 * time.Second
	DefaultHookTimeout   = 2 * time.Minute
	DefaultRetryBackoff  = time.Second
	MaxHookRetries       = 10
	DefaultMinRequests   = 20
	DefaultMaxErrorRate  = 0.05
)

// DefaultOutlierDetection is used when a plan names none. It ejects a
// one-host canary (maxEjectionPercent 100), unlike Envoy's own default.
func DefaultOutlierDetection() OutlierDetection {
	return OutlierDetection{
		Consecutive5xx:     5,
		Interval:           Duration(time.Second),
		BaseEjectionTime:   Duration(30 * time.Second),
		MaxEjectionPercent: 100,
	}
}

// WithDefaults returns a copy of p with every optional field filled in.
// The copy is what the engine and the translator work from.
func (p Plan) WithDefaults() Plan {
	if len(p.Listener.Domains) == 0 {
		p.Listener.Domains = []string{"*"}
	}
	if p.Listener.PathPrefix == "" {
		p.Listener.PathPrefix = "/"
	}
	if p.OutlierDetection == nil {
		od := DefaultOutlierDetection()
		p.OutlierDetection = &od
	}
	a := &p.Analysis
	if a.StaleAfter == 0 {
		a.StaleAfter = Duration(DefaultStaleAfter)
	}
	if a.StableFor == nil {
		d := Duration(DefaultStableFor)
		a.StableFor = &d
	}
	if a.RollbackAfter == nil {
		d := Duration(DefaultRollbackAfter)
		a.RollbackAfter = &d
	}
	if a.DrainTimeout == 0 {
		a.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if a.MinRequests == nil {
		n := DefaultMinRequests
		a.MinRequests = &n
	}
	if a.MaxErrorRate == nil {
		r := DefaultMaxErrorRate
		a.MaxErrorRate = &r
	}
	// A mirror or matchOnly step may leave its weight out: it is 0.
	// The steps are copied first: p shares its slice with the caller's plan.
	copied := false
	for i, s := range p.Steps {
		if s.Weight == nil && s.Pause == nil && (s.Mirror != 0 || s.MatchOnly != nil) {
			if !copied {
				p.Steps, copied = append([]Step(nil), p.Steps...), true
			}
			zero := 0
			p.Steps[i].Weight = &zero
		}
	}
	return p
}

// Schedule returns the plan's steps: the explicit ones, or those generated
// from linear or exponential.
func (p Plan) Schedule() []Step {
	switch {
	case p.Linear != nil && p.Linear.Step > 0:
		var steps []Step
		for w := p.Linear.Step; ; w += p.Linear.Step {
			if w >= 100 {
				steps = append(steps, weightStep(100, 0))
				return steps
			}
			steps = append(steps, weightStep(w, p.Linear.Every))
		}
	case p.Exponential != nil && p.Exponential.Start > 0 && p.Exponential.Factor > 1:
		// The loop is bounded whatever the factor (validation asks for
		// >= MinExponentialFactor, but Schedule must not spin on a plan that
		// skipped it: a factor barely above 1 would take ~1e16 rounds), and
		// a weight is kept only if above the one before, so at most 100.
		var steps []Step
		w := float64(p.Exponential.Start)
		for round := 0; round < maxScheduleRounds && w < 100; round, w = round+1, w*p.Exponential.Factor {
			// Rounding can repeat a weight for small factors; weights only move forward.
			iw := int(w)
			if n := len(steps); n > 0 && *steps[n-1].Weight >= iw {
				continue
			}
			steps = append(steps, weightStep(iw, p.Exponential.Every))
		}
		return append(steps, weightStep(100, 0))
	}
	return p.Steps
}

// maxScheduleRounds bounds the exponential generator: at factor 1.1 from a
// start of 1 it needs 49 rounds to reach 100.
const maxScheduleRounds = 1000

func weightStep(w int, hold Duration) Step { return Step{Weight: &w, Hold: hold} }

// StableForDuration is analysis.stableFor with its default applied.
func (a Analysis) StableForDuration() time.Duration {
	if a.StableFor == nil {
		return DefaultStableFor
	}
	return a.StableFor.D()
}

// RollbackAfterDuration is analysis.rollbackAfter with its default applied; 0 disables.
func (a Analysis) RollbackAfterDuration() time.Duration {
	if a.RollbackAfter == nil {
		return DefaultRollbackAfter
	}
	return a.RollbackAfter.D()
}

// MinRequestsValue is analysis.minRequests with its default applied.
func (a Analysis) MinRequestsValue() int {
	if a.MinRequests == nil {
		return DefaultMinRequests
	}
	return *a.MinRequests
}

// MaxErrorRateValue is analysis.maxErrorRate with its default applied; 0 disables.
func (a Analysis) MaxErrorRateValue() float64 {
	if a.MaxErrorRate == nil {
		return DefaultMaxErrorRate
	}
	return *a.MaxErrorRate
}

// Duration is a time.Duration written as "30s" or "1m" in YAML and JSON.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts Go duration strings ("1m30s"); a bare 0 means zero.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	if err := d.parse(s); err != nil {
		// A TypeError carrying the line lets the loader name the field.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d column %d: %v", n.Line, n.Column, err)}}
	}
	return nil
}

// MarshalYAML writes the duration as a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\": %w", err)
	}
	return d.parse(s)
}

func (d *Duration) parse(s string) error {
	if s == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. 30s, 1m, 1h30m)", s)
	}
	if v < 0 {
		return fmt.Errorf("duration %q must not be negative", s)
	}
	*d = Duration(v)
	return nil
}
