// Package notify tells people what rollouts do: it follows the engine's
// updates (policy.Engine.Subscribe), picks the events each configured sink
// wants, and delivers them to webhooks (generic JSON or a Slack-compatible
// incoming-webhook payload) from a bounded queue per sink, so delivery never
// blocks the engine.
package notify

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/shiftplane/shiftplane/policy"
)

// Kind names a sort of event a sink can ask for.
type Kind string

// The kinds of notification. One event can be of several kinds: a rollback
// caused by a NACK is a phase change, a hold, a NACK and a rollback.
const (
	KindPhase       Kind = "phase"       // the phase changed (any From → To)
	KindStep        Kind = "step"        // a new step's weight within the same phase
	KindHold        Kind = "hold"        // the rollout entered HOLDING; the reason says why
	KindNack        Kind = "nack"        // a node rejected a version; the reason carries Envoy's error
	KindRollback    Kind = "rollback"    // ROLLING_BACK, ROLLED_BACK or ABORTED
	KindHookFailure Kind = "hookFailure" // a hook failed
	KindSuccess     Kind = "success"     // SUCCEEDED
)

// Kinds lists every kind, in the order the docs give them.
var Kinds = []Kind{KindPhase, KindStep, KindHold, KindNack, KindRollback, KindHookFailure, KindSuccess}

// Formats of a sink's payload.
const (
	FormatJSON  = "json"
	FormatSlack = "slack"
)

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>" when a sink
// has a secret, as GitHub's X-Hub-Signature-256 does.
const SignatureHeader = "X-Shiftplane-Signature-256"

// SinkConfig is one entry of the server config's `notifications:` list.
type SinkConfig struct {
	// Name labels the sink in logs and metrics; default "sink<index>".
	Name string `mapstructure:"name"`
	// URL receives a POST per notification.
	URL string `mapstructure:"url"`
	// Format is "json" (default: the Notification as JSON) or "slack"
	// (an incoming-webhook {"text": ...} payload).
	Format string `mapstructure:"format"`
	// Events are the kinds wanted; empty means every kind.
	Events []string `mapstructure:"events"`
	// Rollouts filters by rollout name (path.Match patterns); empty means all.
	Rollouts []string `mapstructure:"rollouts"`
	// Secret (or the content of SecretFile) keys the HMAC-SHA256 signature header.
	Secret     string `mapstructure:"secret"`
	SecretFile string `mapstructure:"secretFile"`
	// QueueSize bounds the notifications waiting for delivery; a full queue
	// drops the newest and counts it. Default 256.
	QueueSize int `mapstructure:"queueSize"`
	// Timeout bounds one delivery attempt. Default 5s.
	Timeout time.Duration `mapstructure:"timeout"`
	// RetryFor is how long one notification is retried, with exponential
	// backoff (250ms doubling to 8s), before it is given up as failed. Default 2m.
	RetryFor time.Duration `mapstructure:"retryFor"`
}

// Defaults of SinkConfig.
const (
	DefaultQueueSize = 256
	DefaultTimeout   = 5 * time.Second
	DefaultRetryFor  = 2 * time.Minute
)

// withDefaults returns c with its zero fields set; i names it.
func (c SinkConfig) withDefaults(i int) SinkConfig {
	if c.Name == "" {
		c.Name = fmt.Sprintf("sink%d", i)
	}
	if c.Format == "" {
		c.Format = FormatJSON
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.RetryFor == 0 {
		c.RetryFor = DefaultRetryFor
	}
	return c
}

// Validate checks sinks against the hosts they may call (allowHosts, as
// hooks.allowHosts: empty means loopback only). Errors name the field:
// `notifications[1].url: ...`.
func Validate(sinks []SinkConfig, allowHosts []string) error {
	var errs []error
	names := map[string]int{}
	for i, s := range sinks {
		f := fmt.Sprintf("notifications[%d]", i)
		add := func(field, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s.%s: %s", f, field, fmt.Sprintf(format, args...)))
		}
		u, err := url.Parse(s.URL)
		switch {
		case s.URL == "":
			add("url", "must be set")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			add("url", "must be an http or https URL, got %q", s.URL)
		case !policy.HostAllowed(u.Hostname(), allowHosts):
			add("url", "host %q is not in notify.allowHosts %v", u.Hostname(), allowOrDefault(allowHosts))
		}
		switch s.Format {
		case "", FormatJSON, FormatSlack:
		default:
			add("format", "must be json or slack, got %q", s.Format)
		}
		for j, e := range s.Events {
			if !knownKind(Kind(e)) {
				add(fmt.Sprintf("events[%d]", j), "unknown event %q; one of %s", e, kindList())
			}
		}
		for j, p := range s.Rollouts {
			if _, err := path.Match(p, ""); err != nil {
				add(fmt.Sprintf("rollouts[%d]", j), "bad pattern %q: %v", p, err)
			}
		}
		if s.Secret != "" && s.SecretFile != "" {
			add("secret", "give secret or secretFile, not both")
		}
		if s.SecretFile != "" {
			if b, err := os.ReadFile(s.SecretFile); err != nil {
				add("secretFile", "%v", err)
			} else if strings.TrimSpace(string(b)) == "" {
				add("secretFile", "%s is empty", s.SecretFile)
			}
		}
		if s.QueueSize < 0 {
			add("queueSize", "must be > 0, got %d", s.QueueSize)
		}
		if s.Timeout < 0 {
			add("timeout", "must be > 0, got %s", s.Timeout)
		}
		if s.RetryFor < 0 {
			add("retryFor", "must be >= 0, got %s", s.RetryFor)
		}
		name := s.withDefaults(i).Name
		if j, dup := names[name]; dup {
			add("name", "%q is also the name of notifications[%d]", name, j)
		}
		names[name] = i
	}
	return errors.Join(errs...)
}

func allowOrDefault(a []string) []string {
	if len(a) == 0 {
		return []string{"127.0.0.1", "::1", "localhost"}
	}
	return a
}

func knownKind(k Kind) bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}

func kindList() string {
	s := make([]string, len(Kinds))
	for i, k := range Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// Notification is what a JSON sink receives.
type Notification struct {
	// Seq counts this sink's notifications from 1 since the server started;
	// a gap means one was dropped or given up.
	Seq     uint64    `json:"seq"`
	Kinds   []Kind    `json:"kinds"`
	Rollout string    `json:"rollout"`
	Time    time.Time `json:"time"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Reason  string    `json:"reason"`
	Weight  int       `json:"weight"`
	// Step is the step counted from 1, as the CLI shows it ("step 2/4").
	Step      int    `json:"step"`
	StepCount int    `json:"stepCount"`
	Signal    string `json:"signal"`
	Output    string `json:"output,omitempty"`
}

// Classify returns the kinds of an event; none for an event that is not worth
// telling (hook progress, plan re-applied unchanged).
func Classify(ev policy.Event) []Kind {
	var ks []Kind
	if ev.From != ev.To {
		ks = append(ks, KindPhase)
	} else if strings.HasPrefix(ev.Reason, "step ") {
		ks = append(ks, KindStep)
	}
	if ev.To == policy.PhaseHolding && ev.From != policy.PhaseHolding {
		ks = append(ks, KindHold)
	}
	if strings.Contains(ev.Reason, "fleet rejected") {
		ks = append(ks, KindNack)
	}
	if ev.From != ev.To {
		switch ev.To {
		case policy.PhaseRollingBack, policy.PhaseRolledBack, policy.PhaseAborted:
			ks = append(ks, KindRollback)
		case policy.PhaseSucceeded:
			ks = append(ks, KindSuccess)
		}
	}
	if strings.Contains(ev.Reason, "hook failed") {
		ks = append(ks, KindHookFailure)
	}
	return ks
}

// wants reports whether a sink configured with c takes a notification.
func (c SinkConfig) wants(rollout string, kinds []Kind) bool {
	if len(c.Rollouts) > 0 {
		ok := false
		for _, p := range c.Rollouts {
			if m, _ := path.Match(p, rollout); m {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(c.Events) == 0 {
		return len(kinds) > 0
	}
	for _, k := range kinds {
		for _, e := range c.Events {
			if Kind(e) == k {
				return true
			}
		}
	}
	return false
}

// slackText renders n for a Slack-compatible incoming webhook.
func slackText(n Notification) string {
	prefix := ":arrow_forward:"
	for _, c := range []struct {
		k    Kind
		icon string
	}{{KindRollback, ":rewind:"}, {KindHookFailure, ":warning:"}, {KindNack, ":x:"}, {KindHold, ":pause_button:"}, {KindSuccess, ":white_check_mark:"}} {
		if hasKind(n.Kinds, c.k) {
			prefix = c.icon
			break
		}
	}
	phase := n.To
	if n.From != "" && n.From != n.To {
		phase = n.From + " → " + n.To
	}
	s := fmt.Sprintf("%s *%s* %s, weight %d%%, step %d/%d: %s", prefix, n.Rollout, phase, n.Weight, n.Step, n.StepCount, n.Reason)
	if n.Output != "" {
		s += "\n```" + n.Output + "```"
	}
	return s
}

func hasKind(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}
