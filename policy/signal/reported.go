package signal

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// ErrInvalidReport is wrapped by every error Report returns for bad input.
var ErrInvalidReport = errors.New("invalid reported signal")

// MaxReportSources bounds the sources that report on one rollout, so
// reports under ever new names cannot grow the gate without bound.
const MaxReportSources = 32

// reportedSignal is one outside system's latest word on a rollout.
type reportedSignal struct {
	state  policy.SignalState
	reason string
	at     time.Time // when it was reported
	until  time.Time // it expires here
}

// Report records an outside system's (an alert manager's) verdict on a
// rollout's canary, valid for ttl from now. A later report from the same
// source replaces it, so a source clears its own FIRING by reporting CLEAR.
// An unexpired FIRING makes Evaluate return FIRING whatever the stats say.
// A CLEAR does not override the stats; it only counts as fresh data when
// the gate has no StatsSource at all.
func (g *Gate) Report(rollout string, state policy.SignalState, reason, source string, ttl time.Duration, now time.Time) error {
	switch {
	case rollout == "":
		return fmt.Errorf("%w: rollout: must not be empty", ErrInvalidReport)
	case source == "":
		return fmt.Errorf("%w: rollout %q: source: must not be empty", ErrInvalidReport, rollout)
	case state != policy.SignalFiring && state != policy.SignalClear:
		return fmt.Errorf("%w: rollout %q: state: must be %s or %s, got %q", ErrInvalidReport, rollout, policy.SignalFiring, policy.SignalClear, state)
	case ttl <= 0:
		return fmt.Errorf("%w: rollout %q: ttl: must be positive, got %s", ErrInvalidReport, rollout, ttl)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(now)
	bySource, ok := g.reported[rollout]
	if !ok {
		bySource = map[string]reportedSignal{}
		g.reported[rollout] = bySource
	}
	if _, known := bySource[source]; !known && len(bySource) >= MaxReportSources {
		return fmt.Errorf("%w: rollout %q: source %q: already %d sources report on this rollout (the limit); reuse a source name or let old reports expire", ErrInvalidReport, rollout, source, MaxReportSources)
	}
	bySource[source] = reportedSignal{state: state, reason: reason, at: now, until: now.Add(ttl)}
	g.log.Info("signal reported", "rollout", rollout, "state", state, "source", source, "reason", reason, "ttl", ttl)
	if g.onChange != nil {
		g.onChange()
	}
	return nil
}

// reportedFiring returns the reasons of the unexpired FIRING reports for
// q.Rollout made since the rollout started, sorted by source, and whether
// any unexpired report (firing or clear) exists.
func (g *Gate) reportedFiring(now time.Time, q policy.SignalQuery) (firing []string, live bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(now)
	bySource := g.reported[q.Rollout]
	sources := make([]string, 0, len(bySource))
	for src := range bySource {
		sources = append(sources, src)
	}
	sort.Strings(sources)
	for _, src := range sources {
		rs := bySource[src]
		if rs.at.Before(q.Since) {
			continue
		}
		live = true
		if rs.state == policy.SignalFiring {
			r := "reported by " + src
			if rs.reason != "" {
				r += ": " + rs.reason
			}
			firing = append(firing, r)
		}
	}
	return firing, live
}

// pruneLocked drops expired reports so the map does not grow with rollout
// names nobody evaluates.
func (g *Gate) pruneLocked(now time.Time) {
	for rollout, bySource := range g.reported {
		for src, rs := range bySource {
			if !now.Before(rs.until) {
				delete(bySource, src)
			}
		}
		if len(bySource) == 0 {
			delete(g.reported, rollout)
		}
	}
}
