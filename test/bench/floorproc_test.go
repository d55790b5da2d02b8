package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// TestMain lets the test binary serve as the bench's child processes (the
// client process and the floor process), as cmd/xdsbench does.
func TestMain(m *testing.M) {
	if code, ok := RunChild(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestTableFloorProcess runs the table at a handful of clients with the
// floor in its own process and the clients in theirs: the floor's figures
// must all be there, measured in the floor process, and the two servers
// side by side.
func TestTableFloorProcess(t *testing.T) {
	const n, steps = 8, 5
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cfg := TableConfig{Ns: []int{n}, Mode: fleetsim.SotW, Steps: steps, Warmup: 1, Gap: time.Millisecond, PerN: 40 * time.Second}
	var out bytes.Buffer
	rs, err := RunTable(ctx, cfg, &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1", len(rs))
	}
	r := rs[0]
	if r.Skip != "" || r.Err != "" {
		t.Fatalf("skip %q, error %q\n%s", r.Skip, r.Err, out.String())
	}
	if !r.SideBySide {
		t.Errorf("shiftplane and the floor did not run side by side")
	}
	for name, s := range map[string]Steps{"shiftplane": r.Shiftplane, "floor": r.Floor} {
		if len(s.Latency) != steps || len(s.FirstAck) != steps || len(s.Set) != steps {
			t.Fatalf("%s: %d latencies, %d first ACKs, %d publish times, want %d each", name, len(s.Latency), len(s.FirstAck), len(s.Set), steps)
		}
		for i := range steps {
			// The step start comes from the server's process, the ACK times
			// from the clients': both CLOCK_MONOTONIC.
			if s.FirstAck[i] <= 0 || s.Latency[i] < s.FirstAck[i] || s.Latency[i] > 10*time.Second {
				t.Errorf("%s step %d: first ACK %s, last %s after the publish", name, i, s.FirstAck[i], s.Latency[i])
			}
			if s.Set[i] <= 0 {
				t.Errorf("%s step %d: publish took %s", name, i, s.Set[i])
			}
		}
		if s.CPU <= 0 || s.Alloc == 0 || s.ClientCPU <= 0 {
			t.Errorf("%s: CPU %s, alloc %d B, clients' CPU %s over %d steps: want all > 0", name, s.CPU, s.Alloc, s.ClientCPU, steps)
		}
		if b, resp := s.PerStreamStep(fleetsim.RDS); b < 100 || resp != 1 {
			t.Errorf("%s: %.0f RDS bytes, %.2f responses per stream per step, want ≥ 100 and 1", name, b, resp)
		}
	}
	if r.FloorHeapPerStream <= 0 || r.FloorConnect <= 0 {
		t.Errorf("floor: heap per idle stream %.0f B, connect %s: want both > 0", r.FloorHeapPerStream, r.FloorConnect)
	}
	table := out.String()
	for _, want := range []string{"floor p99", "floor CPU / step", "p99 / floor p99"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "one after the other") {
		t.Errorf("table says the servers ran one after the other:\n%s", table)
	}
	t.Logf("\n%s", table)
}
