package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// FloorEnv marks a process started by StartFloorProcess; its main calls
// ServeFloor (RunChild does).
const FloorEnv = "SHIFTPLANE_BENCH_FLOOR"

// floorServer is the floor as RunTable drives it: in this process (Floor)
// or in its own (FloorProcess).
type floorServer interface {
	Target
	// Mem reads the floor's process after a full GC.
	Mem(ctx context.Context) (Mem, error)
}

// Mem implements floorServer: the floor shares this process.
func (f *Floor) Mem(context.Context) (Mem, error) { return ReadMem(), nil }

// floorStep is the floor process's reply to a step.
type floorStep struct {
	Version uint64        `json:"version"`
	Start   int64         `json:"start"` // fleetsim.Mono() just before the publish
	Set     time.Duration `json:"set"`   // how long the publish took
}

// FloorProcess is the floor server (Floor) in a child process of its own:
// the same binary, started with FloorEnv set, driven over its stdin and
// stdout. So the process holds only the floor's streams (one descriptor
// each), and its heap, RSS, CPU and allocations are the floor's alone, as
// the bench process's are shiftplane's. Steps are timed and costed in that
// process (SelfMeasured); CLOCK_MONOTONIC is shared, so its step start and
// the clients' ACK times compare. Calls are serialised by the caller.
type FloorProcess struct {
	c    *child
	addr string
	last floorStep
	cost StepCost
}

var _ SelfMeasured = (*FloorProcess)(nil)

// StartFloorProcess starts exe (normally os.Executable()) as a floor
// process and its floor server (StartFloor) on 127.0.0.1:0.
func StartFloorProcess(ctx context.Context, exe string) (*FloorProcess, error) {
	c, err := startChildProcess("floor process", exe, nil, []string{FloorEnv + "=1"})
	if err != nil {
		return nil, err
	}
	r, err := c.call(ctx, childRequest{Op: "start"})
	if err != nil {
		c.close()
		return nil, err
	}
	return &FloorProcess{c: c, addr: r.Addr}, nil
}

// Name implements Target.
func (f *FloorProcess) Name() string { return "floor" }

// Addr implements Target.
func (f *FloorProcess) Addr() string { return f.addr }

// Step implements Target.
func (f *FloorProcess) Step(ctx context.Context, w int) (uint64, error) {
	r, err := f.c.call(ctx, childRequest{Op: "step", Weight: w})
	if err != nil {
		return 0, err
	}
	f.last = r.Step
	return r.Step.Version, nil
}

// Settle implements Target: the floor process counted n ACKs of version v.
func (f *FloorProcess) Settle(ctx context.Context, v uint64, n int) error {
	r, err := f.c.call(ctx, childRequest{Op: "settle", Version: v, N: n})
	if err != nil {
		return err
	}
	f.cost = r.Cost
	return nil
}

// LastStep implements SelfMeasured.
func (f *FloorProcess) LastStep() (int64, time.Duration) { return f.last.Start, f.last.Set }

// LastCost implements SelfMeasured.
func (f *FloorProcess) LastCost() StepCost { return f.cost }

// Mem implements floorServer.
func (f *FloorProcess) Mem(ctx context.Context) (Mem, error) {
	r, err := f.c.call(ctx, childRequest{Op: "mem"})
	return r.Mem, err
}

// StartProfile CPU-profiles the floor process into path until StopProfile.
func (f *FloorProcess) StartProfile(ctx context.Context, path string) error {
	_, err := f.c.call(ctx, childRequest{Op: "profile", Path: path})
	return err
}

// StopProfile ends StartProfile's profile.
func (f *FloorProcess) StopProfile(ctx context.Context) error {
	_, err := f.c.call(ctx, childRequest{Op: "profile"})
	return err
}

// Stop implements Target: the process stops its server and exits.
func (f *FloorProcess) Stop() { f.c.close() }

// ServeFloor is the floor process's main loop: requests on r, replies on
// w, one JSON line each, until r closes. Ops: start (StartFloor; replies
// its address), mem (ReadMem), step (Floor.Step at the weight, timed from
// just before it), settle (Floor.Settle; replies the process's StepCost
// since the step began), profile (a CPU profile into path; no path stops
// it).
func ServeFloor(r io.Reader, w io.Writer) (err error) {
	var fl *Floor
	var prof *os.File
	defer func() {
		if prof != nil {
			pprof.StopCPUProfile()
			err = errors.Join(err, prof.Close())
		}
		if fl != nil {
			fl.Stop()
		}
	}()
	var meter costMeter
	return serveRequests(r, w, func(ctx context.Context, req childRequest, resp *childResponse) (err error) {
		switch {
		case req.Op == "start":
			if fl != nil {
				err = errors.New("start: already started")
				break
			}
			if fl, err = StartFloor(); err == nil {
				resp.Addr = fl.Addr()
			}
		case fl == nil && req.Op != "mem" && req.Op != "profile":
			err = fmt.Errorf("%s before start", req.Op)
		case req.Op == "mem":
			resp.Mem = ReadMem()
		case req.Op == "step":
			// As Stepper.Step does in process: cost, then time, then publish.
			meter = startCost()
			t0 := fleetsim.Mono()
			var v uint64
			v, err = fl.Step(ctx, req.Weight)
			resp.Step = floorStep{Version: v, Start: t0, Set: time.Duration(fleetsim.Mono() - t0)}
		case req.Op == "settle":
			if err = fl.Settle(ctx, req.Version, req.N); err == nil {
				resp.Cost = meter.since()
			}
		case req.Op == "profile":
			err = func() error {
				if prof != nil {
					pprof.StopCPUProfile()
					f := prof
					prof = nil
					if err := f.Close(); err != nil {
						return err
					}
				}
				if req.Path == "" {
					return nil
				}
				f, err := os.Create(req.Path)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					return err
				}
				prof = f
				return nil
			}()
		default:
			err = fmt.Errorf("unknown op %q", req.Op)
		}
		return err
	})
}

// RunChild runs this process as one of the bench's child processes if its
// environment says it is one (ChildEnv: a client process, ServeChild;
// FloorEnv: the floor process, ServeFloor) and returns its exit code. ok is
// false if it is not a child. cmd/xdsbench's main and this package's
// TestMain call it first.
func RunChild() (code int, ok bool) {
	switch {
	case os.Getenv(ChildEnv) != "":
		mode, err := fleetsim.ParseMode(os.Getenv("SHIFTPLANE_BENCH_MODE"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench client process:", err)
			return 2, true
		}
		parallel, _ := strconv.Atoi(os.Getenv("SHIFTPLANE_BENCH_PARALLEL"))
		if _, err := RaiseNoFileMax(); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench client process:", err)
		}
		if err := ServeChild(os.Stdin, os.Stdout, mode, parallel); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench client process:", err)
			return 1, true
		}
		return 0, true
	case os.Getenv(FloorEnv) != "":
		if _, err := RaiseNoFileMax(); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench floor process:", err)
		}
		if err := ServeFloor(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench floor process:", err)
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
