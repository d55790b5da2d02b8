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
		if err := model.CheckCookieName(a.CookieName); err != nil {
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
	var kind model.MatchKind
	var name string
	for _, k := range []struct {
		kind model.MatchKind
		name string
	}{{model.MatchHeader, m.Header}, {model.MatchCookie, m.Cookie}, {model.MatchQuery, m.Query}} {
		if k.name != "" {
			kinds++
			kind, name = k.kind, k.name
		}
	}
	if kinds != 1 {
		c.add(f, "give exactly one of header, cookie and query (the name to match), got %d", kinds)
		return
	}
	ops := 0
	op, value := model.OpPresent, ""
	for _, o := range []struct {
		op  model.MatchOp
		set bool
		v   string
	}{{model.OpExact, m.Exact != "", m.Exact}, {model.OpPrefix, m.Prefix != "", m.Prefix}, {model.OpRegex, m.Regex != "", m.Regex},
		{model.OpPresent, m.Present, ""}, {model.OpAbsent, m.Absent, ""}} {
		if o.set {
			ops++
			op, value = o.op, o.v
		}
	}
	if ops != 1 {
		c.add(f, "give exactly one of exact, prefix, regex, present: true and absent: true, got %d", ops)
		return
	}
	if err := model.CheckMatchName(kind, name); err != nil {
		c.add(f+"."+string(kind), "%v", err)
	}
	if err := model.CheckMatchValue(kind, op, value); err != nil {
		c.add(f+"."+string(op), "%v", err)
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
