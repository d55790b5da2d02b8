package model

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
	"time"
)

// The canary's traffic policy while a rollout runs: requests that always go
// to it (Match), a share of the route's requests copied to it (Mirror), and
// a cookie that keeps users on it (Affinity). Policy decides when each is
// on; xds translates them into routes placed before the weighted route.

// MatchKind is what a Match looks at.
type MatchKind string

// The kinds of Match.
const (
	MatchHeader MatchKind = "header"
	MatchCookie MatchKind = "cookie"
	MatchQuery  MatchKind = "query"
)

// MatchOp is how a Match compares.
type MatchOp string

// The comparisons of Match. Present and Absent take no value.
const (
	OpExact   MatchOp = "exact"
	OpPrefix  MatchOp = "prefix"
	OpRegex   MatchOp = "regex"
	OpPresent MatchOp = "present"
	OpAbsent  MatchOp = "absent"
)

// Match is one request matcher: requests it matches go to the canary.
type Match struct {
	Kind  MatchKind `yaml:"kind" json:"kind"`
	Name  string    `yaml:"name" json:"name"`
	Op    MatchOp   `yaml:"op" json:"op"`
	Value string    `yaml:"value,omitempty" json:"value,omitempty"`
}

// Affinity is session affinity to the canary: the canary's weighted-route
// answers set Cookie=Value (Max-Age MaxAge), and requests carrying it go to
// the canary. Value names the attempt, so a cookie from a rolled-back
// attempt does not count in the next one.
type Affinity struct {
	Cookie string        `yaml:"cookie" json:"cookie"`
	Value  string        `yaml:"value" json:"value"`
	MaxAge time.Duration `yaml:"maxAge" json:"maxAge"`
}

// Limits on matchers, shared with plan validation.
const (
	MaxMatchNameLen  = 256
	MaxMatchValueLen = 1024
	// MaxAffinityAge is what browsers keep a cookie at most (400 days).
	MaxAffinityAge = 400 * 24 * time.Hour
)

// tokenRE is an HTTP token (RFC 9110), what header and cookie names are.
var tokenRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

// queryNameRE is a query parameter name as written in a URL: unreserved
// characters only (Envoy compares decoded names).
var queryNameRE = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)

// CheckMatchName reports whether name can be matched as kind.
func CheckMatchName(kind MatchKind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("the %s name must not be empty", kind)
	case len(name) > MaxMatchNameLen:
		return fmt.Errorf("the %s name must be at most %d characters, got %d", kind, MaxMatchNameLen, len(name))
	}
	switch kind {
	case MatchHeader, MatchCookie:
		if !tokenRE.MatchString(name) {
			return fmt.Errorf("%s name %q must be an HTTP token (letters, digits and !#$%%&'*+.^_`|~-)", kind, name)
		}
	case MatchQuery:
		if !queryNameRE.MatchString(name) {
			return fmt.Errorf("query parameter name %q must be letters, digits, . _ ~ or -", name)
		}
	default:
		return fmt.Errorf("kind %q must be header, cookie or query", kind)
	}
	return nil
}

// CheckMatchValue reports whether value can be compared by op on kind.
func CheckMatchValue(kind MatchKind, op MatchOp, value string) error {
	switch op {
	case OpPresent, OpAbsent:
		if value != "" {
			return fmt.Errorf("%s takes no value, got %q", op, value)
		}
		return nil
	case OpExact, OpPrefix, OpRegex:
	default:
		return fmt.Errorf("op %q must be exact, prefix, regex, present or absent", op)
	}
	if value == "" {
		return fmt.Errorf("%s needs a non-empty value", op)
	}
	if len(value) > MaxMatchValueLen {
		return fmt.Errorf("%s must be at most %d characters, got %d", op, MaxMatchValueLen, len(value))
	}
	if op == OpRegex {
		return CheckRegex(value)
	}
	if i := strings.IndexFunc(value, func(r rune) bool { return r < ' ' || r >= 0x7f }); i >= 0 {
		return fmt.Errorf("%s must be printable ASCII, got %q at byte %d", op, value[i:i+1], i)
	}
	if kind == MatchCookie && strings.ContainsAny(value, "; \",\\") {
		return fmt.Errorf("a cookie value cannot hold ; , space, quote or backslash, got %q", value)
	}
	return nil
}

// CheckRegex reports whether re compiles as RE2 (Go's regexp syntax is
// RE2's).
func CheckRegex(re string) error {
	if _, err := syntax.Parse(re, syntax.Perl); err != nil {
		return fmt.Errorf("does not compile as RE2: %v", err)
	}
	return nil
}

// MaxRE2Program is the largest RE2 program Envoy accepts by default
// (runtime re2.max_program_size.error_level); a larger one is NACKed.
// re2Budget leaves room for RE2Size's error on long literals.
const (
	MaxRE2Program = 100
	re2Budget     = MaxRE2Program - 2
)

// RE2Size estimates the size of the RE2 program Envoy compiles re to, from
// Go's compiled program: a character class costs one instruction per range
// (at most 10), a case-folded rune two, plus 4 for the frame. Measured
// against Envoy 1.40 (TestRE2Size) it is 1 below RE2's count for long
// literals and ~4 above it for ASCII classes: it may refuse a regex a few
// instructions under Envoy's limit; the check keeps 2 below the limit.
func RE2Size(re string) (int, error) {
	parsed, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return 0, fmt.Errorf("does not compile as RE2: %v", err)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return 0, fmt.Errorf("does not compile as RE2: %v", err)
	}
	n := 4
	for _, in := range prog.Inst {
		switch {
		case in.Op == syntax.InstRune && len(in.Rune) > 1:
			n += min(len(in.Rune)/2, 10)
		case (in.Op == syntax.InstRune || in.Op == syntax.InstRune1) && syntax.Flags(in.Arg)&syntax.FoldCase != 0:
			n += 2
		default:
			n++
		}
	}
	return n, nil
}

// Regex is the RE2 pattern Envoy is given for m (a full match), or "" when
// Envoy matches m without one. A cookie is a regex over the Cookie header;
// an absent query parameter an inverted regex over :path (Envoy's query
// matcher cannot say absent).
func (m Match) Regex() string {
	switch {
	case m.Kind == MatchCookie:
		var value string
		switch m.Op {
		case OpExact:
			value = regexp.QuoteMeta(m.Value)
		case OpPrefix:
			value = regexp.QuoteMeta(m.Value) + `[^;]*`
		case OpRegex:
			value = "(?:" + m.Value + ")"
		default: // present, absent
			value = `[^;]*`
		}
		return CookieRegex(m.Name, value)
	case m.Kind == MatchQuery && m.Op == OpAbsent:
		return `[^?]*\?(.*&)?` + regexp.QuoteMeta(m.Name) + `(=[^&]*)?(&.*)?`
	case m.Op == OpRegex:
		return m.Value
	}
	return ""
}

// CookieRegex matches a Cookie header carrying name=<valueRE>.
func CookieRegex(name, valueRE string) string {
	return `(.*;)?\s*` + regexp.QuoteMeta(name) + `=` + valueRE + `\s*(;.*)?`
}

// CheckMatch reports what is wrong with m, naming the part: "name" or
// "value".
func CheckMatch(m Match) (part string, err error) {
	if err := CheckMatchName(m.Kind, m.Name); err != nil {
		return "name", err
	}
	if err := CheckMatchValue(m.Kind, m.Op, m.Value); err != nil {
		return "value", err
	}
	if re := m.Regex(); re != "" {
		return "value", checkRE2Size(re)
	}
	return "", nil
}

func checkRE2Size(re string) error {
	n, err := RE2Size(re)
	if err != nil {
		return err
	}
	if n > re2Budget {
		return fmt.Errorf("the regex Envoy would match (%.60s…) compiles to about %d RE2 instructions, Envoy refuses more than %d: use a shorter name, value or regex", re, n, MaxRE2Program)
	}
	return nil
}

// CheckAffinity reports whether the affinity cookie's route regex fits
// Envoy's limit for a value like value.
func CheckAffinity(cookie, value string) error {
	if err := CheckCookieName(cookie); err != nil {
		return err
	}
	return checkRE2Size(CookieRegex(cookie, regexp.QuoteMeta(value)))
}

// CheckCookieName reports whether name can name a cookie.
func CheckCookieName(name string) error { return CheckMatchName(MatchCookie, name) }

// validateTraffic checks a service's traffic policy.
func validateTraffic(svc Service, bad func(field, format string, args ...any)) {
	both := svc.CanaryPublished && svc.StablePublished
	for i, m := range svc.Match {
		f := fmt.Sprintf("match[%d]", i)
		if _, err := CheckMatch(m); err != nil {
			bad(f, "%v", err)
		}
	}
	if len(svc.Match) > 0 && !both {
		bad("match", "needs both stable and canary published")
	}
	if svc.Mirror < 0 || svc.Mirror > 100 {
		bad("mirror", "%d outside 0..100", svc.Mirror)
	}
	if svc.Mirror > 0 && (!both || svc.CanaryWeight != 0) {
		bad("mirror", "needs both clusters published and canaryWeight 0, got weight %d", svc.CanaryWeight)
	}
	if a := svc.Affinity; a != nil {
		if err := CheckAffinity(a.Cookie, a.Value); err != nil {
			bad("affinity.cookie", "%v", err)
		}
		if err := CheckMatchValue(MatchCookie, OpExact, a.Value); err != nil {
			bad("affinity.value", "%v", err)
		}
		if a.MaxAge < time.Second || a.MaxAge > MaxAffinityAge {
			bad("affinity.maxAge", "%s outside 1s..%s", a.MaxAge, MaxAffinityAge)
		}
		if !both {
			bad("affinity", "needs both stable and canary published")
		}
		if svc.Mirror > 0 {
			bad("affinity", "cannot be combined with mirror")
		}
	}
}
