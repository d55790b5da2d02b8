package xds

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/xds/model"
)

// Several replicas (store.backend: etcd) serve one fleet with the same
// resource versions: the leader's Publisher assigns versions and hands each
// publish to BeforeSet (which stores it where the others read it) before
// serving it; every other replica serves the same desired state at the
// same versions with SetReplicated. An Envoy that moves between replicas
// then sees nothing new.

// SetBeforeSet installs f, called on every publish after its version is
// assigned and before the snapshot is set. When f fails the publish fails
// and the fleet keeps the last snapshot. Call before the first publish.
func (p *Publisher) SetBeforeSet(f func(ctx context.Context, rec Published, ds model.State) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.beforeSet = f
}

// SetReplicated serves ds at the given versions (type URL → version), as
// published by the leader. It does nothing when those versions and that
// content are already served. The versions must cover every published type.
func (p *Publisher) SetReplicated(ctx context.Context, ds model.State, versions map[string]string, reason string) (Published, error) {
	for _, t := range publishedTypes {
		if _, err := strconv.ParseUint(versions[t], 10, 64); err != nil {
			return Published{}, fmt.Errorf("replicated snapshot: %s version %q: %w", shortType(t), versions[t], err)
		}
	}
	res, err := translate(ds, &p.assignments)
	if err != nil {
		return Published{}, fmt.Errorf("translate: %w", err)
	}
	byType := map[string][]types.Resource{
		resourcev3.ClusterType:  res.Clusters,
		resourcev3.EndpointType: res.Endpoints,
		resourcev3.ListenerType: res.Listeners,
		resourcev3.RouteType:    res.Routes,
	}
	prep, err := p.cache.Prepare(byType)
	if err != nil {
		return Published{}, err
	}
	hashes := prep.Hashes()
	snap := &cachev3.Snapshot{}
	for _, t := range publishedTypes {
		snap.Resources[cachev3.GetResponseType(t)] = cachev3.NewResources(versions[t], byType[t])
	}
	if err := snap.Consistent(); err != nil {
		return Published{}, fmt.Errorf("replicated snapshot is inconsistent: %w", err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.now()
	var changed []string
	var top uint64
	for _, t := range publishedTypes {
		if p.versions[t] != versions[t] || !maps.Equal(p.hashes[t], hashes[t]) {
			changed = append(changed, t)
			if n := parseVersion(versions[t]); n > top {
				top = n
			}
		}
	}
	if len(changed) == 0 {
		return Published{Versions: copyMap(p.versions), Time: start, Reason: reason}, nil
	}
	if err := p.cache.Set(ctx, prep, versions); err != nil {
		return Published{}, fmt.Errorf("set replicated snapshot: %w", err)
	}
	p.versions = copyMap(versions)
	p.hashes = hashes
	for t, rs := range byType {
		p.last[t] = rs
	}
	rec := Published{Version: top, Time: start, Reason: reason, Changed: changed, Versions: copyMap(versions), ResourceVersions: hashes}
	p.history = append(p.history, rec)
	if len(p.history) > p.keep {
		p.history = p.history[len(p.history)-p.keep:]
	}
	if p.onSet != nil {
		// The fleet tracks one latest version per type; a replicated
		// publish may move types to different versions, so report each.
		for _, t := range changed {
			one := rec
			one.Version = parseVersion(versions[t])
			one.Changed = []string{t}
			p.onSet(one)
		}
	}
	return rec, nil
}

// ConvergenceOf is Fleet.Convergence over node lists gathered from several
// replicas: nodes are every connected stream (any replica), latest the
// versions now served (type URL → version), statsNodes the nodes that
// report stats to any replica.
func ConvergenceOf(kind model.ResourceKind, version string, nodes []NodeStatus, latest map[string]string, statsNodes []string) model.Convergence {
	types := kindTypes(kind)
	v := parseVersion(version)
	c := model.Convergence{Converged: true}
	connected := map[string]bool{}
	for _, n := range nodes {
		connected[n.ID] = true
		subscribed := false
		for _, st := range n.Types {
			if !slices.Contains(types, st.TypeURL) {
				continue
			}
			subscribed = true
			acked := parseVersion(st.Acked)
			if st.Nacked != "" && parseVersion(st.Nacked) >= v && acked < v {
				c.Nacks = append(c.Nacks, fmt.Sprintf("node %s rejected %s version %s: %s", n.ID, shortType(st.TypeURL), st.Nacked, st.NackError))
			}
			// Endpoints keep their own version: only the version current
			// when clusters moved matters, so compare against it loosely.
			if st.TypeURL == resourcev3.EndpointType {
				if acked < parseVersion(latest[st.TypeURL]) && acked < v {
					c.Converged = false
				}
				continue
			}
			if acked < v {
				c.Converged = false
			}
			// A node is converged only with the resources it asked for:
			// a proxyless client that ACKed an answer without its
			// listener (or route, cluster, endpoints) cannot route.
			if acked >= v {
				lacks(&c, n.ID, st.TypeURL, st.Missing)
			}
		}
		switch {
		case subscribed:
			c.Nodes++
		case len(n.Types) > 0:
			// Connected and asking for config, but not yet for this kind:
			// it does not have what the rollout needs.
			c.Nodes++
			c.Converged = false
		}
	}
	finishConvergence(&c, connected, statsNodes)
	return c
}

// lacks records that node ACKed an answer of typeURL without the
// resources it asked for (missing): it cannot route, so it is not
// converged.
func lacks(c *model.Convergence, node, typeURL string, missing []string) {
	if len(missing) == 0 {
		return
	}
	c.Converged = false
	for _, name := range missing {
		c.Lacking = append(c.Lacking, fmt.Sprintf("node %s lacks %s %q", node, resourceWord(typeURL), name))
	}
}

// finishConvergence applies the fleet-wide rules once every node is
// counted: no node is not converged, nor is a node that reports stats but
// has no xDS stream (connected); the lists are sorted.
func finishConvergence(c *model.Convergence, connected map[string]bool, statsNodes []string) {
	if c.Nodes == 0 {
		c.Converged = false
	}
	for _, id := range statsNodes {
		if !connected[id] {
			c.Missing = append(c.Missing, id)
			c.Converged = false
		}
	}
	sort.Strings(c.Nacks)
	sort.Strings(c.Missing)
	sort.Strings(c.Lacking)
}

// resourceWord names a resource type for people.
func resourceWord(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoints of"
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route configuration"
	}
	return shortType(typeURL)
}

// kindTypes are the xDS types a resource kind is made of.
func kindTypes(kind model.ResourceKind) []string {
	switch kind {
	case model.KindClusters:
		return []string{resourcev3.ClusterType, resourcev3.EndpointType}
	case model.KindListeners:
		return []string{resourcev3.ListenerType}
	}
	return []string{resourcev3.RouteType}
}
