package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// jsonOpts prints a Rollout as DESIGN.md promises: every field, zeros too.
var jsonOpts = protojson.MarshalOptions{EmitUnpopulated: true}

// rolloutJSON is the protojson of r, indented by encoding/json: protojson's
// own multiline output varies its spacing on purpose, and scripts diff this.
func rolloutJSON(r *shiftplanev1.Rollout) ([]byte, error) {
	b, err := jsonOpts.Marshal(r)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func phaseName(p shiftplanev1.Phase) string { return strings.TrimPrefix(p.String(), "PHASE_") }

// signalName is a signal state for people; a finished rollout has no live
// signal and shows "-".
func signalName(s shiftplanev1.SignalState) string {
	if s == shiftplanev1.SignalState_SIGNAL_STATE_UNSPECIFIED {
		return "-"
	}
	return strings.TrimPrefix(s.String(), "SIGNAL_STATE_")
}

func phaseTerminal(p shiftplanev1.Phase) bool {
	switch p {
	case shiftplanev1.Phase_PHASE_SUCCEEDED, shiftplanev1.Phase_PHASE_ROLLED_BACK,
		shiftplanev1.Phase_PHASE_ABORTED, shiftplanev1.Phase_PHASE_FAILED:
		return true
	}
	return false
}

// stepText is "2/4": the current step counted from 1, of the schedule.
func stepText(r *shiftplanev1.Rollout) string {
	if r.GetStepCount() == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", r.GetStepIndex()+1, r.GetStepCount())
}

// summary is the short state after a change: "PAUSED, weight 10%, step 2/4".
func summary(r *shiftplanev1.Rollout) string {
	return fmt.Sprintf("%s, weight %d%%, step %s", phaseName(r.GetPhase()), r.GetCanaryWeight(), stepText(r))
}

// age is a compact duration since t: 42s, 5m, 3h, 2d; "-" when t is unset.
func age(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "-"
	}
	d := now.Sub(t.AsTime())
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func writeRollout(w io.Writer, r *shiftplanev1.Rollout, format string, now time.Time) error {
	switch format {
	case "json":
		b, err := rolloutJSON(r)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "yaml":
		b, err := rolloutYAML(r)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return writeRolloutTable(w, []*shiftplanev1.Rollout{r}, now)
}

// rolloutYAML is the JSON form as block YAML, in the JSON's field order.
func rolloutYAML(r *shiftplanev1.Rollout) ([]byte, error) {
	b, err := jsonOpts.Marshal(r)
	if err != nil {
		return nil, err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return nil, err
	}
	blockStyle(&n)
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// blockStyle clears the flow and quoting styles a JSON document parses
// with, so the YAML reads like a plan file. Strings that need quotes get
// them from the encoder.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// writeRolloutTable prints NAME PHASE WEIGHT STEP SIGNAL AGE, one rollout a
// line, aligned.
func writeRolloutTable(w io.Writer, rs []*shiftplanev1.Rollout, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPHASE\tWEIGHT\tSTEP\tSIGNAL\tAGE")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%d%%\t%s\t%s\t%s\n", r.GetName(), phaseName(r.GetPhase()), r.GetCanaryWeight(),
			stepText(r), signalName(r.GetSignal().GetState()), age(r.GetCreatedAt(), now))
	}
	return tw.Flush()
}

// writeHistory prints one event a line, oldest first; hook output follows
// its event, indented.
func writeHistory(w io.Writer, evs []*shiftplanev1.Event) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tFROM\tTO\tWEIGHT\tSTEP\tREASON")
	for _, e := range evs {
		from := "-"
		if e.GetFromPhase() != shiftplanev1.Phase_PHASE_UNSPECIFIED {
			from = phaseName(e.GetFromPhase())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d%%\t%d\t%s\n", e.GetTime().AsTime().Local().Format(time.RFC3339), from,
			phaseName(e.GetToPhase()), e.GetWeight(), e.GetStepIndex()+1, e.GetReason())
		if out := strings.TrimRight(e.GetOutput(), "\n"); out != "" {
			for _, line := range strings.Split(out, "\n") {
				fmt.Fprintln(tw, "    | "+line)
			}
		}
	}
	return tw.Flush()
}

// shortType is the last part of a type URL: RouteConfiguration.
func shortType(typeURL string) string {
	if i := strings.LastIndex(typeURL, "."); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// writeFleet prints one node a line, then every NACK a node still carries.
func writeFleet(w io.Writer, nodes []*shiftplanev1.Node, now time.Time) error {
	if len(nodes) == 0 {
		_, err := fmt.Fprintln(w, "no Envoy is connected")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// Several replicas: a REPLICA column says where each node is connected.
	replicas := false
	for _, n := range nodes {
		replicas = replicas || n.GetReplica() != ""
	}
	replicaCol := func(n *shiftplanev1.Node) string { return "" }
	if replicas {
		fmt.Fprint(tw, "REPLICA\t")
		replicaCol = func(n *shiftplanev1.Node) string { return orDash(n.GetReplica()) + "\t" }
	}
	fmt.Fprintln(tw, "NODE\tCLUSTER\tPROTOCOL\tCONVERGED\tCONNECTED\tLAST STATS\tACKED\tNACKS")
	var nacks []string
	for _, n := range nodes {
		var acked []string
		nackCount := 0
		for _, t := range n.GetTypes() {
			acked = append(acked, shortType(t.GetTypeUrl())+"="+orDash(t.GetAckedVersion()))
			if t.GetNackError() != "" || t.GetNackedVersion() != "" {
				nackCount++
				nacks = append(nacks, fmt.Sprintf("%s rejected %s version %s %s ago: %s", n.GetId(), shortType(t.GetTypeUrl()),
					t.GetNackedVersion(), age(t.GetNackTime(), now), oneLine(t.GetNackError())))
			}
		}
		stats := "never"
		if n.GetLastStatsReport() != nil {
			stats = age(n.GetLastStatsReport(), now) + " ago"
		}
		converged := "no"
		if n.GetConverged() {
			converged = "yes"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", replicaCol(n), n.GetId(), n.GetCluster(), n.GetProtocol(), converged,
			age(n.GetConnectedSince(), now), stats, strings.Join(acked, " "), nackCount)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, l := range nacks {
		if _, err := fmt.Fprintln(w, "NACK: "+l); err != nil {
			return err
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// barWidth is the number of cells of watch's progress bar.
const barWidth = 30

// progressBar draws weight (0..100) as [██████░░░░].
func progressBar(weight int32) string {
	w := min(max(int(weight), 0), 100)
	full := w * barWidth / 100
	return "[" + strings.Repeat("█", full) + strings.Repeat("░", barWidth-full) + "]"
}

// watcher renders a Watch stream: on a terminal, a progress line redrawn
// in place with events printed above it; otherwise plain lines, a status
// line only when something a reader cares about changed.
type watcher struct {
	w        io.Writer
	tty      bool
	drawn    bool   // a progress line is on screen (tty)
	lastLine string // the last status line printed (plain)
	last     *shiftplanev1.Rollout
}

func newWatcher(w io.Writer, tty bool) *watcher { return &watcher{w: w, tty: tty} }

func (wt *watcher) clearLine() {
	if wt.tty && wt.drawn {
		fmt.Fprint(wt.w, "\r\x1b[K")
		wt.drawn = false
	}
}

func (wt *watcher) event(e *shiftplanev1.Event) {
	wt.clearLine()
	from := "-"
	if e.GetFromPhase() != shiftplanev1.Phase_PHASE_UNSPECIFIED {
		from = phaseName(e.GetFromPhase())
	}
	arrow := from + " → " + phaseName(e.GetToPhase())
	if e.GetFromPhase() == e.GetToPhase() {
		arrow = phaseName(e.GetToPhase())
	}
	fmt.Fprintf(wt.w, "%s  event  %s  weight %d%%  step %d: %s\n", e.GetTime().AsTime().Local().Format("15:04:05"),
		arrow, e.GetWeight(), e.GetStepIndex()+1, e.GetReason())
	if wt.tty && wt.last != nil {
		wt.draw(wt.last)
	}
}

func (wt *watcher) status(r *shiftplanev1.Rollout) {
	wt.last = r
	if wt.tty {
		wt.clearLine()
		wt.draw(r)
		return
	}
	line := statusLine(r, false)
	if line != wt.lastLine {
		wt.lastLine = line
		fmt.Fprintf(wt.w, "%s  status %s\n", time.Now().Format("15:04:05"), line)
	}
}

func (wt *watcher) draw(r *shiftplanev1.Rollout) {
	fmt.Fprintf(wt.w, "%s %3d%%  %s", progressBar(r.GetCanaryWeight()), r.GetCanaryWeight(), statusLine(r, true))
	wt.drawn = true
}

// done leaves the terminal on a fresh line.
func (wt *watcher) done() {
	if wt.tty && wt.drawn {
		fmt.Fprintln(wt.w)
		wt.drawn = false
	}
}

// statusLine is phase, weight, step, signal and fleet; live adds the
// remaining hold, which changes every second and so is left out of plain
// output.
func statusLine(r *shiftplanev1.Rollout, live bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", phaseName(r.GetPhase()))
	if !live {
		fmt.Fprintf(&b, "  weight %d%%", r.GetCanaryWeight())
	}
	fmt.Fprintf(&b, "  step %s", stepText(r))
	if live && r.GetHoldRemaining().AsDuration() > 0 && !phaseTerminal(r.GetPhase()) {
		fmt.Fprintf(&b, " (hold %s left)", r.GetHoldRemaining().AsDuration().Round(time.Second))
	}
	fmt.Fprintf(&b, "  signal %s", signalName(r.GetSignal().GetState()))
	if f := r.GetFleet(); f != nil {
		conv := "converged"
		if !f.GetConverged() {
			conv = "not converged"
		}
		fmt.Fprintf(&b, "  fleet %d node(s) %s", f.GetNodes(), conv)
	}
	return b.String()
}
