// Package api is the gRPC implementation of shiftplane's policy API
// (shiftplane.v1 RolloutService and FleetService) over a policy.Engine, and
// the mapping between the policy model and its protos.
//
// It holds no state of its own: every call reads or changes the engine. The
// transport (listener, TLS, tokens) is the caller's business; see
// cmd/shiftplane.
package api

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/signal"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// Source is what the engine records as the origin of plans applied here.
const Source = policy.SourceAPI

// Limits on free-text request fields, so one call cannot bloat the store or
// the logs.
const (
	maxReasonLen = 1024
	maxSourceLen = 128
)

// DefaultSignalSource is the reporter name of a ReportSignal call that
// gives none.
const DefaultSignalSource = "api"

// MaxSignalTTL bounds a reported signal's ttl: a reporter that stopped
// must not hold a rollout for days.
const MaxSignalTTL = time.Hour

// nameRE is the plan name rule (policy.Plan.Validate): a request naming a
// rollout any other way is a mistake, not an unknown rollout.
var nameRE = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

// SignalReporter is the signal gate as the API uses it: ReportSignal feeds
// it and reads back the combined verdict, Delete forgets a rollout's
// reports. *signal.Gate implements it; it must be safe for concurrent use.
type SignalReporter interface {
	Report(rollout string, state policy.SignalState, reason, source string, ttl time.Duration, now time.Time) error
	Evaluate(now time.Time, q policy.SignalQuery) policy.Signal
	Forget(rollout string)
}

var _ SignalReporter = (*signal.Gate)(nil)

// Node is one Envoy connected over xDS, as FleetService reports it.
type Node struct {
	ID              string
	Cluster         string
	Protocol        string // "sotw" or "delta"
	Replica         string // the replica the node is connected to (several replicas only)
	NotReady        bool   // has ACKed nothing yet (counts for convergence only within the grace)
	Kind            string // "envoy", "proxyless-grpc" or "unknown", from the node's user agent
	UserAgent       string // user_agent_name and version
	ConnectedSince  time.Time
	LastStatsReport time.Time // zero if none yet
	Converged       bool
	Types           []NodeType // sorted by type URL
}

// NodeType is a node's ACK/NACK state for one resource type.
type NodeType struct {
	TypeURL   string
	Acked     string
	Nacked    string
	NackError string
	NackTime  time.Time
	Missing   []string // asked for by name, not served by the ACKed version
}

// NodeLister lists the connected Envoys. cmd/shiftplane adapts the xds
// fleet tracker and the stats sink to it. It must be safe for concurrent
// use and must not block on the network.
type NodeLister interface {
	Nodes() []Node
}

// Options configure a Service.
type Options struct {
	Engine *policy.Engine
	// Signals receives ReportSignal; nil makes ReportSignal UNIMPLEMENTED.
	Signals SignalReporter
	// Fleet lists nodes for ListNodes; nil lists none.
	Fleet NodeLister
	// Validate is the server's plan policy (exec hooks, webhook hosts): the
	// same the engine and plan files are checked with.
	Validate policy.ValidateOptions
	Log      *slog.Logger
	// Now is the clock of reported signals; nil is time.Now.
	Now func() time.Time
	// WatchPoll is how often a Watch re-reads the status to catch changes
	// that come with no event (the signal, the fleet); 0 is 1s.
	WatchPoll time.Duration
}

// Service implements RolloutService and FleetService. It is safe for
// concurrent use.
type Service struct {
	shiftplanev1.UnimplementedRolloutServiceServer
	shiftplanev1.UnimplementedFleetServiceServer

	engine    *policy.Engine
	signals   SignalReporter
	fleet     NodeLister
	validate  policy.ValidateOptions
	log       *slog.Logger
	now       func() time.Time
	watchPoll time.Duration

	closeOnce sync.Once
	closed    chan struct{}
}

// New returns a Service over o.Engine.
func New(o Options) *Service {
	s := &Service{
		engine: o.Engine, signals: o.Signals, fleet: o.Fleet, validate: o.Validate,
		log: o.Log, now: o.Now, watchPoll: o.WatchPoll, closed: make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.watchPoll <= 0 {
		s.watchPoll = time.Second
	}
	return s
}

// Register serves both services on gs.
func (s *Service) Register(gs grpc.ServiceRegistrar) {
	shiftplanev1.RegisterRolloutServiceServer(gs, s)
	shiftplanev1.RegisterFleetServiceServer(gs, s)
}

// Close ends every Watch stream (with UNAVAILABLE), so a graceful stop of
// the server does not wait for clients that would watch forever.
func (s *Service) Close() { s.closeOnce.Do(func() { close(s.closed) }) }

var (
	_ shiftplanev1.RolloutServiceServer = (*Service)(nil)
	_ shiftplanev1.FleetServiceServer   = (*Service)(nil)
)

func checkName(field, name string) error {
	switch {
	case name == "":
		return invalidField(field, "is required")
	case !nameRE.MatchString(name):
		return invalidField(field, "must match [a-z0-9-]{1,63}, got %q", name)
	}
	return nil
}

// Apply implements RolloutService.
func (s *Service) Apply(_ context.Context, req *shiftplanev1.ApplyRequest) (*shiftplanev1.ApplyResponse, error) {
	var plan policy.Plan
	switch src := req.GetSource().(type) {
	case *shiftplanev1.ApplyRequest_Plan:
		if src.Plan == nil {
			return nil, invalidField("plan", "is required: send a plan message or planYaml")
		}
		p, ps := PlanFromProto(src.Plan, s.validate)
		if len(ps) > 0 {
			return nil, invalidPlan(p.Name, ps)
		}
		plan = p
	case *shiftplanev1.ApplyRequest_PlanYaml:
		plans, ps := policy.ParseAndValidate([]byte(src.PlanYaml), "", s.validate)
		switch {
		case len(plans) > 1:
			return nil, invalidField("planYaml", "holds %d plan documents; send one per Apply call", len(plans))
		case len(ps) > 0:
			name := ""
			if len(plans) == 1 {
				name = plans[0].Name
			}
			return nil, invalidPlan(name, ps)
		case len(plans) == 0:
			return nil, invalidField("planYaml", "holds no plan document")
		}
		plan = plans[0]
	default:
		return nil, invalidField("plan", "is required: send a plan message or planYaml")
	}
	st, outcome, err := s.engine.ApplyOutcome(plan, Source)
	if err != nil {
		return nil, toStatus(plan.Name, err)
	}
	s.log.Info("rollout applied through the API", "rollout", plan.Name, "result", outcome, "phase", st.State.Phase)
	return &shiftplanev1.ApplyResponse{Rollout: StatusToProto(st), Created: outcome == policy.ApplyCreated, Result: applyResultProto[outcome]}, nil
}

var applyResultProto = map[policy.ApplyOutcome]shiftplanev1.ApplyResult{
	policy.ApplyCreated:    shiftplanev1.ApplyResult_APPLY_RESULT_CREATED,
	policy.ApplyConfigured: shiftplanev1.ApplyResult_APPLY_RESULT_CONFIGURED,
	policy.ApplyUnchanged:  shiftplanev1.ApplyResult_APPLY_RESULT_UNCHANGED,
}

// Retry implements RolloutService.
func (s *Service) Retry(_ context.Context, req *shiftplanev1.RetryRequest) (*shiftplanev1.RetryResponse, error) {
	r, err := s.op(req.GetName(), "retried", nil, s.engine.Retry)
	if err != nil {
		return nil, err
	}
	return &shiftplanev1.RetryResponse{Rollout: r}, nil
}

// Get implements RolloutService.
func (s *Service) Get(_ context.Context, req *shiftplanev1.GetRequest) (*shiftplanev1.GetResponse, error) {
	if err := checkName("name", req.GetName()); err != nil {
		return nil, err
	}
	st, err := s.engine.Get(req.GetName())
	if err != nil {
		return nil, toStatus(req.GetName(), err)
	}
	return &shiftplanev1.GetResponse{Rollout: StatusToProto(st)}, nil
}

// List implements RolloutService.
func (s *Service) List(context.Context, *shiftplanev1.ListRequest) (*shiftplanev1.ListResponse, error) {
	resp := &shiftplanev1.ListResponse{}
	for _, st := range s.engine.List() {
		resp.Rollouts = append(resp.Rollouts, StatusToProto(st))
	}
	return resp, nil
}

// Watch implements RolloutService: the current status first, then each
// event and each status change, until the client goes away, the rollout
// is deleted (NOT_FOUND) or the service closes (UNAVAILABLE).
func (s *Service) Watch(req *shiftplanev1.WatchRequest, stream grpc.ServerStreamingServer[shiftplanev1.WatchResponse]) error {
	name := req.GetName()
	if err := checkName("name", name); err != nil {
		return err
	}
	// Subscribe before reading the status, so nothing between is missed.
	updates, cancel := s.engine.Subscribe()
	defer cancel()
	st, err := s.engine.Get(name)
	if err != nil {
		return toStatus(name, err)
	}
	var last *shiftplanev1.Rollout
	sendStatus := func(r *shiftplanev1.Rollout) error {
		if last != nil && proto.Equal(last, r) {
			return nil
		}
		last = r
		return stream.Send(&shiftplanev1.WatchResponse{Kind: &shiftplanev1.WatchResponse_Status{Status: r}})
	}
	if err := sendStatus(StatusToProto(st)); err != nil {
		return err
	}
	// handle sends an engine update about this rollout: its event, then
	// its status. It reports whether the update was about this rollout.
	handle := func(u policy.Update) (bool, error) {
		if u.Status.Plan.Name != name {
			return false, nil
		}
		if u.Event != nil {
			if err := stream.Send(&shiftplanev1.WatchResponse{Kind: &shiftplanev1.WatchResponse_Event{Event: EventToProto(*u.Event)}}); err != nil {
				return true, err
			}
		}
		return true, sendStatus(StatusToProto(u.Status))
	}
	shutdown := status.Error(codes.Unavailable, "shiftplane is shutting down")
	poll := time.NewTicker(s.watchPoll)
	defer poll.Stop()
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.closed:
			return shutdown
		case u, ok := <-updates:
			if !ok {
				return shutdown
			}
			if _, err := handle(u); err != nil {
				return err
			}
		case <-poll.C:
			st, err := s.engine.Get(name)
			if errors.Is(err, policy.ErrNotFound) {
				return status.Errorf(codes.NotFound, "rollout %q was deleted", name)
			}
			if err != nil {
				return toStatus(name, err)
			}
			// The engine queues an update before the change it announces
			// can be read, so updates queued now cover every event behind
			// st: send them (event first) instead of st.
			queued := false
		drain:
			for {
				select {
				case u, ok := <-updates:
					if !ok {
						return shutdown
					}
					mine, err := handle(u)
					if err != nil {
						return err
					}
					queued = queued || mine
				default:
					break drain
				}
			}
			if !queued {
				if err := sendStatus(StatusToProto(st)); err != nil {
					return err
				}
			}
		}
	}
}

// op runs one of the engine's named operations and logs a change. expect,
// when set, is the state the caller saw.
func (s *Service) op(name, verb string, expect *shiftplanev1.Expect, f func(string, ...policy.OpOption) (policy.Status, error), extra ...policy.OpOption) (*shiftplanev1.Rollout, error) {
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	opts := extra
	if expect != nil {
		x := policy.Expect{}
		if p := expect.GetPhase(); p != shiftplanev1.Phase_PHASE_UNSPECIFIED {
			x.Phase = PhaseFromProto(p)
		}
		if expect.StepIndex != nil {
			i := int(expect.GetStepIndex())
			x.StepIndex = &i
		}
		opts = append(opts, policy.Expecting(x))
	}
	st, err := f(name, opts...)
	if err != nil {
		return nil, toStatus(name, err)
	}
	s.log.Info("rollout "+verb+" through the API", "rollout", name, "phase", st.State.Phase, "weight", st.State.Weight)
	return StatusToProto(st), nil
}

// Pause implements RolloutService.
func (s *Service) Pause(_ context.Context, req *shiftplanev1.PauseRequest) (*shiftplanev1.PauseResponse, error) {
	r, err := s.op(req.GetName(), "paused", req.GetExpect(), s.engine.Pause)
	if err != nil {
		return nil, err
	}
	return &shiftplanev1.PauseResponse{Rollout: r}, nil
}

// Resume implements RolloutService.
func (s *Service) Resume(_ context.Context, req *shiftplanev1.ResumeRequest) (*shiftplanev1.ResumeResponse, error) {
	r, err := s.op(req.GetName(), "resumed", req.GetExpect(), s.engine.Resume)
	if err != nil {
		return nil, err
	}
	return &shiftplanev1.ResumeResponse{Rollout: r}, nil
}

// Promote implements RolloutService.
func (s *Service) Promote(_ context.Context, req *shiftplanev1.PromoteRequest) (*shiftplanev1.PromoteResponse, error) {
	r, err := s.op(req.GetName(), "promoted", req.GetExpect(), s.engine.Promote)
	if err != nil {
		return nil, err
	}
	return &shiftplanev1.PromoteResponse{Rollout: r}, nil
}

// Abort implements RolloutService.
func (s *Service) Abort(_ context.Context, req *shiftplanev1.AbortRequest) (*shiftplanev1.AbortResponse, error) {
	reason := req.GetReason()
	if err := checkText("reason", reason, maxReasonLen); err != nil {
		return nil, err
	}
	r, err := s.op(req.GetName(), "aborted", req.GetExpect(), s.engine.Abort, policy.Because(reason))
	if err != nil {
		return nil, err
	}
	return &shiftplanev1.AbortResponse{Rollout: r}, nil
}

// Delete implements RolloutService.
func (s *Service) Delete(_ context.Context, req *shiftplanev1.DeleteRequest) (*shiftplanev1.DeleteResponse, error) {
	name := req.GetName()
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	effect, err := s.engine.Delete(name, policy.DeleteOptions{Force: req.GetForce(), DryRun: req.GetDryRun()})
	if err != nil {
		return nil, toStatus(name, err)
	}
	if req.GetDryRun() {
		return &shiftplanev1.DeleteResponse{Effect: effect}, nil
	}
	if s.signals != nil {
		s.signals.Forget(name)
	}
	s.log.Info("rollout deleted through the API", "rollout", name, "effect", effect)
	return &shiftplanev1.DeleteResponse{Effect: effect}, nil
}

// History implements RolloutService.
func (s *Service) History(_ context.Context, req *shiftplanev1.HistoryRequest) (*shiftplanev1.HistoryResponse, error) {
	if err := checkName("name", req.GetName()); err != nil {
		return nil, err
	}
	if req.GetLimit() < 0 {
		return nil, invalidField("limit", "must be >= 0 (0 means all), got %d", req.GetLimit())
	}
	evs, err := s.engine.History(req.GetName(), int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(req.GetName(), err)
	}
	resp := &shiftplanev1.HistoryResponse{}
	for _, e := range evs {
		resp.Events = append(resp.Events, EventToProto(e))
	}
	return resp, nil
}

// ReportSignal implements RolloutService. Only CLEAR and FIRING can be
// reported; an unset ttl lasts the rollout's analysis.staleAfter.
func (s *Service) ReportSignal(_ context.Context, req *shiftplanev1.ReportSignalRequest) (*shiftplanev1.ReportSignalResponse, error) {
	if s.signals == nil {
		return nil, status.Error(codes.Unimplemented, "this server has no signal gate")
	}
	name := req.GetRollout()
	if err := checkName("rollout", name); err != nil {
		return nil, err
	}
	state := SignalStateFromProto(req.GetState())
	if state != policy.SignalClear && state != policy.SignalFiring {
		return nil, invalidField("state", "must be %s or %s, got %s",
			shiftplanev1.SignalState_SIGNAL_STATE_CLEAR, shiftplanev1.SignalState_SIGNAL_STATE_FIRING, req.GetState())
	}
	if err := checkText("reason", req.GetReason(), maxReasonLen); err != nil {
		return nil, err
	}
	source := req.GetSource()
	if source == "" {
		source = DefaultSignalSource
	}
	if err := checkText("source", source, maxSourceLen); err != nil {
		return nil, err
	}
	var ttl time.Duration
	if d := req.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalidField("ttl", "invalid duration: %v", err)
		}
		if ttl = d.AsDuration(); ttl <= 0 {
			return nil, invalidField("ttl", "must be positive, got %s", ttl)
		}
		if ttl > MaxSignalTTL {
			return nil, invalidField("ttl", "must be at most %s (report again to keep a signal), got %s", MaxSignalTTL, ttl)
		}
	}
	st, err := s.engine.Get(name)
	if err != nil {
		return nil, toStatus(name, err)
	}
	if st.State.Phase.Terminal() {
		return nil, status.Errorf(codes.FailedPrecondition, "rollout %q is %s: a finished rollout takes no signal", name, st.State.Phase)
	}
	analysis := st.Plan.WithDefaults().Analysis
	if ttl == 0 {
		ttl = analysis.StaleAfter.D()
	}
	now := s.now()
	if err := s.signals.Report(name, state, req.GetReason(), source, ttl, now); err != nil {
		if errors.Is(err, signal.ErrInvalidReport) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Errorf(codes.Internal, "rollout %q: report signal: %v", name, err)
	}
	s.log.Info("signal reported through the API", "rollout", name, "state", state, "source", source, "ttl", ttl)
	sig := s.signals.Evaluate(now, policy.SignalQuery{Rollout: name, CanaryCluster: st.Plan.Canary.Cluster, Analysis: analysis, Since: st.State.Created})
	return &shiftplanev1.ReportSignalResponse{Signal: SignalToProto(sig)}, nil
}

// checkText bounds a free-text field.
func checkText(field, s string, max int) error {
	if len(s) > max {
		return invalidField(field, "must be at most %d bytes, got %d", max, len(s))
	}
	return nil
}

// ListNodes implements FleetService.
func (s *Service) ListNodes(context.Context, *shiftplanev1.ListNodesRequest) (*shiftplanev1.ListNodesResponse, error) {
	resp := &shiftplanev1.ListNodesResponse{}
	if s.fleet == nil {
		return resp, nil
	}
	for _, n := range s.fleet.Nodes() {
		pn := &shiftplanev1.Node{
			Id:              n.ID,
			Cluster:         n.Cluster,
			ConnectedSince:  timestampProto(n.ConnectedSince),
			LastStatsReport: timestampProto(n.LastStatsReport),
			Converged:       n.Converged,
			Protocol:        n.Protocol,
			Replica:         n.Replica,
			NotReady:        n.NotReady,
			ClientKind:      n.Kind,
			UserAgent:       n.UserAgent,
		}
		for _, t := range n.Types {
			pn.Types = append(pn.Types, &shiftplanev1.TypeStatus{
				TypeUrl:       t.TypeURL,
				AckedVersion:  t.Acked,
				NackedVersion: t.Nacked,
				NackError:     t.NackError,
				NackTime:      timestampProto(t.NackTime),
				Missing:       t.Missing,
			})
		}
		resp.Nodes = append(resp.Nodes, pn)
	}
	return resp, nil
}
