// Package dashboard is shiftplane's web dashboard: an http.Handler that shows
// every rollout (phase, weight, signal), one page per rollout (steps, a
// timeline of weight, observed canary share and error rate, the event
// history with hook output, the fleet's ACKs and NACKs) and, to a caller
// holding the policy API's credentials, the pause/resume/promote/abort
// actions. Pages update live over server-sent events fed by
// policy.Engine.Subscribe. Everything it serves is embedded in the binary.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/api"
	"github.com/shiftplane/shiftplane/policy/signal"
)

//go:embed web
var webFS embed.FS

var pageTmpl = template.Must(template.ParseFS(webFS, "web/page.html"))

// Engine is what the dashboard reads and drives: policy.Engine. The actions
// call the same operations as the policy API.
type Engine interface {
	List() []policy.Status
	Get(name string) (policy.Status, error)
	History(name string, limit int) ([]policy.Event, error)
	Subscribe() (<-chan policy.Update, func())
	Pause(name string, opts ...policy.OpOption) (policy.Status, error)
	Resume(name string, opts ...policy.OpOption) (policy.Status, error)
	Promote(name string, opts ...policy.OpOption) (policy.Status, error)
	Abort(name string, opts ...policy.OpOption) (policy.Status, error)
}

// Options configure a Dashboard.
type Options struct {
	Engine Engine
	// Fleet lists the connected Envoys (the same lister the API uses); nil shows none.
	Fleet api.NodeLister
	// Stats are the Envoy stats sources, for the observed canary share and
	// error rate on the timeline; none leaves those lines out.
	Stats []signal.StatsSource
	Auth  Auth
	Log   *slog.Logger
	// SampleEvery is the timeline's sampling period (default 1s); Keep is
	// how many samples each rollout keeps (default 1800: 30 min at 1s).
	SampleEvery time.Duration
	Keep        int
	// HistoryLimit bounds the events a rollout page shows (default 200).
	HistoryLimit int
	// Snapshots lists the recent xDS snapshots published, oldest first; nil shows none.
	Snapshots func() []Snapshot
}

// Snapshot is one published xDS snapshot, for the list page.
type Snapshot struct {
	Version uint64    `json:"version"`
	Time    time.Time `json:"time"`
	Changed []string  `json:"changed"` // short type names: CDS, EDS, LDS, RDS
	Reason  string    `json:"reason"`
}

// Dashboard serves the pages, their JSON and the live stream. Create it with
// New and start its sampler with Run.
type Dashboard struct {
	o        Options
	log      *slog.Logger
	series   *seriesStore
	sessions *sessions
	static   http.Handler
	mux      *http.ServeMux
	// stopped closes when Run ends, so open streams end before the HTTP
	// server's graceful shutdown would wait for them.
	stopped chan struct{}
}

// New returns a dashboard; call Run to fill the timelines.
func New(o Options) *Dashboard {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.SampleEvery <= 0 {
		o.SampleEvery = time.Second
	}
	if o.Keep <= 0 {
		o.Keep = 1800
	}
	if o.HistoryLimit <= 0 {
		o.HistoryLimit = 200
	}
	sub, _ := fs.Sub(webFS, "web")
	d := &Dashboard{
		o: o, log: o.Log.With("component", "dashboard"),
		series:   newSeriesStore(o.Keep),
		sessions: newSessions(),
		static:   http.StripPrefix("/static/", http.FileServerFS(sub)),
		stopped:  make(chan struct{}),
	}
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", d.readable(d.page, true))
	m.HandleFunc("GET /rollouts/{name}", d.readable(d.page, true))
	m.HandleFunc("GET /static/", d.serveStatic)
	m.HandleFunc("GET /api/dashboard", d.readable(d.data, false))
	m.HandleFunc("GET /api/dashboard/stream", d.readable(d.stream, false))
	m.HandleFunc("POST /api/dashboard/rollouts/{name}/{verb}", d.action)
	m.HandleFunc("POST /login", d.login)
	m.HandleFunc("POST /logout", d.logout)
	d.mux = m
	return d
}

// ServeHTTP implements http.Handler.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	d.mux.ServeHTTP(w, r)
}

func (d *Dashboard) serveStatic(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "public, max-age=300")
	d.static.ServeHTTP(w, r)
}

// Run samples every rollout into its timeline until ctx ends: on every
// engine update and every SampleEvery. When it returns, open streams end.
func (d *Dashboard) Run(ctx context.Context) {
	defer close(d.stopped)
	updates, cancel := d.o.Engine.Subscribe()
	defer cancel()
	t := time.NewTicker(d.o.SampleEvery)
	defer t.Stop()
	d.sampleAll()
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			d.series.add(u.Status, d.observe(u.Status, time.Now()), time.Now())
		case <-t.C:
			d.sampleAll()
		}
	}
}

func (d *Dashboard) sampleAll() {
	now := time.Now()
	var names []string
	for _, s := range d.o.Engine.List() {
		d.series.add(s, d.observe(s, now), now)
		names = append(names, s.Plan.Name)
	}
	d.series.keepOnly(names)
}

// page serves the HTML shell with the page's data inlined, so the first
// paint needs no second request.
func (d *Dashboard) page(w http.ResponseWriter, r *http.Request) {
	who := d.authenticate(r)
	if who.needsSession() {
		who = d.ensureSession(w, r, who)
	}
	pd, err := d.pageData(r.PathValue("name"), who)
	if err != nil {
		if errors.Is(err, policy.ErrNotFound) {
			w.WriteHeader(http.StatusNotFound)
		} else {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	title := "shiftplane"
	if pd.Rollout != nil {
		title = pd.Rollout.Name + " · shiftplane"
	}
	if err := pageTmpl.Execute(w, struct {
		Title string
		Data  *PageData
	}{title, pd}); err != nil {
		d.log.Warn("render page", "error", err)
	}
}

// data serves the same data as JSON: GET /api/dashboard[?rollout=NAME].
func (d *Dashboard) data(w http.ResponseWriter, r *http.Request) {
	pd, err := d.pageData(r.URL.Query().Get("rollout"), d.authenticate(r))
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(pd)
}

// stream sends the page's data as server-sent events whenever the engine
// reports a change (at most every 200 ms) and at least every SampleEvery, so
// the timeline and the fleet move too.
func (d *Dashboard) stream(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	name := r.URL.Query().Get("rollout")
	who := d.authenticate(r)
	updates, cancel := d.o.Engine.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	tick := time.NewTicker(d.o.SampleEvery)
	defer tick.Stop()
	const minGap = 200 * time.Millisecond
	var last time.Time
	var pending <-chan time.Time
	send := func() bool {
		pd, err := d.pageData(name, who)
		if err != nil && !errors.Is(err, policy.ErrNotFound) {
			return false
		}
		b, err := json.Marshal(pd)
		if err != nil {
			return false
		}
		if _, err := fmt.Fprintf(w, "event: data\ndata: %s\n\n", b); err != nil {
			return false
		}
		fl.Flush()
		last = time.Now()
		return true
	}
	if !send() {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-d.stopped:
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			if name != "" && u.Status.Plan.Name != name {
				continue
			}
			if pending == nil {
				pending = time.After(max(0, minGap-time.Since(last)))
			}
		case <-pending:
			pending = nil
			if !send() {
				return
			}
		case <-tick.C:
			if time.Since(last) >= d.o.SampleEvery/2 && !send() {
				return
			}
		}
	}
}

// action runs pause, resume, promote or abort for an authenticated caller.
func (d *Dashboard) action(w http.ResponseWriter, r *http.Request) {
	who := d.authenticate(r)
	if !who.ok {
		d.log.Warn("dashboard action refused: not authenticated", "path", r.URL.Path, "peer", r.RemoteAddr)
		writeJSONError(w, http.StatusUnauthorized, "authentication required: log in with the policy API token, or send Authorization: Bearer <token>")
		return
	}
	if err := d.checkCSRF(r, who); err != nil {
		d.log.Warn("dashboard action refused", "path", r.URL.Path, "peer", r.RemoteAddr, "error", err)
		writeJSONError(w, http.StatusForbidden, err.Error())
		return
	}
	name, verb := r.PathValue("name"), r.PathValue("verb")
	// The page says what it showed (phase, step from 1): the engine refuses
	// an action on a rollout that has moved on since.
	var opts []policy.OpOption
	if x, ok := expectation(r); ok {
		opts = append(opts, policy.Expecting(x))
	}
	var st policy.Status
	var err error
	switch verb {
	case "pause":
		st, err = d.o.Engine.Pause(name, opts...)
	case "resume":
		st, err = d.o.Engine.Resume(name, opts...)
	case "promote":
		st, err = d.o.Engine.Promote(name, opts...)
	case "abort":
		st, err = d.o.Engine.Abort(name, append(opts, policy.Because("from the dashboard"))...)
	default:
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("unknown action %q; one of pause, resume, promote, abort", verb))
		return
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	d.log.Info("dashboard action", "rollout", name, "action", verb, "by", who.via, "peer", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(summarize(st))
}

func writeErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, policy.ErrNotFound):
		writeJSONError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, policy.ErrFailedPrecondition):
		writeJSONError(w, http.StatusConflict, strings.TrimPrefix(err.Error(), policy.ErrFailedPrecondition.Error()+": "))
	default:
		writeJSONError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// expectation reads the state the page showed from ?phase=&step= (step
// counted from 1).
func expectation(r *http.Request) (policy.Expect, bool) {
	var x policy.Expect
	q := r.URL.Query()
	if p := q.Get("phase"); p != "" {
		x.Phase = policy.Phase(p)
	}
	if s := q.Get("step"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 1 {
			i := n - 1
			x.StepIndex = &i
		}
	}
	return x, x.Phase != "" || x.StepIndex != nil
}
