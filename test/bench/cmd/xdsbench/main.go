// Command xdsbench prints the xDS bench table (package test/bench): weight
// propagation, idle cost per stream, bytes per step and a reconnect storm
// for each fleet size, against the floor. `make bench` runs it.
//
//	xdsbench [-n 100,1000,10000] [-mode sotw|delta] [-steps 100] [-steps-large 0] [-storm 1000,10000]
//	xdsbench -ab ordered-ads [-n 1000,5000]   shipped stack vs a proposed change, side by side
//
// The simulated Envoys run in child processes (this binary again), and so
// does the floor server, so that each server's heap, RSS and CPU are its
// own; -in-process runs them all here.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shiftplane/shiftplane/test/bench"
	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

func main() {
	if code, ok := bench.RunChild(); ok {
		os.Exit(code)
	}
	os.Exit(run())
}

func run() int {
	var (
		ns        = flag.String("n", "100,1000,10000", "fleet sizes, comma-separated")
		mode      = flag.String("mode", "sotw", "xDS variant: sotw or delta")
		steps     = flag.Int("steps", 300, "measured weight steps per N and server (≥ 20; the p99 of 100 is the second-slowest step)")
		stepsL    = flag.Int("steps-large", 0, "measured weight steps at N > 1000 (0: -steps; fewer make p99 the slowest step)")
		warmup    = flag.Int("warmup", 3, "unmeasured weight steps first")
		storm     = flag.String("storm", "1000,10000", "fleet sizes to run the reconnect storm at, comma-separated (\"\" for none)")
		parallel  = flag.Int("parallel", 0, "connect clients in batches of this size (0: all at once)")
		inProcess = flag.Bool("in-process", false, "run the clients and the floor in this process (heap and CPU then include them)")
		gap       = flag.Duration("gap", 50*time.Millisecond, "pause between weight steps")
		cpuprof   = flag.String("cpuprofile", "", "CPU-profile the measured steps into PREFIX-<server>-<N>.pprof")
		variant   = flag.String("variant", "shipped", "xds stack: shipped, or ordered-ads (an experiment, see bench.OrderedADS)")
		abVariant = flag.String("ab", "", "instead of the table, compare the shipped stack with this variant side by side")
		memprof   = flag.String("memprofile", "", "write the heap with shiftplane's fleet idle to PREFIX-<N>.pprof and after the steps to PREFIX-<N>-steps.pprof")
		perN      = flag.Duration("per-n", 15*time.Minute, "time limit for each fleet size")
		total     = flag.Duration("timeout", 45*time.Minute, "time limit for the whole run")
		neighbour = flag.String("neighbours", "1,100,1000", "rollouts on one listener for the bytes-per-step table, comma-separated (\"\" for none)")
		table     = flag.Bool("table", true, "run the weight-step table")
		promoteN  = flag.Int("promote-n", 1000, "streams per server in the promotion bench (0 skips it)")
		promoteR  = flag.Int("promote-rounds", 5, "promotion rounds per server (each promotes every rollout once)")
		idleN     = flag.Int("idle-rollouts", 1000, "rollouts in the idle-CPU measurement (0 skips it)")
		idleFor   = flag.Duration("idle-for", 20*time.Second, "idle spell measured per engine tick")
		spBin     = flag.String("shiftplane-bin", "", "shiftplane binary for the promotion bench (default: built from this module)")
		ctlBin    = flag.String("shiftctl-bin", "", "shiftctl binary for the promotion bench (default: built from this module)")
	)
	flag.Parse()
	m, err := fleetsim.ParseMode(*mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "xdsbench:", err)
		return 2
	}
	v, err := bench.ParseVariant(*variant)
	if err != nil {
		fmt.Fprintln(os.Stderr, "xdsbench:", err)
		return 2
	}
	cfg := bench.TableConfig{Variant: v, Mode: m, Steps: *steps, StepsLarge: *stepsL, Warmup: *warmup, Parallel: *parallel, InProcess: *inProcess, Gap: *gap, CPUProfile: *cpuprof, MemProfile: *memprof, PerN: *perN, Log: os.Stderr}
	if cfg.Ns, err = ints(*ns); err != nil || len(cfg.Ns) == 0 {
		fmt.Fprintf(os.Stderr, "xdsbench: -n %q: want sizes like 100,1000\n", *ns)
		return 2
	}
	if cfg.StormAt, err = ints(*storm); err != nil {
		fmt.Fprintf(os.Stderr, "xdsbench: -storm %q: %v\n", *storm, err)
		return 2
	}
	if cfg.Steps < 1 {
		fmt.Fprintln(os.Stderr, "xdsbench: -steps must be ≥ 1")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *total)
	defer cancel()
	if *abVariant != "" {
		v, err := bench.ParseVariant(*abVariant)
		if err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench:", err)
			return 2
		}
		if err := bench.RunAB(ctx, cfg, v, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench:", err)
			return 1
		}
		return 0
	}
	ks, err := ints(*neighbour)
	if err != nil {
		fmt.Fprintf(os.Stderr, "xdsbench: -neighbours %q: %v\n", *neighbour, err)
		return 2
	}
	// The promotion bench runs first: its clients and its peer live in this
	// process, which after the N=10,000 table is still giving back that
	// fleet's memory. Measured after the table, shiftplane p50 108 ms and the
	// peer's 318 ms; alone, same code and machine, 56 and 186 ms.
	if *promoteN > 0 {
		pc := bench.PromoteConfig{N: *promoteN, Rollouts: 10, Gap: 300 * time.Millisecond, Rounds: *promoteR,
			DrainTimeout: 200 * time.Millisecond, IdleRollouts: *idleN, IdleFor: *idleFor, Shiftplane: *spBin, Shiftctl: *ctlBin, Log: os.Stderr}
		pr, err := bench.RunPromotion(ctx, pc)
		if err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench: promotion bench:", err)
			return 1
		}
		bench.WritePromoteTable(os.Stdout, pc, pr)
		fmt.Println()
	}
	rc := 0
	if *table {
		results, err := bench.RunTable(ctx, cfg, os.Stdout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench:", err)
			return 1
		}
		// Bytes per step against neighbours: the mode measured, all on one
		// listener (how plans share a port today), then each on its own
		// listener over delta xDS (the one layout where a step is flat).
		for _, nc := range []struct {
			mode   fleetsim.Mode
			shared bool
		}{{m, true}, {fleetsim.Delta, false}} {
			if len(ks) == 0 {
				break
			}
			nb, err := bench.RunNeighbours(ctx, nc.mode, nc.shared, ks, 20, 10)
			bench.WriteNeighbours(os.Stdout, nb)
			if err != nil {
				fmt.Fprintln(os.Stderr, "xdsbench: neighbours:", err)
				return 1
			}
		}
		for _, r := range results {
			if r.Err != "" {
				rc = 1
			}
		}
	}
	return rc
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}
