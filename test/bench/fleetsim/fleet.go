package fleetsim

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// FleetConfig configures a simulated fleet.
type FleetConfig struct {
	Addr       string
	N          int
	Mode       Mode
	NodePrefix string // node ids are <NodePrefix>-<i>
	Cluster    string // node.cluster of every client
	// KeepResources keeps each client's last resources (tests only).
	KeepResources bool
	// Parallel, when > 0, connects clients in batches of this size, each
	// batch fully configured before the next; 0 connects all at once.
	Parallel    int
	DialOptions []grpc.DialOption
	// OnAck is Config.OnAck for client i.
	OnAck func(i int) func(t Type, resources []*anypb.Any)
}

// Fleet is N simulated Envoys.
type Fleet struct {
	cfg     FleetConfig
	clients []*Client
}

// pollEvery is how often waits look at the clients. Waits report the
// clients' own ACK timestamps, so it bounds the wait, not the measurement.
const pollEvery = time.Millisecond

// Start connects cfg.N clients and waits until each has ACKed all four
// types, or ctx ends (then every client is stopped).
func Start(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	if cfg.N <= 0 {
		return nil, fmt.Errorf("fleet of %d clients", cfg.N)
	}
	if cfg.NodePrefix == "" {
		cfg.NodePrefix = "envoy"
	}
	if cfg.Cluster == "" {
		cfg.Cluster = "bench"
	}
	f := &Fleet{cfg: cfg, clients: make([]*Client, cfg.N)}
	for i := range f.clients {
		f.clients[i] = NewClient(Config{
			Addr:          cfg.Addr,
			Mode:          cfg.Mode,
			NodeID:        cfg.NodePrefix + "-" + strconv.Itoa(i),
			Cluster:       cfg.Cluster,
			KeepResources: cfg.KeepResources,
			DialOptions:   cfg.DialOptions,
		})
		if cfg.OnAck != nil {
			f.clients[i].cfg.OnAck = cfg.OnAck(i)
		}
	}
	batch := cfg.Parallel
	if batch <= 0 {
		batch = cfg.N
	}
	for lo := 0; lo < cfg.N; lo += batch {
		hi := min(lo+batch, cfg.N)
		for _, c := range f.clients[lo:hi] {
			if err := c.Start(); err != nil {
				f.Stop()
				return nil, err
			}
		}
		if err := waitClients(ctx, f.clients[lo:hi], (*Client).Configured); err != nil {
			f.Stop()
			return nil, fmt.Errorf("connect %d %s clients to %s: %w", cfg.N, cfg.Mode, cfg.Addr, err)
		}
	}
	return f, nil
}

// Clients returns the clients.
func (f *Fleet) Clients() []*Client { return f.clients }

// WaitConfigured waits until every client's current stream has ACKed all
// four types.
func (f *Fleet) WaitConfigured(ctx context.Context) error {
	return waitClients(ctx, f.clients, (*Client).Configured)
}

func waitClients(ctx context.Context, cs []*Client, done func(*Client) bool) error {
	i := 0
	for {
		for i < len(cs) && done(cs[i]) {
			i++
		}
		if i == len(cs) {
			return nil
		}
		select {
		case <-ctx.Done():
			n := 0
			for _, c := range cs[i:] {
				if !done(c) {
					n++
				}
			}
			err := fmt.Errorf("%d of %d clients not done: %w", n, len(cs), ctx.Err())
			if e := cs[i].Err(); e != nil {
				err = fmt.Errorf("%w (node %s: %v)", err, cs[i].ID(), e)
			}
			return err
		case <-time.After(pollEvery):
		}
	}
}

// Span is when a version reached the fleet: the first and last client ACK
// (Mono() nanoseconds).
type Span struct {
	First, Last int64
}

// WaitVersion waits until every client ACKed version v (or later) of t and
// returns the span of those ACKs.
func (f *Fleet) WaitVersion(ctx context.Context, t Type, v uint64) (Span, error) {
	err := waitClients(ctx, f.clients, func(c *Client) bool { return c.acked[t].Load() >= v })
	if err != nil {
		return Span{}, fmt.Errorf("%s version %d: %w", t, v, err)
	}
	var s Span
	for i, c := range f.clients {
		_, at, _ := c.Acked(t)
		if i == 0 || at < s.First {
			s.First = at
		}
		if at > s.Last {
			s.Last = at
		}
	}
	return s, nil
}

// Counters are totals over the fleet.
type Counters struct {
	Bytes        [NumTypes]int64
	Responses    [NumTypes]int64
	StreamErrors int64
}

// Sub returns c - o.
func (c Counters) Sub(o Counters) Counters {
	for t := range NumTypes {
		c.Bytes[t] -= o.Bytes[t]
		c.Responses[t] -= o.Responses[t]
	}
	c.StreamErrors -= o.StreamErrors
	return c
}

// Counters sums every client's counters.
func (f *Fleet) Counters() Counters {
	var out Counters
	for _, c := range f.clients {
		for t := range NumTypes {
			out.Bytes[t] += c.bytes[t].Load()
			out.Responses[t] += c.responses[t].Load()
		}
		out.StreamErrors += c.streamErr.Load()
	}
	return out
}

// Storm is a reconnect storm's outcome; times are from the first drop.
type Storm struct {
	Dropped    time.Duration // every connection closed
	Configured time.Duration // every client re-ACKed all four types on a new stream
	Lost       int           // clients not configured again when ctx ended
	Start      int64         // Mono() of the first drop
}

// Storm drops every client's connection at once, reconnects them all at
// once, and waits until each has ACKed all four types on its new stream.
func (f *Fleet) Storm(ctx context.Context) (Storm, error) {
	s := Storm{Start: Mono()}
	f.each(func(c *Client) { c.Drop() })
	s.Dropped = time.Duration(Mono() - s.Start)
	var mu sync.Mutex
	var startErr error
	f.each(func(c *Client) {
		if err := c.Start(); err != nil {
			mu.Lock()
			startErr = err
			mu.Unlock()
		}
	})
	if startErr != nil {
		return s, startErr
	}
	err := f.WaitConfigured(ctx)
	s.Configured = time.Duration(Mono() - s.Start)
	for _, c := range f.clients {
		if !c.Configured() {
			s.Lost++
		}
	}
	return s, err
}

// each runs fn for every client concurrently and waits.
func (f *Fleet) each(fn func(*Client)) {
	var wg sync.WaitGroup
	for _, c := range f.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(c)
		}()
	}
	wg.Wait()
}

// Stop closes every client's stream and connection.
func (f *Fleet) Stop() { f.each((*Client).Stop) }
