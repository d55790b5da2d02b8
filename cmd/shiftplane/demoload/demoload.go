// Package demoload is the demo's load generator: GET requests to one URL
// at a constant rate, each result reported. It is the standard library
// only, so the server binary does not carry a load-testing library for the
// demo's sake (the e2e tests use vegeta through test/harness).
package demoload

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// Result is one request: when it was sent, the X-Version header of the
// answer, and whether it was a 2xx.
type Result struct {
	At      time.Time
	Version string
	OK      bool
}

// Options configure Start.
type Options struct {
	URL     string
	Rate    int           // requests per second, > 0
	Workers int           // concurrent requests at most; 0 is 16
	Timeout time.Duration // per request; 0 is 5s
}

// Start sends requests until ctx ends or the returned stop is called;
// stop waits for the requests in flight, so every one sent is reported.
// report is called from several goroutines.
func Start(ctx context.Context, o Options, report func(Result)) (stop func()) {
	if o.Workers <= 0 {
		o.Workers = 16
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	client := &http.Client{
		Timeout:   o.Timeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: o.Workers, DisableCompression: true},
	}
	var inflight sync.WaitGroup
	slots := make(chan struct{}, o.Workers)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second / time.Duration(o.Rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case slots <- struct{}{}:
			default:
				// Every worker is busy: the rate is not kept, and a request
				// not sent is not counted (as vegeta's fixed worker pool).
				continue
			}
			inflight.Add(1)
			go func(at time.Time) {
				defer func() { <-slots; inflight.Done() }()
				report(get(client, o.URL, at))
			}(time.Now())
		}
	}()
	return func() {
		cancel()
		<-done
		inflight.Wait()
		client.CloseIdleConnections()
	}
}

// get sends one request. It is not bound to the generator's context, so
// stopping lets the requests in flight finish.
func get(c *http.Client, url string, at time.Time) Result {
	resp, err := c.Get(url)
	if err != nil {
		return Result{At: at}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1024))
	return Result{At: at, Version: resp.Header.Get("X-Version"), OK: resp.StatusCode >= 200 && resp.StatusCode < 300}
}
