package policy

// DesiredState is what the engine wants the fleet to run: for every live
// rollout, its two backends and the canary's share of traffic. Package xds
// translates it into Envoy resources; it carries no policy of its own.
type DesiredState struct {
	Services []ServiceState
}

// ServiceState is one rollout's wanted traffic split.
type ServiceState struct {
	Name     string
	Listener Listener // defaults applied: domains and pathPrefix are set
	Stable   Backend
	Canary   Backend
	Outlier  OutlierDetection
	// CanaryWeight is the canary's percentage of traffic, 0..100.
	CanaryWeight int
	// CanaryPublished says the canary cluster exists in CDS. It is published
	// (make before break) before any route sends it traffic.
	CanaryPublished bool
	// StablePublished is false once the stable cluster has drained after
	// promotion and is withdrawn.
	StablePublished bool
}

// ServiceStateFor returns plan p's service at weight w with both clusters
// published: the state a plan file maps to before the engine takes over.
func ServiceStateFor(p Plan, w int) ServiceState {
	p = p.WithDefaults()
	return ServiceState{
		Name:            p.Name,
		Listener:        p.Listener,
		Stable:          p.Stable,
		Canary:          p.Canary,
		Outlier:         *p.OutlierDetection,
		CanaryWeight:    w,
		CanaryPublished: true,
		StablePublished: true,
	}
}
