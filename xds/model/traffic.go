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
	// MaxRegexProgram bounds a matcher's regex by its compiled size (Go's
	// RE2 program, instructions). Envoy refuses an RE2 program above 100
	// by default (re2.max_program_size.error_level), and a cookie
	// matcher wraps the value's regex in ~20 more.
	MaxRegexProgram = 60
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
// RE2's) within MaxRegexProgram.
func CheckRegex(re string) error {
	parsed, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return fmt.Errorf("does not compile as RE2: %v", err)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return fmt.Errorf("does not compile as RE2: %v", err)
	}
	if n := len(prog.Inst); n > MaxRegexProgram {
		return fmt.Errorf("compiles to %d RE2 instructions, more than %d (Envoy refuses large regexes); simplify it", n, MaxRegexProgram)
	}
	return nil
}

// CheckCookieName reports whether name can name a cookie.
func CheckCookieName(name string) error { return CheckMatchName(MatchCookie, name) }

// validateTraffic checks a service's traffic policy.
func validateTraffic(svc Service, bad func(field, format string, args ...any)) {
	both := svc.CanaryPublished && svc.StablePublished
	for i, m := range svc.Match {
		f := fmt.Sprintf("match[%d]", i)
		if err := CheckMatchName(m.Kind, m.Name); err != nil {
			bad(f, "%v", err)
		}
		if err := CheckMatchValue(m.Kind, m.Op, m.Value); err != nil {
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
		if err := CheckCookieName(a.Cookie); err != nil {
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
