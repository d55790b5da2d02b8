package api

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shiftplane/shiftplane/policy"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// PlanFromProto converts an API plan into the policy model and validates it
// the way a YAML plan is validated. Problems name fields by their YAML/JSON
// names (steps[1].weight, analysis.stableFor), so a plan sent as a message
// and the same plan sent as YAML get the same errors. A field that could not
// be converted (a negative duration) is reported once, not again by
// validation.
func PlanFromProto(pb *shiftplanev1.Plan, opts policy.ValidateOptions) (policy.Plan, policy.Problems) {
	c := &converter{}
	p := c.plan(pb)
	ps := c.ps
	for _, v := range p.Validate(opts) {
		if !c.covers(v.Field) {
			ps = append(ps, v)
		}
	}
	return p, ps
}

// converter collects the problems found while converting, and the fields
// they cover.
type converter struct {
	ps      policy.Problems
	covered map[string]bool
}

func (c *converter) add(field, format string, args ...any) {
	c.ps = append(c.ps, policy.Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
	c.cover(field)
}

// cover marks field as reported: validation's problem for it would only
// restate the conversion problem less precisely.
func (c *converter) cover(field string) {
	if c.covered == nil {
		c.covered = map[string]bool{}
	}
	c.covered[field] = true
}

func (c *converter) covers(field string) bool { return c.covered[field] }

func (c *converter) plan(pb *shiftplanev1.Plan) policy.Plan {
	p := policy.Plan{
		Name: pb.GetName(),
		Listener: policy.Listener{
			Address:     pb.GetListener().GetAddress(),
			Domains:     pb.GetListener().GetDomains(),
			PathPrefix:  pb.GetListener().GetPathPrefix(),
			GRPCTargets: pb.GetListener().GetGrpcTargets(),
		},
		Stable: c.backend("stable", pb.GetStable()),
		Canary: c.backend("canary", pb.GetCanary()),
	}
	if od := pb.GetOutlierDetection(); od != nil {
		p.OutlierDetection = &policy.OutlierDetection{
			Consecutive5xx:     od.GetConsecutive_5Xx(),
			Interval:           c.duration("outlierDetection.interval", od.GetInterval()),
			BaseEjectionTime:   c.duration("outlierDetection.baseEjectionTime", od.GetBaseEjectionTime()),
			MaxEjectionPercent: od.GetMaxEjectionPercent(),
		}
	}
	for i, s := range pb.GetSteps() {
		f := fmt.Sprintf("steps[%d]", i)
		var st policy.Step
		switch k := s.GetKind().(type) {
		case *shiftplanev1.Step_Weight:
			w := int(k.Weight)
			st.Weight = &w
		case *shiftplanev1.Step_Pause:
			st.Pause = &policy.Pause{}
		}
		st.Mirror = int(s.GetMirror())
		if s.GetMatchOnly() != nil {
			st.MatchOnly = &policy.MatchOnly{}
		}
		st.Hold = c.duration(f+".hold", s.GetHold())
		p.Steps = append(p.Steps, st)
	}
	if l := pb.GetLinear(); l != nil {
		p.Linear = &policy.Linear{Step: int(l.GetStep()), Every: c.duration("linear.every", l.GetEvery())}
	}
	if e := pb.GetExponential(); e != nil {
		p.Exponential = &policy.Exponential{Start: int(e.GetStart()), Factor: e.GetFactor(), Every: c.duration("exponential.every", e.GetEvery())}
	}
	if a := pb.GetAnalysis(); a != nil {
		p.Analysis = policy.Analysis{
			StableFor:     c.optDuration("analysis.stableFor", a.GetStableFor()),
			StaleAfter:    c.duration("analysis.staleAfter", a.GetStaleAfter()),
			RollbackAfter: c.optDuration("analysis.rollbackAfter", a.GetRollbackAfter()),
			MaxErrorRate:  optFloat(a.MaxErrorRate),
			MinRequests:   optInt(a.MinRequests),
			DrainTimeout:  c.duration("analysis.drainTimeout", a.GetDrainTimeout()),
		}
	}
	p.Hooks.BeforeShift = c.hooks("hooks.beforeShift", pb.GetHooks().GetBeforeShift())
	p.Hooks.AfterPromote = c.hooks("hooks.afterPromote", pb.GetHooks().GetAfterPromote())
	return p
}

func (c *converter) hooks(field string, hs []*shiftplanev1.Hook) []policy.Hook {
	var out []policy.Hook
	for i, h := range hs {
		f := fmt.Sprintf("%s[%d]", field, i)
		var ph policy.Hook
		switch a := h.GetAction().(type) {
		case *shiftplanev1.Hook_Exec:
			if len(a.Exec.GetArgv()) == 0 {
				c.add(f+".exec", "needs at least the program to run (argv[0])")
				c.cover(f) // validation would say "needs exec or webhook"
			}
			ph.Exec = a.Exec.GetArgv()
		case *shiftplanev1.Hook_Webhook:
			ph.Webhook = &policy.Webhook{URL: a.Webhook.GetUrl(), Timeout: c.duration(f+".webhook.timeout", a.Webhook.GetTimeout())}
		}
		ph.Timeout = c.duration(f+".timeout", h.GetTimeout())
		ph.Retries = int(min(h.GetRetries(), policy.MaxHookRetries+1)) // out of range either way; validation names it
		ph.RetryBackoff = c.duration(f+".retryBackoff", h.GetRetryBackoff())
		out = append(out, ph)
	}
	return out
}

// duration converts a proto duration; unset is 0. Durations are checked as
// the YAML loader checks them: well-formed and not negative.
func (c *converter) duration(field string, d *durationpb.Duration) policy.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil {
		c.add(field, "invalid duration: %v", err)
		return 0
	}
	v := d.AsDuration()
	if v < 0 {
		c.add(field, "must not be negative, got %s", v)
		return 0
	}
	return policy.Duration(v)
}

// optDuration is duration for fields where unset (the default) differs from
// an explicit 0s.
func (c *converter) optDuration(field string, d *durationpb.Duration) *policy.Duration {
	if d == nil {
		return nil
	}
	v := c.duration(field, d)
	return &v
}

// PlanToProto converts a policy plan to its API message.
func PlanToProto(p policy.Plan) *shiftplanev1.Plan {
	pb := &shiftplanev1.Plan{
		Name: p.Name,
		Listener: &shiftplanev1.Listener{
			Address:     p.Listener.Address,
			Domains:     p.Listener.Domains,
			PathPrefix:  p.Listener.PathPrefix,
			GrpcTargets: p.Listener.GRPCTargets,
		},
		Stable: backendProto(p.Stable),
		Canary: backendProto(p.Canary),
	}
	if od := p.OutlierDetection; od != nil {
		pb.OutlierDetection = &shiftplanev1.OutlierDetection{
			Consecutive_5Xx:    od.Consecutive5xx,
			Interval:           durationProto(od.Interval),
			BaseEjectionTime:   durationProto(od.BaseEjectionTime),
			MaxEjectionPercent: od.MaxEjectionPercent,
		}
	}
	for _, s := range p.Steps {
		ps := &shiftplanev1.Step{Hold: durationProto(s.Hold)}
		switch {
		case s.Weight != nil:
			ps.Kind = &shiftplanev1.Step_Weight{Weight: int32(*s.Weight)}
		case s.Pause != nil:
			ps.Kind = &shiftplanev1.Step_Pause{Pause: &shiftplanev1.Pause{}}
		}
		ps.Mirror = int32(s.Mirror)
		if s.MatchOnly != nil {
			ps.MatchOnly = &shiftplanev1.MatchOnly{}
		}
		pb.Steps = append(pb.Steps, ps)
	}
	if l := p.Linear; l != nil {
		pb.Linear = &shiftplanev1.Linear{Step: int32(l.Step), Every: durationProto(l.Every)}
	}
	if e := p.Exponential; e != nil {
		pb.Exponential = &shiftplanev1.Exponential{Start: int32(e.Start), Factor: e.Factor, Every: durationProto(e.Every)}
	}
	a := p.Analysis
	pb.Analysis = &shiftplanev1.Analysis{
		StaleAfter:   durationProto(a.StaleAfter),
		MaxErrorRate: a.MaxErrorRate,
		MinRequests:  optInt32(a.MinRequests),
		DrainTimeout: durationProto(a.DrainTimeout),
	}
	if a.StableFor != nil {
		pb.Analysis.StableFor = durationpb.New(a.StableFor.D())
	}
	if a.RollbackAfter != nil {
		pb.Analysis.RollbackAfter = durationpb.New(a.RollbackAfter.D())
	}
	if len(p.Hooks.BeforeShift)+len(p.Hooks.AfterPromote) > 0 {
		pb.Hooks = &shiftplanev1.Hooks{BeforeShift: hooksProto(p.Hooks.BeforeShift), AfterPromote: hooksProto(p.Hooks.AfterPromote)}
	}
	return pb
}

func hooksProto(hs []policy.Hook) []*shiftplanev1.Hook {
	var out []*shiftplanev1.Hook
	for _, h := range hs {
		ph := &shiftplanev1.Hook{Timeout: durationProto(h.Timeout), Retries: uint32(max(h.Retries, 0)), RetryBackoff: durationProto(h.RetryBackoff)}
		switch {
		case h.Webhook != nil:
			ph.Action = &shiftplanev1.Hook_Webhook{Webhook: &shiftplanev1.WebhookHook{Url: h.Webhook.URL, Timeout: durationProto(h.Webhook.Timeout)}}
		case len(h.Exec) > 0:
			ph.Action = &shiftplanev1.Hook_Exec{Exec: &shiftplanev1.ExecHook{Argv: h.Exec}}
		}
		out = append(out, ph)
	}
	return out
}

// durationProto leaves a zero duration unset: in the plan model 0 means
// "not given".
func durationProto(d policy.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d.D())
}

func timestampProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// PhaseToProto maps a policy phase to its enum; an unknown phase is
// PHASE_UNSPECIFIED.
func PhaseToProto(p policy.Phase) shiftplanev1.Phase {
	return shiftplanev1.Phase(shiftplanev1.Phase_value["PHASE_"+string(p)])
}

// SignalStateToProto maps a policy signal state to its enum.
func SignalStateToProto(s policy.SignalState) shiftplanev1.SignalState {
	return shiftplanev1.SignalState(shiftplanev1.SignalState_value["SIGNAL_STATE_"+string(s)])
}

// SignalStateFromProto maps the enum back; UNSPECIFIED is "".
func SignalStateFromProto(s shiftplanev1.SignalState) policy.SignalState {
	if s == shiftplanev1.SignalState_SIGNAL_STATE_UNSPECIFIED {
		return ""
	}
	return policy.SignalState(strings.TrimPrefix(s.String(), "SIGNAL_STATE_"))
}

// SignalToProto converts a gate verdict. A finished rollout has no live
// signal: its state is SIGNAL_STATE_UNSPECIFIED.
func SignalToProto(s policy.Signal) *shiftplanev1.Signal {
	if s.State == "" {
		return &shiftplanev1.Signal{Reason: "no live signal: the rollout is finished"}
	}
	return &shiftplanev1.Signal{State: SignalStateToProto(s.State), Reason: s.Reason, Since: timestampProto(s.Since)}
}

// PhaseFromProto maps the enum back; UNSPECIFIED is "".
func PhaseFromProto(p shiftplanev1.Phase) policy.Phase {
	if p == shiftplanev1.Phase_PHASE_UNSPECIFIED {
		return ""
	}
	return policy.Phase(strings.TrimPrefix(p.String(), "PHASE_"))
}

// StatusToProto converts a rollout's status to the API's Rollout.
// canaryWeight is what the fleet holds (every node ACKed it), targetWeight
// what it was last sent (State.Weight). Signal and
// fleet are always set, so JSON with unpopulated fields shows their zeros.
func StatusToProto(s policy.Status) *shiftplanev1.Rollout {
	st := s.State
	r := &shiftplanev1.Rollout{
		Name:          s.Plan.Name,
		Phase:         PhaseToProto(st.Phase),
		CanaryWeight:  int32(s.FleetWeight),
		TargetWeight:  int32(st.Weight),
		WeightPending: s.WeightPending,
		StepIndex:     int32(st.StepIndex),
		StepCount:     int32(s.StepCount),
		// Zero durations are sent (not left unset) so "0s" shows in JSON.
		HoldRemaining: durationpb.New(s.HoldRemaining),
		HoldCounted:   durationpb.New(st.HoldCounted),
		Signal:        SignalToProto(s.Signal),
		Fleet: &shiftplanev1.FleetStatus{
			Nodes:        int32(s.Fleet.Nodes),
			Converged:    s.Fleet.Converged,
			RouteVersion: st.RouteVersion,
		},
		// policy keeps one explanation per transition; it serves both.
		Message:       st.Reason,
		Reason:        st.Reason,
		Plan:          PlanToProto(s.Plan),
		CreatedAt:     timestampProto(st.Created),
		UpdatedAt:     timestampProto(st.Updated),
		StableCluster: s.Plan.Stable.Cluster,
		CanaryCluster: s.Plan.Canary.Cluster,
		Source:        s.Source,
		HookError:     st.HookError,
	}
	if s.StoreError != "" {
		r.Message = "store unavailable, nothing moves until it is writable: " + s.StoreError
	}
	for _, st := range s.Observed.Steps {
		r.ObservedSteps = append(r.ObservedSteps, StepTrafficToProto(st))
	}
	if cur, ok := s.Observed.Current(); ok {
		r.Observed = StepTrafficToProto(cur)
	}
	r.ObservedStableRequests = uint64(s.Observed.Stable)
	r.ObservedCanaryRequests = uint64(s.Observed.Canary)
	return r
}

// StepTrafficToProto converts one step's observed split. The share is left
// unset when no request was counted: no data is not 0%.
func StepTrafficToProto(s policy.StepTraffic) *shiftplanev1.StepTraffic {
	pb := &shiftplanev1.StepTraffic{
		StepIndex:      int32(s.StepIndex),
		Weight:         int32(s.Weight),
		Phase:          PhaseToProto(s.Phase),
		StableRequests: uint64(s.Stable),
		CanaryRequests: uint64(s.Canary),
		Nodes:          int32(s.Nodes),
		From:           timestampProto(s.From),
		To:             timestampProto(s.To),

		TransitionStableRequests: uint64(s.TransitionStable),
		TransitionCanaryRequests: uint64(s.TransitionCanary),
		SettledAt:                timestampProto(s.SettledAt),
		Mirror:                   int32(s.Mirror),
		MirroredRequests:         uint64(s.Mirrored + s.TransitionMirrored),
	}
	if share, ok := s.Share(); ok {
		pct := 100 * share
		pb.CanaryShare = &pct
	}
	for _, n := range s.PerNode {
		pb.NodeTraffic = append(pb.NodeTraffic, &shiftplanev1.NodeTraffic{
			Node: n.Node, StableRequests: uint64(n.Stable), CanaryRequests: uint64(n.Canary),
			From: timestampProto(n.From), To: timestampProto(n.To),
		})
	}
	return pb
}

// EventToProto converts one history event.
func EventToProto(e policy.Event) *shiftplanev1.Event {
	pb := &shiftplanev1.Event{
		Time:      timestampProto(e.Time),
		Rollout:   e.Rollout,
		FromPhase: PhaseToProto(e.From),
		ToPhase:   PhaseToProto(e.To),
		Reason:    e.Reason,
		Weight:    int32(e.Weight),
		StepIndex: int32(e.StepIndex),
		Output:    e.Output,
		Seq:       e.Seq,
	}
	if e.Observed != nil {
		pb.Observed = StepTrafficToProto(*e.Observed)
	}
	return pb
}

func optFloat(v *float64) *float64 {
	if v == nil {
		return nil
	}
	x := *v
	return &x
}

func optInt(v *int32) *int {
	if v == nil {
		return nil
	}
	x := int(*v)
	return &x
}

func optInt32(v *int) *int32 {
	if v == nil {
		return nil
	}
	x := int32(*v)
	return &x
}

// backend converts a backend and its traffic policy (canary.match,
// canary.sessionAffinity).
func (c *converter) backend(field string, pb *shiftplanev1.Backend) policy.Backend {
	b := policy.Backend{Cluster: pb.GetCluster(), Endpoints: pb.GetEndpoints()}
	for _, m := range pb.GetMatch() {
		b.Match = append(b.Match, policy.Match{Header: m.GetHeader(), Cookie: m.GetCookie(), Query: m.GetQuery(),
			Exact: m.GetExact(), Prefix: m.GetPrefix(), Regex: m.GetRegex(), Present: m.GetPresent(), Absent: m.GetAbsent()})
	}
	if a := pb.GetSessionAffinity(); a != nil {
		b.SessionAffinity = &policy.SessionAffinity{CookieName: a.GetCookieName(), MaxAge: c.duration(field+".sessionAffinity.maxAge", a.GetMaxAge())}
	}
	return b
}

func backendProto(b policy.Backend) *shiftplanev1.Backend {
	pb := &shiftplanev1.Backend{Cluster: b.Cluster, Endpoints: b.Endpoints}
	for _, m := range b.Match {
		pb.Match = append(pb.Match, &shiftplanev1.Match{Header: m.Header, Cookie: m.Cookie, Query: m.Query,
			Exact: m.Exact, Prefix: m.Prefix, Regex: m.Regex, Present: m.Present, Absent: m.Absent})
	}
	if a := b.SessionAffinity; a != nil {
		pb.SessionAffinity = &shiftplanev1.SessionAffinity{CookieName: a.CookieName, MaxAge: durationProto(a.MaxAge)}
	}
	return pb
}
