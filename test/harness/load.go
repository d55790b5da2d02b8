package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// LoadOptions bounds and shapes HTTPLoad. At least one of Requests and
// Duration must be set.
type LoadOptions struct {
	Requests    int           // stop after this many responses or failures (0: no count limit)
	Duration    time.Duration // stop after this long (0: no time limit)
	Rate        float64       // requests per second over all workers (0: as fast as they go)
	Concurrency int           // workers; default 1
	Timeout     time.Duration // per request; default 5 s
	Host        string        // Host header, for virtual-host routing
	Header      http.Header   // extra request headers
}

// VersionStatus is a key of LoadResult.ByVersionStatus.
type VersionStatus struct {
	Version string // X-Version of the response; "" when absent
	Status  int
}

// LoadResult counts what HTTPLoad saw.
type LoadResult struct {
	Total           int // responses + transport errors
	OK              int // 2xx responses
	Failures        int // transport errors + non-2xx responses
	TransportErrors int // no HTTP response at all
	ByVersion       map[string]int
	ByStatus        map[int]int
	ByVersionStatus map[VersionStatus]int
	FirstError      string // the first transport error, for messages
	Elapsed         time.Duration
}

func (r LoadResult) String() string {
	return fmt.Sprintf("total=%d ok=%d failures=%d transport_errors=%d by_version=%v by_status=%v first_error=%q in %v",
		r.Total, r.OK, r.Failures, r.TransportErrors, r.ByVersion, r.ByStatus, r.FirstError, r.Elapsed.Round(time.Millisecond))
}

// HTTPLoad sends GET requests to target, which must be on a loopback
// address, until opts.Requests have completed, opts.Duration has passed or
// ctx ends, whichever comes first. Requests cut short by that end are not
// counted. The error is only for unusable arguments.
func HTTPLoad(ctx context.Context, target string, opts LoadOptions) (LoadResult, error) {
	u, err := url.Parse(target)
	if err != nil {
		return LoadResult{}, fmt.Errorf("http load: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return LoadResult{}, fmt.Errorf("http load: %q: scheme must be http or https", target)
	}
	if !isLoopbackHost(u.Hostname()) {
		return LoadResult{}, fmt.Errorf("http load: %q: only loopback targets are allowed", target)
	}
	if opts.Requests <= 0 && opts.Duration <= 0 {
		return LoadResult{}, errors.New("http load: set Requests or Duration")
	}
	if opts.Rate < 0 {
		return LoadResult{}, fmt.Errorf("http load: Rate %v: must not be negative", opts.Rate)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Duration)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	tr := &http.Transport{
		Proxy:               nil, // never send test traffic through a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: opts.Timeout}).DialContext,
		MaxIdleConnsPerHost: opts.Concurrency,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: opts.Timeout}

	var tokens <-chan time.Time // nil: no rate limit
	if opts.Rate > 0 {
		every := max(time.Duration(float64(time.Second)/opts.Rate), time.Microsecond)
		tk := time.NewTicker(every)
		defer tk.Stop()
		tokens = tk.C
	}

	res := LoadResult{ByVersion: map[string]int{}, ByStatus: map[int]int{}, ByVersionStatus: map[VersionStatus]int{}}
	var (
		mu      sync.Mutex
		claimed atomic.Int64
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range opts.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if opts.Requests > 0 && claimed.Add(1) > int64(opts.Requests) {
					return
				}
				if tokens != nil {
					select {
					case <-tokens:
					case <-ctx.Done():
						return
					}
				}
				if ctx.Err() != nil {
					return
				}
				status, version, err := loadOne(ctx, client, target, opts)
				if err != nil && ctx.Err() != nil {
					return // cut short by the end of the run, not a failure
				}
				mu.Lock()
				res.Total++
				switch {
				case err != nil:
					res.TransportErrors++
					res.Failures++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				default:
					if status >= 200 && status < 300 {
						res.OK++
					} else {
						res.Failures++
					}
					res.ByVersion[version]++
					res.ByStatus[status]++
					res.ByVersionStatus[VersionStatus{version, status}]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res, nil
}

func loadOne(ctx context.Context, client *http.Client, target string, opts LoadOptions) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, "", err
	}
	for k, vs := range opts.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if opts.Host != "" {
		req.Host = opts.Host
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	// Drain (bounded) so the connection is reused.
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return 0, "", err
	}
	return resp.StatusCode, resp.Header.Get("X-Version"), nil
}
