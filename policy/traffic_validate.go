package policy

import (
	"fmt"

	"github.com/shiftplane/shiftplane/xds/model"
)

// MaxMatches bounds canary.match: each entry is one Envoy route.
const MaxMatches = 32

// traffic checks canary.match and canary.sessionAffinity, and that the
// stable takes neither.
func (c *checker) traffic(p Plan) {
	if len(p.Stable.Match) > 0 {
		c.add("stable.match", "only the canary takes match rules (requests they match go to the canary)")
	}
	if p.Stable.SessionAffinity != nil {
		c.add("stable.sessionAffinity", "only the canary takes sessionAffinity")
	}
	if len(p.Canary.Match) > MaxMatches {
		c.add("canary.match", "must list at most %d matchers, got %d", MaxMatches, len(p.Canary.Match))
		return
	}
	for i, m := range p.Canary.Match {
		c.match(fmt.Sprintf("canary.match[%d]", i), m)
	}
	if a := p.Canary.SessionAffinity; a != nil {
		// The value names the attempt (AffinityValue): the canary cluster
		// and up to 8 base-36 digits.
		if err := model.CheckAffinity(a.CookieName, p.Canary.Cluster+"-zzzzzzzz"); err != nil {
			c.add("canary.sessionAffinity.cookieName", "%v", err)
		}
		if d := a.MaxAge.D(); d < 1e9 || d > model.MaxAffinityAge || d%1e9 != 0 {
			c.add("canary.sessionAffinity.maxAge", "must be whole seconds within 1s..%s (what browsers keep), got %s", model.MaxAffinityAge, d)
		}
		for i, s := range p.Steps {
			if s.Mirror != 0 {
				c.add("canary.sessionAffinity", "cannot be combined with a mirror step (steps[%d].mirror): a mirror step promises no user is answered by the canary, affinity sends cookie holders to it", i)
				break
			}
		}
	}
}

func (c *checker) match(f string, m Match) {
	kinds := 0
	for _, name := range []string{m.Header, m.Cookie, m.Query} {
		if name != "" {
			kinds++
		}
	}
	if kinds != 1 {
		c.add(f, "give exactly one of header, cookie and query (the name to match), got %d", kinds)
		return
	}
	ops := 0
	for _, set := range []bool{m.Exact != "", m.Prefix != "", m.Regex != "", m.Present, m.Absent} {
		if set {
			ops++
		}
	}
	if ops != 1 {
		c.add(f, "give exactly one of exact, prefix, regex, present: true and absent: true, got %d", ops)
		return
	}
	mm := modelMatch(m)
	part, err := model.CheckMatch(mm)
	switch {
	case err == nil:
	case part == "name":
		c.add(f+"."+string(mm.Kind), "%v", err)
	default:
		c.add(f+"."+string(mm.Op), "%v", err)
	}
}

// stepTraffic checks a step's mirror and matchOnly against its weight and
// the plan. s has a mirror or matchOnly step's weight filled in.
func (c *checker) stepTraffic(p Plan, f string, s Step) {
	if s.Mirror != 0 {
		switch {
		case s.Mirror < 0 || s.Mirror > 100:
			c.add(f+".mirror", "must be a percentage within 1..100, got %d", s.Mirror)
		case s.Pause != nil:
			c.add(f+".mirror", "a pause step mirrors nothing; mirror a weight-0 step instead")
		case s.Weight != nil && *s.Weight != 0:
			c.add(f+".mirror", "a mirror step sends no user traffic to the canary: give weight 0 or leave it out, got weight %d (Envoy mirrors a route's requests whichever cluster serves them)", *s.Weight)
		}
	}
	if s.MatchOnly != nil {
		switch {
		case len(p.Canary.Match) == 0:
			c.add(f+".matchOnly", "needs canary.match: it sends only requests those matchers match to the canary")
		case s.Pause != nil:
			c.add(f+".matchOnly", "give either matchOnly or pause, not both")
		case s.Weight != nil && *s.Weight != 0:
			c.add(f+".matchOnly", "sends only matched requests to the canary: give weight 0 or leave it out, got weight %d", *s.Weight)
		}
	}
}
