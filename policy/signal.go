package policy

import "time"

// SignalState says whether the canary is unhealthy now.
type SignalState string

// The three signal states. Stale is never treated as clear.
const (
	SignalClear  SignalState = "CLEAR"
	SignalFiring SignalState = "FIRING"
	SignalStale  SignalState = "STALE"
)

// Signal is a gate's verdict on a rollout's canary.
type Signal struct {
	State  SignalState
	Reason string // names the node(s) and stat, or the source, that decided
	// Since is when the signal entered State, as the engine saw it; gates
	// leave it zero.
	Since time.Time
	// Traffic is the canary's requests per node over each node's latest
	// report interval, from every stats source: the evidence that the
	// canary serves. No sample is no evidence.
	Traffic []TrafficSample
}

// TrafficSample is one node's canary requests over one report interval
// (From, At]. The engine counts each (node, At) once.
type TrafficSample struct {
	Node     string
	From, At time.Time
	Requests float64
}

// SignalQuery is what a gate needs to judge one rollout.
type SignalQuery struct {
	Rollout       string
	CanaryCluster string
	Analysis      Analysis // defaults applied
	// Since is when the rollout (re)started: data older than this does not count.
	Since time.Time
}

// SignalGate judges rollouts' canaries from what the fleet reports. The
// engine calls it from its own goroutine on every tick; implementations must
// be safe for concurrent use and must not block on the network.
type SignalGate interface {
	// Evaluate returns the signal for q at time now.
	Evaluate(now time.Time, q SignalQuery) Signal
	// ActiveRequests returns the in-flight requests to cluster summed over
	// the fleet (Envoy's upstream_rq_active), and whether any node reported
	// it recently enough to be believed.
	ActiveRequests(now time.Time, cluster string) (active float64, known bool)
}
