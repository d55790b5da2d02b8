package xds

import (
	"fmt"
	"regexp"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/shiftplane/shiftplane/xds/model"
)

// trafficRoutes are the routes that send chosen requests straight to the
// canary, placed before the weighted route: one per canary.match entry
// (name <service>-match-<i>), then the session-affinity cookie route
// (<service>-affinity). Only a service with both clusters published has them
// (model.Validate).
func trafficRoutes(s model.Service) []*routev3.Route {
	var out []*routev3.Route
	to := func(name string, m *routev3.RouteMatch) {
		m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: s.Listener.PathPrefix}
		action := routeAction()
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: s.Canary.Cluster}
		out = append(out, &routev3.Route{Name: name, Match: m, Action: &routev3.Route_Route{Route: action}})
	}
	for i, m := range s.Match {
		to(fmt.Sprintf("%s-match-%d", s.Name, i), routeMatch(m))
	}
	if a := s.Affinity; a != nil {
		to(s.Name+"-affinity", &routev3.RouteMatch{Headers: []*routev3.HeaderMatcher{{
			Name:                 "cookie",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatch(model.CookieRegex(a.Cookie, regexp.QuoteMeta(a.Value)))},
		}}})
	}
	return out
}

// routeMatch translates one matcher. Envoy matches headers and query
// parameters itself; a cookie and an absent query parameter are regexes
// (model.Match.Regex).
func routeMatch(m model.Match) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{}
	switch m.Kind {
	case model.MatchHeader:
		h := &routev3.HeaderMatcher{Name: m.Name}
		switch m.Op {
		case model.OpPresent, model.OpAbsent:
			h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
			h.InvertMatch = m.Op == model.OpAbsent
		default:
			h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatch(m.Op, m.Value)}
		}
		rm.Headers = []*routev3.HeaderMatcher{h}
	case model.MatchCookie:
		h := &routev3.HeaderMatcher{Name: "cookie", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatch(m.Regex())}}
		if m.Op == model.OpAbsent {
			h.InvertMatch, h.TreatMissingHeaderAsEmpty = true, true
		}
		rm.Headers = []*routev3.HeaderMatcher{h}
	case model.MatchQuery:
		if m.Op == model.OpAbsent {
			rm.Headers = []*routev3.HeaderMatcher{{
				Name:                 ":path",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatch(m.Regex())},
				InvertMatch:          true,
			}}
			break
		}
		q := &routev3.QueryParameterMatcher{Name: m.Name}
		if m.Op == model.OpPresent {
			q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		} else {
			q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: stringMatch(m.Op, m.Value)}
		}
		rm.QueryParameters = []*routev3.QueryParameterMatcher{q}
	}
	return rm
}

func stringMatch(op model.MatchOp, value string) *matcherv3.StringMatcher {
	switch op {
	case model.OpPrefix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: value}}
	case model.OpRegex:
		return regexMatch(value)
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}
}

// regexMatch is an RE2 match of the whole value (Envoy's safe_regex).
func regexMatch(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// affinityCookie is the Set-Cookie the canary's weighted-cluster entry
// adds to its answers.
func affinityCookie(a *model.Affinity) *corev3.HeaderValueOption {
	v := a.Cookie + "=" + a.Value + "; Max-Age=" + strconv.FormatInt(int64(a.MaxAge.Seconds()), 10) + "; Path=/; HttpOnly; SameSite=Lax"
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: "set-cookie", Value: v},
		AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
	}
}
