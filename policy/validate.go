package policy

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shiftplane/shiftplane/xds/model"
)

// ErrInvalidPlan is wrapped by every validation error, so callers can tell a
// user's mistake from an internal fault with errors.Is.
var ErrInvalidPlan = errors.New("invalid plan")

// Problem is one thing wrong with a plan: the field path and what is wrong.
type Problem struct {
	File  string // empty when the plan did not come from a file
	Field string // e.g. steps[2].weight
	Msg   string
}

func (p Problem) String() string {
	s := p.Field + ": " + p.Msg
	if p.Field == "" {
		s = p.Msg
	}
	if p.File != "" {
		return p.File + ": " + s
	}
	return s
}

// Problems is a list of validation problems; as an error it reads one line
// per problem and wraps ErrInvalidPlan.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is(err, ErrInvalidPlan) hold.
func (ps Problems) Unwrap() error { return ErrInvalidPlan }

// Err returns ps as an error, or nil when there are no problems.
func (ps Problems) Err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// ValidateOptions carries the server settings that decide what plans may do.
type ValidateOptions struct {
	// AllowExec permits exec hooks (hooks.allowExec in the server config).
	AllowExec bool
	// AllowHosts lists the hosts webhook hooks may call; empty means loopback only.
	AllowHosts []string
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)
	clusterRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
)

type checker struct{ ps Problems }

func (c *checker) add(field, format string, args ...any) {
	c.ps = append(c.ps, Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks one plan on its own and returns every problem found.
func (p Plan) Validate(opts ValidateOptions) Problems {
	c := &checker{}
	if !nameRE.MatchString(p.Name) {
		c.add("name", "must match [a-z0-9-]{1,63}, got %q", p.Name)
	}
	if p.Listener.Address == "" {
		c.add("listener.address", "is required")
	} else if err := checkIPPort(p.Listener.Address); err != nil {
		c.add("listener.address", "%v", err)
	}
	c.domains(p.Listener.Domains)
	seenTargets := map[string]int{}
	for i, t := range p.Listener.GRPCTargets {
		f := fmt.Sprintf("listener.grpcTargets[%d]", i)
		if err := model.CheckGRPCTarget(t); err != nil {
			c.add(f, "%v", err)
		} else if j, ok := seenTargets[strings.ToLower(t)]; ok {
			c.add(f, "%q repeats listener.grpcTargets[%d]", t, j)
		}
		seenTargets[strings.ToLower(t)] = i
	}
	if pp := p.Listener.PathPrefix; pp != "" && !strings.HasPrefix(pp, "/") {
		c.add("listener.pathPrefix", "must start with /, got %q", pp)
	} else if len(pp) > MaxPathPrefixLen {
		c.add("listener.pathPrefix", "must be at most %d characters, got %d", MaxPathPrefixLen, len(pp))
	} else if i := strings.IndexFunc(pp, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '?' || r == '#' }); i >= 0 {
		c.add("listener.pathPrefix", "must be printable ASCII without spaces, ? or # (a URL path), got %q at byte %d", pp[i:i+1], i)
	}
	c.backend("stable", p.Stable)
	c.backend("canary", p.Canary)
	c.traffic(p) // traffic_validate.go
	if p.Stable.Cluster != "" && p.Stable.Cluster == p.Canary.Cluster {
		c.add("canary.cluster", "must differ from stable.cluster, both are %q", p.Canary.Cluster)
	}
	if od := p.OutlierDetection; od != nil {
		c.durationWithin("outlierDetection.interval", od.Interval, MinOutlierInterval, MaxOutlierDuration)
		c.durationWithin("outlierDetection.baseEjectionTime", od.BaseEjectionTime, MinBaseEjectionTime, MaxOutlierDuration)
		if od.MaxEjectionPercent > 100 {
			c.add("outlierDetection.maxEjectionPercent", "must be within 0..100, got %d", od.MaxEjectionPercent)
		}
	}
	c.schedule(p)
	c.analysis(p.Analysis)
	c.hooks("hooks.beforeShift", p.Hooks.BeforeShift, opts)
	c.hooks("hooks.afterPromote", p.Hooks.AfterPromote, opts)
	return c.ps
}

func (c *checker) backend(field string, b Backend) {
	if b.Cluster == "" {
		c.add(field+".cluster", "is required")
	} else if !clusterRE.MatchString(b.Cluster) {
		c.add(field+".cluster", "must match [A-Za-z0-9_-]{1,128} (no dots), got %q", b.Cluster)
	}
	if len(b.Endpoints) == 0 {
		c.add(field+".endpoints", "needs at least one host:port")
	}
	if len(b.Endpoints) > MaxEndpoints {
		c.add(field+".endpoints", "must list at most %d endpoints, got %d", MaxEndpoints, len(b.Endpoints))
		return // one problem, not one per endpoint of a huge list
	}
	seen := map[string]bool{}
	for i, e := range b.Endpoints {
		f := fmt.Sprintf("%s.endpoints[%d]", field, i)
		if err := checkIPPort(e); err != nil {
			c.add(f, "%v", err)
		} else if seen[e] {
			c.add(f, "duplicate endpoint %q", e)
		}
		seen[e] = true
	}
}

func (c *checker) schedule(p Plan) {
	given := 0
	for _, set := range []bool{len(p.Steps) > 0, p.Linear != nil, p.Exponential != nil} {
		if set {
			given++
		}
	}
	switch {
	case given == 0:
		c.add("steps", "is required (or linear, or exponential)")
		return
	case given > 1:
		c.add("steps", "give only one of steps, linear and exponential")
		return
	}
	if l := p.Linear; l != nil {
		if l.Step < 1 || l.Step > 100 {
			c.add("linear.step", "must be within 1..100, got %d", l.Step)
		}
		if l.Every <= 0 {
			c.add("linear.every", "must be > 0")
		}
		c.hold("linear.every", l.Every)
		return
	}
	if e := p.Exponential; e != nil {
		if e.Start < 1 || e.Start > 100 {
			c.add("exponential.start", "must be within 1..100, got %d", e.Start)
		}
		// NaN fails every comparison, so the test is written to pass only
		// for a finite number in range.
		if !(e.Factor >= MinExponentialFactor && e.Factor <= MaxExponentialFactor) {
			c.add("exponential.factor", "must be a finite number >= %g (and <= %g), got %s", MinExponentialFactor, MaxExponentialFactor, fmtFloat(e.Factor))
		}
		if e.Every <= 0 {
			c.add("exponential.every", "must be > 0")
		}
		c.hold("exponential.every", e.Every)
		return
	}
	if len(p.Steps) > MaxSteps {
		c.add("steps", "must have at most %d entries, got %d", MaxSteps, len(p.Steps))
		return
	}
	last, lastWeight := -1, -1
	for i, s := range p.Steps {
		f := fmt.Sprintf("steps[%d]", i)
		if s.Weight == nil && s.Pause == nil && (s.Mirror != 0 || s.MatchOnly != nil) {
			zero := 0
			s.Weight = &zero // a mirror or matchOnly step's weight is 0
		}
		c.stepTraffic(p, f, s)
		switch {
		case s.Weight != nil && s.Pause != nil:
			c.add(f, "give either weight or pause, not both")
		case s.Weight == nil && s.Pause == nil:
			c.add(f, "needs a weight or a pause")
		case s.Pause != nil && s.Hold != 0:
			c.add(f+".hold", "a pause waits for promote or resume; it takes no hold")
		case s.Weight != nil:
			c.hold(f+".hold", s.Hold)
			w := *s.Weight
			last = i
			if w < 0 || w > 100 {
				c.add(f+".weight", "must be within 0..100, got %d", w)
				lastWeight = -2 // no follow-on complaints about an out-of-range weight
				continue
			}
			if w < lastWeight {
				c.add(f+".weight", "must not be below the previous step's %d, got %d", lastWeight, w)
			}
			lastWeight = w
		}
	}
	if last >= 0 && lastWeight != 100 && lastWeight >= 0 && lastWeight <= 100 {
		c.add(fmt.Sprintf("steps[%d].weight", last), "the last weight must be 100, got %d", lastWeight)
	}
	if last == -1 && len(p.Steps) > 0 {
		c.add("steps", "needs at least one weight step, ending at 100")
	}
}

func (c *checker) analysis(a Analysis) {
	if r := a.MaxErrorRateValue(); !(r >= 0 && r <= 1) { // NaN fails both
		c.add("analysis.maxErrorRate", "must be a finite number within 0..1 (a share of requests), got %s", fmtFloat(r))
	}
	if n := a.MinRequestsValue(); n < 0 || n > 1_000_000 {
		c.add("analysis.minRequests", "must be 0..1000000 (0 opts out of the evidence rule), got %d", n)
	}
}

// Limits on what one plan may ask for. They keep every plan that validates
// small enough to translate, store and send over the API in one message, and
// keep Envoy's own validation (protoc-gen-validate rules) from refusing it.
const (
	MaxEndpoints         = 1000 // per backend
	MaxSteps             = 200  // explicit steps, weights and pauses together
	MaxDomains           = 100
	MaxDomainLen         = 253 + len(":65535")
	MaxPathPrefixLen     = 1024
	MinExponentialFactor = 1.1
	MaxExponentialFactor = 100.0
	MinOutlierInterval   = 100 * time.Millisecond
	MinBaseEjectionTime  = time.Second
	MaxOutlierDuration   = 24 * time.Hour
	// MaxHold bounds a step's hold (and linear/exponential every): a year
	// is far beyond any rollout and well inside what a protobuf Duration and
	// the store's JSON carry.
	MaxHold = 365 * 24 * time.Hour
)

func (c *checker) durationWithin(field string, d Duration, lo, hi time.Duration) {
	if d.D() < lo || d.D() > hi {
		c.add(field, "must be within %s..%s, got %s", lo, hi, d.D())
	}
}

func (c *checker) hold(field string, d Duration) {
	if d.D() > MaxHold {
		c.add(field, "must be at most %s, got %s", MaxHold, d.D())
	}
}

// domainRE is what Envoy accepts as a virtual host domain and routes by: a
// host name or IP literal with an optional port, or "*" alone, as a prefix
// ("*.example.com", "*-api.example.com") or as a suffix ("example.*").
var domainRE = regexp.MustCompile(`^(\*|\*?[A-Za-z0-9_.\-\[\]:]+|[A-Za-z0-9_.\-\[\]:]+\*)$`)

func (c *checker) domains(ds []string) {
	if len(ds) > MaxDomains {
		c.add("listener.domains", "must list at most %d domains, got %d", MaxDomains, len(ds))
		return
	}
	seen := map[string]int{}
	for i, d := range ds {
		f := fmt.Sprintf("listener.domains[%d]", i)
		switch {
		case d == "":
			c.add(f, "must not be empty")
		case len(d) > MaxDomainLen:
			c.add(f, "must be at most %d characters, got %d", MaxDomainLen, len(d))
		case strings.Count(d, "*") > 1 || !domainRE.MatchString(d):
			c.add(f, "must be a host name or IP with an optional port, or use one * as a prefix or suffix (letters, digits, . - _ : [ ] only), got %q", d)
		default:
			// Envoy matches domains case-insensitively and rejects a route
			// configuration that repeats one.
			key := strings.ToLower(d)
			if j, ok := seen[key]; ok {
				c.add(f, "domain %q repeats listener.domains[%d] (domains match case-insensitively)", d, j)
			}
			seen[key] = i
		}
	}
}

// fmtFloat prints a float so that NaN and infinities read as such.
func fmtFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func (c *checker) hooks(field string, hs []Hook, opts ValidateOptions) {
	for i, h := range hs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if h.Retries < 0 || h.Retries > MaxHookRetries {
			c.add(f+".retries", "must be 0..%d, got %d", MaxHookRetries, h.Retries)
		} else if h.Retries > 0 && len(h.Exec) > 0 {
			c.add(f+".retries", "only webhooks are retried (a command is not known to be safe to run twice), got %d", h.Retries)
		}
		if h.RetryBackoff < 0 {
			c.add(f+".retryBackoff", "must be >= 0, got %s", h.RetryBackoff.D())
		} else if h.RetryBackoff > 0 && h.Retries == 0 {
			c.add(f+".retryBackoff", "needs retries > 0, got retryBackoff %s with no retries", h.RetryBackoff.D())
		}
		switch {
		case len(h.Exec) > 0 && h.Webhook != nil:
			c.add(f, "give either exec or webhook, not both")
		case len(h.Exec) == 0 && h.Webhook == nil:
			c.add(f, "needs exec or webhook")
		case len(h.Exec) > 0:
			if !opts.AllowExec {
				c.add(f+".exec", "exec hooks are disabled on this server (set hooks.allowExec: true in its config)")
			} else if h.Exec[0] == "" {
				c.add(f+".exec[0]", "the command must not be empty")
			}
		default:
			c.webhook(f+".webhook", h.Webhook, opts)
		}
	}
}

func (c *checker) webhook(field string, w *Webhook, opts ValidateOptions) {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.add(field+".url", "must be an http or https URL, got %q", w.URL)
		return
	}
	if !HostAllowed(u.Hostname(), opts.AllowHosts) {
		c.add(field+".url", "host %q is not in hooks.allowHosts %v", u.Hostname(), allowHostsOrDefault(opts.AllowHosts))
	}
}

// HostAllowed reports whether a webhook may call host; an empty allow list
// means loopback only.
func HostAllowed(host string, allow []string) bool {
	for _, a := range allowHostsOrDefault(allow) {
		if strings.EqualFold(a, host) {
			return true
		}
	}
	return false
}

func allowHostsOrDefault(allow []string) []string {
	if len(allow) == 0 {
		return []string{"127.0.0.1", "::1", "localhost"}
	}
	return allow
}

// checkIPPort accepts ip:port only: Envoy's EDS endpoints and listener
// addresses are not resolved by DNS.
func checkIPPort(s string) error {
	if err := checkHostPort(s); err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(s)
	if net.ParseIP(host) == nil {
		return fmt.Errorf("host must be an IP address (Envoy does not resolve names here), got %q", host)
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be host:port, got %q", s)
	}
	if host == "" {
		return fmt.Errorf("needs a host, got %q", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port must be within 1..65535, got %q", port)
	}
	return nil
}

// ValidateSet checks what only a set of plans can get wrong: duplicate
// names, a cluster name used twice, and two plans claiming the same domain
// on one listener (Envoy would reject the route configuration).
// files[i] names where plans[i] came from and may be empty.
func ValidateSet(plans []Plan, files []string) Problems {
	var ps Problems
	file := func(i int) string {
		if i < len(files) {
			return files[i]
		}
		return ""
	}
	names := map[string]int{}
	clusters := map[string]string{}
	domains := map[string]string{}
	targets := map[string]string{}
	for i, p := range plans {
		for _, t := range p.Listener.GRPCTargets {
			// A target names one LDS resource for the whole fleet.
			if other, ok := targets[strings.ToLower(t)]; ok && other != p.Name {
				ps = append(ps, Problem{File: file(i), Field: "listener.grpcTargets", Msg: fmt.Sprintf("gRPC target %q is already served by plan %q", t, other)})
			}
			targets[strings.ToLower(t)] = p.Name
		}
		if j, ok := names[p.Name]; ok {
			ps = append(ps, Problem{File: file(i), Field: "name", Msg: fmt.Sprintf("%q is also the name of a plan in %s", p.Name, orHere(file(j)))})
		}
		names[p.Name] = i
		for _, b := range []struct{ field, cluster string }{{"stable.cluster", p.Stable.Cluster}, {"canary.cluster", p.Canary.Cluster}} {
			if b.cluster == "" {
				continue
			}
			if other, ok := clusters[b.cluster]; ok {
				ps = append(ps, Problem{File: file(i), Field: b.field, Msg: fmt.Sprintf("cluster %q is already used by plan %q", b.cluster, other)})
			}
			clusters[b.cluster] = p.Name
		}
		wp := p.WithDefaults()
		for _, d := range wp.Listener.Domains {
			// Envoy matches domains case-insensitively and rejects a route
			// configuration that repeats one.
			key := ListenerKey(wp.Listener.Address) + " " + strings.ToLower(d)
			if other, ok := domains[key]; ok {
				who := fmt.Sprintf("plan %q", other)
				if other == p.Name {
					who = "this plan already"
				}
				ps = append(ps, Problem{File: file(i), Field: "listener.domains", Msg: fmt.Sprintf("domain %q on %s is already served by %s (domains match case-insensitively)", d, wp.Listener.Address, who)})
			}
			domains[key] = p.Name
		}
	}
	sort.SliceStable(ps, func(a, b int) bool { return ps[a].File < ps[b].File })
	return ps
}

// ListenerKey normalises a listener address, so that [::1]:80 and
// [0:0::1]:80 name one listener.
func ListenerKey(address string) string { return model.ListenerKey(address) }

func orHere(f string) string {
	if f == "" {
		return "the same set"
	}
	return f
}
