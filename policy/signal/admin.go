package signal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// AdminFilter is the stats filter the scraper asks Envoy's admin for.
const AdminFilter = "outlier_detection|upstream_rq"

// maxAdminBody bounds one /stats answer; a fleet-sized Envoy stays far below.
const maxAdminBody = 32 << 20

// AdminTarget is one Envoy admin endpoint to poll.
type AdminTarget struct {
	// URL is the admin base URL, e.g. http://127.0.0.1:9901.
	URL string
	// Name is the node name its reports carry; "" uses URL. Give it the
	// Envoy's node id if the same Envoy also streams to the sink, so the
	// gate counts it once.
	Name string
}

// AdminScraperConfig configures an AdminScraper.
type AdminScraperConfig struct {
	Targets  []AdminTarget
	Interval time.Duration // between polls; default 1s
	Timeout  time.Duration // per request; default Interval, at most 5s
	Client   *http.Client  // nil: a plain client
	Log      *slog.Logger  // nil: discard
	Now      func() time.Time
}

// AdminScraper is a StatsSource for Envoys run without the MetricsService
// sink: it polls each admin endpoint's /stats?format=json for the stats the
// gate reads and keeps the latest and previous answer per target. A target
// that stops answering keeps its last report, which then goes stale. Safe
// for concurrent use.
type AdminScraper struct {
	targets  []adminTarget
	interval time.Duration
	timeout  time.Duration
	client   *http.Client
	log      *slog.Logger
	now      func() time.Time
	onReport func()

	mu      sync.Mutex
	reports map[string]NodeReport // by node name
	failing map[string]bool       // by node name: last poll failed (logged once)
}

type adminTarget struct {
	name     string
	statsURL string
}

var _ StatsSource = (*AdminScraper)(nil)

// NewAdminScraper checks cfg and returns a scraper; Run starts polling.
func NewAdminScraper(cfg AdminScraperConfig) (*AdminScraper, error) {
	if cfg.Now == nil {
		return nil, errors.New("admin scraper: now: must be set")
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("admin scraper: interval: must not be negative, got %s", cfg.Interval)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("admin scraper: timeout: must not be negative, got %s", cfg.Timeout)
	}
	s := &AdminScraper{
		interval: cfg.Interval,
		timeout:  cfg.Timeout,
		client:   cfg.Client,
		log:      cfg.Log,
		now:      cfg.Now,
		reports:  map[string]NodeReport{},
		failing:  map[string]bool{},
	}
	if s.interval == 0 {
		s.interval = time.Second
	}
	if s.timeout == 0 {
		s.timeout = min(s.interval, 5*time.Second)
	}
	if s.client == nil {
		s.client = &http.Client{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	seen := map[string]bool{}
	for i, t := range cfg.Targets {
		u, err := url.Parse(t.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("admin scraper: targets[%d].url: want http://host:port, got %q", i, t.URL)
		}
		name := t.Name
		if name == "" {
			name = t.URL
		}
		if seen[name] {
			return nil, fmt.Errorf("admin scraper: targets[%d].name: %q is used twice", i, name)
		}
		seen[name] = true
		u = u.JoinPath("stats")
		u.RawQuery = url.Values{"format": {"json"}, "filter": {AdminFilter}}.Encode()
		s.targets = append(s.targets, adminTarget{name: name, statsURL: u.String()})
	}
	return s, nil
}

// Reports implements StatsSource.
func (s *AdminScraper) Reports() []NodeReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeReport, 0, len(s.reports))
	for _, r := range s.reports {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Run polls every target each interval until ctx ends, then returns nil.
func (s *AdminScraper) Run(ctx context.Context) error {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		s.Poll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Poll asks every target once, concurrently, and records the answers.
// Failures are logged (once until the target recovers) and leave the
// target's last report in place.
func (s *AdminScraper) Poll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range s.targets {
		wg.Go(func() {
			values, err := s.fetch(ctx, t.statsURL)
			s.record(t, values, err)
		})
	}
	wg.Wait()
}

func (s *AdminScraper) record(t adminTarget, values map[string]float64, err error) {
	at := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if !s.failing[t.name] {
			s.failing[t.name] = true
			s.log.Warn("envoy admin scrape failed", "node", t.name, "url", t.statsURL, "error", err)
		}
		return
	}
	if s.failing[t.name] {
		delete(s.failing, t.name)
		s.log.Info("envoy admin scrape recovered", "node", t.name)
	}
	r := NodeReport{Node: t.name, At: at, Latest: values}
	if old, ok := s.reports[t.name]; ok && !CountersWentDown(old.Latest, values, nil) {
		r.Prev, r.PrevAt = old.Latest, old.At
	}
	s.reports[t.name] = r
	if s.onReport != nil {
		s.onReport()
	}
}

// SetOnReport makes the scraper call fn after each report it keeps (the
// engine's Notice), with its lock held: fn must not block. Call before Run.
func (s *AdminScraper) SetOnReport(fn func()) { s.onReport = fn }

// adminStats is Envoy's /stats?format=json. Counters and gauges are
// {"name","value"} entries; histograms come as one {"histograms": ...}
// entry and text readouts carry string values, and both are skipped.
type adminStats struct {
	Stats []struct {
		Name  string          `json:"name"`
		Value json.RawMessage `json:"value"`
	} `json:"stats"`
}

func (s *AdminScraper) fetch(ctx context.Context, statsURL string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, statsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s: %s", resp.Status, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	if len(body) > maxAdminBody {
		return nil, fmt.Errorf("answer larger than %d bytes", maxAdminBody)
	}
	var st adminStats
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("decoding stats JSON: %w", err)
	}
	values := map[string]float64{}
	for _, e := range st.Stats {
		if e.Name == "" || !Wanted(e.Name) {
			continue
		}
		var v float64
		if json.Unmarshal(e.Value, &v) != nil {
			continue // a text readout, or no value
		}
		values[e.Name] = v
	}
	return values, nil
}
