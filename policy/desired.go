package policy

import "github.com/shiftplane/shiftplane/xds/model"

// DesiredState is what the engine wants the fleet to run (package
// xds/desired); package xds translates it into Envoy resources.
type DesiredState = model.State

// ServiceState is one rollout's wanted traffic split.
type ServiceState = model.Service

// ServiceStateFor returns plan p's service at weight w with both clusters
// published, without the canary's traffic policy (TrafficFor(...).Apply
// adds it for a rollout's state). p must be valid: its endpoints are IP:port.
func ServiceStateFor(p Plan, w int) ServiceState {
	p = p.WithDefaults()
	od := *p.OutlierDetection
	return ServiceState{
		Name: p.Name,
		Listener: model.Listener{Address: p.Listener.Address, Domains: append([]string(nil), p.Listener.Domains...), PathPrefix: p.Listener.PathPrefix,
			GRPCTargets: append([]string(nil), p.Listener.GRPCTargets...)},
		Stable: backend(p.Stable),
		Canary: backend(p.Canary),
		Outlier: model.Outlier{Consecutive5xx: od.Consecutive5xx, Interval: od.Interval.D(),
			BaseEjectionTime: od.BaseEjectionTime.D(), MaxEjectionPercent: od.MaxEjectionPercent},
		CanaryWeight:    w,
		CanaryPublished: true,
		StablePublished: true,
	}
}

func backend(b Backend) model.Backend {
	out := model.Backend{Cluster: b.Cluster}
	for _, s := range b.Endpoints {
		// Plans are validated before they get here; an endpoint that does
		// not parse is left out, and model.Validate reports an empty list.
		if e, err := model.ParseEndpoint(s); err == nil {
			out.Endpoints = append(out.Endpoints, e)
		}
	}
	return out
}
