package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// Neighbours is what one rollout's weight step costs each stream when k
// rollouts share its listener.
type Neighbours struct {
	K int
	// Shared: all k on one listener (one RouteConfiguration); otherwise
	// each on its own listener and RouteConfiguration.
	Shared  bool
	Mode    fleetsim.Mode
	Streams int
	Steps   int
	// Bytes and Responses per stream per step, by type.
	Bytes, Responses [fleetsim.NumTypes]float64
	// Set is Publisher.Set's p50 (translate all k, marshal, answer).
	Set time.Duration
}

// RunNeighbours measures, for each k in ks, the bytes every stream receives
// when one of k rollouts moves its weight: shiftplane's stack with
// Plans(k, shared) and n in-process clients, steps weight steps of rollout
// 0. The bytes per stream do not depend on n.
func RunNeighbours(ctx context.Context, mode fleetsim.Mode, shared bool, ks []int, n, steps int) ([]Neighbours, error) {
	var out []Neighbours
	for _, k := range ks {
		r, err := runNeighbours(ctx, mode, shared, k, n, steps)
		if err != nil {
			return out, fmt.Errorf("k=%d: %w", k, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runNeighbours(ctx context.Context, mode fleetsim.Mode, shared bool, k, n, steps int) (Neighbours, error) {
	plans := Plans(k, shared)
	weights := make([]int, k)
	sp, err := startShiftplane(Shipped, StateOf(plans, weights))
	if err != nil {
		return Neighbours{}, err
	}
	defer sp.Stop()
	cl := &LocalClients{Mode: mode}
	defer cl.Close()
	if _, err := cl.Connect(ctx, sp.Addr(), n); err != nil {
		return Neighbours{}, err
	}
	c0, err := cl.Counters(ctx)
	if err != nil {
		return Neighbours{}, err
	}
	var sets []time.Duration
	for i := range steps {
		weights[0] = StepWeight(i)
		t0 := time.Now()
		rec, err := sp.Pub.Set(ctx, StateOf(plans, weights), "bench: neighbour step")
		sets = append(sets, time.Since(t0))
		if err != nil {
			return Neighbours{}, err
		}
		if !slices.Equal(rec.Changed, []string{resourcev3.RouteType}) {
			return Neighbours{}, fmt.Errorf("step %d changed %v, want routes only", i, rec.Changed)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = cl.WaitVersion(wctx, fleetsim.RDS, rec.Version)
		if err == nil {
			err = sp.Settle(wctx, rec.Version, n)
		}
		cancel()
		if err != nil {
			return Neighbours{}, fmt.Errorf("step %d: %w", i, err)
		}
	}
	c1, err := cl.Counters(ctx)
	if err != nil {
		return Neighbours{}, err
	}
	got := c1.Counters.Sub(c0.Counters)
	r := Neighbours{K: k, Shared: shared, Mode: mode, Streams: n, Steps: steps, Set: Percentile(sets, 50)}
	d := float64(n * steps)
	for t := range fleetsim.NumTypes {
		r.Bytes[t] = float64(got.Bytes[t]) / d
		r.Responses[t] = float64(got.Responses[t]) / d
	}
	return r, nil
}

// WriteNeighbours prints RunNeighbours' results as a table.
func WriteNeighbours(out io.Writer, rs []Neighbours) {
	if len(rs) == 0 {
		return
	}
	where := "K rollouts on one listener: one RouteConfiguration holds all K"
	if !rs[0].Shared {
		where = "K rollouts, each on its own listener and RouteConfiguration"
	}
	fmt.Fprintf(out, "\none rollout's weight step, %s (%s, %d in-process streams, %d steps each)\n\n", where, rs[0].Mode, rs[0].Streams, rs[0].Steps)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	head := []string{"metric"}
	for _, r := range rs {
		head = append(head, fmt.Sprintf("K=%d", r.K))
	}
	head = append(head, fmt.Sprintf("K=%d / K=%d", rs[len(rs)-1].K, rs[0].K))
	fmt.Fprintln(w, strings.Join(head, "\t"))
	row := func(name string, f func(Neighbours) float64, format string) {
		cells := []string{name}
		for _, r := range rs {
			cells = append(cells, fmt.Sprintf(format, f(r)))
		}
		if first := f(rs[0]); first > 0 {
			cells = append(cells, fmt.Sprintf("%.1f×", f(rs[len(rs)-1])/first))
		} else {
			cells = append(cells, "-")
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	row("RDS bytes / stream / step", func(r Neighbours) float64 { return r.Bytes[fleetsim.RDS] }, "%.0f")
	row("CDS+EDS+LDS bytes / stream / step", func(r Neighbours) float64 {
		return r.Bytes[fleetsim.CDS] + r.Bytes[fleetsim.EDS] + r.Bytes[fleetsim.LDS]
	}, "%.0f")
	row("responses / stream / step", func(r Neighbours) float64 {
		var s float64
		for _, v := range r.Responses {
			s += v
		}
		return s
	}, "%.2f")
	row("Publisher.Set p50 (ms)", func(r Neighbours) float64 { return float64(r.Set.Microseconds()) / 1000 }, "%.1f")
	_ = w.Flush()
}
