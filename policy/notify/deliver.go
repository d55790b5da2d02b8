package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shiftplane/shiftplane/policy"
)

// Subscriber is where updates come from: policy.Engine.
type Subscriber interface {
	Subscribe() (<-chan policy.Update, func())
}

// Options configure a Notifier.
type Options struct {
	Sinks []SinkConfig
	// AllowHosts are the hosts sinks may call; empty means loopback only.
	AllowHosts []string
	// Registerer gets shiftplane_notifications_total{sink,result} and
	// shiftplane_notification_queue{sink}; nil registers nothing.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Client sends the POSTs; nil is a client that never follows redirects
	// (a redirect could lead off the allowed hosts).
	Client *http.Client
	// MinBackoff and MaxBackoff bound the wait between attempts (defaults
	// 250ms and 8s).
	MinBackoff, MaxBackoff time.Duration
}

// Results counted by shiftplane_notifications_total.
const (
	ResultDelivered = "delivered"
	ResultFailed    = "failed"  // retried for retryFor, then given up
	ResultDropped   = "dropped" // the sink's queue was full
)

// Notifier delivers engine events to sinks. Run it once; the engine never
// waits for it: updates are read at once, and each sink has its own bounded
// queue and delivery goroutine.
type Notifier struct {
	sinks  []*sink
	log    *slog.Logger
	client *http.Client
	minB   time.Duration
	maxB   time.Duration
	total  *prometheus.CounterVec
	queued *prometheus.GaugeVec
}

type sink struct {
	cfg    SinkConfig
	secret []byte
	queue  chan queued
	mu     sync.Mutex
	seq    uint64
}

type queued struct {
	n    Notification
	body []byte
}

// New checks the sinks (see Validate) and returns a Notifier for them.
func New(o Options) (*Notifier, error) {
	if err := Validate(o.Sinks, o.AllowHosts); err != nil {
		return nil, err
	}
	n := &Notifier{log: o.Log, client: o.Client, minB: o.MinBackoff, maxB: o.MaxBackoff}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.log = n.log.With("component", "notify")
	if n.client == nil {
		n.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if n.minB <= 0 {
		n.minB = 250 * time.Millisecond
	}
	if n.maxB <= 0 {
		n.maxB = 8 * time.Second
	}
	n.total = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shiftplane_notifications_total", Help: "Notifications per sink by result: delivered, failed (given up after retryFor) or dropped (queue full)."}, []string{"sink", "result"})
	n.queued = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "shiftplane_notification_queue", Help: "Notifications waiting for delivery per sink."}, []string{"sink"})
	if o.Registerer != nil {
		o.Registerer.MustRegister(n.total, n.queued)
	}
	for i, c := range o.Sinks {
		c = c.withDefaults(i)
		s := &sink{cfg: c, queue: make(chan queued, c.QueueSize)}
		secret := c.Secret
		if c.SecretFile != "" {
			b, err := os.ReadFile(c.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("notifications[%d].secretFile: %w", i, err)
			}
			secret = strings.TrimSpace(string(b))
		}
		if secret != "" {
			s.secret = []byte(secret)
		}
		for _, r := range []string{ResultDelivered, ResultFailed, ResultDropped} {
			n.total.WithLabelValues(c.Name, r)
		}
		n.queued.WithLabelValues(c.Name).Set(0)
		n.sinks = append(n.sinks, s)
	}
	return n, nil
}

// Run follows sub's updates and delivers until ctx ends; what is still
// queued then is not sent.
func (n *Notifier) Run(ctx context.Context, sub Subscriber) {
	if len(n.sinks) == 0 {
		return
	}
	updates, cancel := sub.Subscribe()
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range n.sinks {
		wg.Add(1)
		go func() { defer wg.Done(); n.deliverLoop(ctx, s) }()
	}
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			if u.Event != nil {
				n.Enqueue(u.Status, *u.Event)
			}
		}
	}
}

// Enqueue hands one event to every sink that wants it, without waiting: a
// full queue drops it for that sink and counts the drop.
func (n *Notifier) Enqueue(st policy.Status, ev policy.Event) {
	kinds := Classify(ev)
	if len(kinds) == 0 {
		return
	}
	name := ev.Rollout
	if name == "" {
		name = st.Plan.Name
	}
	base := Notification{Kinds: kinds, Rollout: name, Time: ev.Time, From: string(ev.From), To: string(ev.To),
		Reason: ev.Reason, Weight: ev.Weight, Step: ev.StepIndex + 1, StepCount: st.StepCount,
		Signal: string(st.Signal.State), Output: ev.Output}
	for _, s := range n.sinks {
		if !s.cfg.wants(name, kinds) {
			continue
		}
		s.mu.Lock()
		s.seq++
		nt := base
		nt.Seq = s.seq
		s.mu.Unlock()
		body, err := encode(s.cfg.Format, nt)
		if err != nil {
			n.log.Error("encode notification", "sink", s.cfg.Name, "error", err)
			continue
		}
		select {
		case s.queue <- queued{n: nt, body: body}:
			n.queued.WithLabelValues(s.cfg.Name).Inc()
		default:
			n.total.WithLabelValues(s.cfg.Name, ResultDropped).Inc()
			n.log.Warn("notification dropped: queue full", "sink", s.cfg.Name, "rollout", name, "seq", nt.Seq, "queueSize", s.cfg.QueueSize)
		}
	}
}

func encode(format string, n Notification) ([]byte, error) {
	if format == FormatSlack {
		return json.Marshal(map[string]string{"text": slackText(n)})
	}
	return json.Marshal(n)
}

// Sign returns the signature header value for body: "sha256=" and the hex
// HMAC-SHA256 of body keyed by secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// deliverLoop sends s's notifications one at a time, in order. Each is
// retried with exponential backoff until it is delivered or retryFor passes.
func (n *Notifier) deliverLoop(ctx context.Context, s *sink) {
	for {
		var q queued
		select {
		case <-ctx.Done():
			return
		case q = <-s.queue:
		}
		n.queued.WithLabelValues(s.cfg.Name).Dec()
		start := time.Now()
		wait := n.minB
		for attempt := 1; ; attempt++ {
			err := n.post(ctx, s, q)
			if err == nil {
				n.total.WithLabelValues(s.cfg.Name, ResultDelivered).Inc()
				if attempt > 1 {
					n.log.Info("notification delivered after retries", "sink", s.cfg.Name, "seq", q.n.Seq, "attempts", attempt)
				}
				break
			}
			if ctx.Err() != nil {
				return
			}
			if time.Since(start)+wait > s.cfg.RetryFor {
				n.total.WithLabelValues(s.cfg.Name, ResultFailed).Inc()
				n.log.Error("notification given up", "sink", s.cfg.Name, "rollout", q.n.Rollout, "seq", q.n.Seq, "attempts", attempt, "error", err)
				break
			}
			if attempt == 1 {
				n.log.Warn("notification delivery failed; retrying", "sink", s.cfg.Name, "seq", q.n.Seq, "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, n.maxB)
		}
	}
}

func (n *Notifier) post(ctx context.Context, s *sink, q queued) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(q.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "shiftplane-notify")
	// Retries carry the same delivery id, so a receiver can drop a repeat
	// of one it answered too late.
	req.Header.Set("X-Shiftplane-Delivery", fmt.Sprintf("%s-%d", s.cfg.Name, q.n.Seq))
	if s.secret != nil {
		req.Header.Set(SignatureHeader, Sign(s.secret, q.body))
	}
	resp, err := n.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
