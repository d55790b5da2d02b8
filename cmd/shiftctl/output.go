package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

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

// stepText is "2/4": the current step counted from 1, of the schedule, the
// one numbering every surface uses.
func stepText(r *shiftplanev1.Rollout) string {
	if r.GetStepCount() == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", r.GetStepIndex()+1, r.GetStepCount())
}

// summary is the short state after a change: "PAUSED, weight 10%, step 2/4".
func summary(r *shiftplanev1.Rollout) string {
	return fmt.Sprintf("%s, weight %s, step %s", phaseName(r.GetPhase()), weightText(r), stepText(r))
}

// weightText is the weight the fleet holds, and the one it was sent while
// not every node has ACKed it: "10% (0% sent, not yet ACKed by the fleet)".
func weightText(r *shiftplanev1.Rollout) string {
	if r.GetWeightPending() && r.GetTargetWeight() != r.GetCanaryWeight() {
		return fmt.Sprintf("%d%% (%d%% sent, not yet ACKed by the fleet)", r.GetCanaryWeight(), r.GetTargetWeight())
	}
	return fmt.Sprintf("%d%%", r.GetCanaryWeight())
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

// outputFormats are the -o values of get and list.
const outputFormats = "json, yaml, wide or name"

func checkOutput(o string) error {
	switch o {
	case "", "json", "yaml", "wide", "name", "table":
		return nil
	}
	return fmt.Errorf("-o: must be %s, got %q", outputFormats, o)
}

// writeRollouts prints rs in format: json and yaml as rollout documents
// (list: a JSON {"items": [...]}, or one YAML document per rollout), name
// as rollout/NAME lines, wide and table as tables.
func writeRollouts(w io.Writer, rs []*shiftplanev1.Rollout, format string, list bool, now time.Time) error {
	switch format {
	case "json", "yaml":
		var docs []*yaml.Node
		for _, r := range rs {
			n, err := rolloutNode(r)
			if err != nil {
				return err
			}
			docs = append(docs, n)
		}
		if format == "yaml" {
			for i, n := range docs {
				if i > 0 {
					fmt.Fprintln(w, "---")
				}
				b, err := encodeYAML(n)
				if err != nil {
					return err
				}
				if _, err := w.Write(b); err != nil {
					return err
				}
			}
			return nil
		}
		n := &yaml.Node{Kind: yaml.MappingNode}
		if list {
			n.Content = []*yaml.Node{{Kind: yaml.ScalarNode, Value: "items"}, {Kind: yaml.SequenceNode, Content: docs}}
		} else if len(docs) == 1 {
			n = docs[0]
		}
		b, err := encodeJSON(n)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "name":
		for _, r := range rs {
			if _, err := fmt.Fprintf(w, "rollout/%s\n", r.GetName()); err != nil {
				return err
			}
		}
		return nil
	case "wide":
		return writeRolloutWide(w, rs, now)
	}
	return writeRolloutTable(w, rs, now)
}

// writeRolloutWide is the table with the hold, the fleet and the message.
// rolloutJSON and rolloutYAML are one rollout document.
func rolloutJSON(r *shiftplanev1.Rollout) ([]byte, error) {
	n, err := rolloutNode(r)
	if err != nil {
		return nil, err
	}
	return encodeJSON(n)
}

func rolloutYAML(r *shiftplanev1.Rollout) ([]byte, error) {
	n, err := rolloutNode(r)
	if err != nil {
		return nil, err
	}
	return encodeYAML(n)
}

func writeRolloutWide(w io.Writer, rs []*shiftplanev1.Rollout, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPHASE\tWEIGHT\tOBSERVED\tSTEP\tHOLD LEFT\tSIGNAL\tFLEET\tAGE\tMESSAGE")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%d%%\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetName(), phaseName(r.GetPhase()), r.GetCanaryWeight(),
			observedWide(r), stepText(r), holdLeft(r), signalName(r.GetSignal().GetState()), fleetText(r.GetFleet()), age(r.GetCreatedAt(), now), oneLine(r.GetMessage()))
	}
	return tw.Flush()
}

// holdLeft is the rounded remaining hold, "-" when none is counting.
func holdLeft(r *shiftplanev1.Rollout) string {
	d := r.GetHoldRemaining().AsDuration()
	if d <= 0 || phaseTerminal(r.GetPhase()) {
		return "-"
	}
	return roundDuration(d).String()
}

// fleetText is "2/2 converged" style: nodes and whether they converged.
func fleetText(f *shiftplanev1.FleetStatus) string {
	if f == nil || f.GetNodes() == 0 {
		return "no nodes"
	}
	if f.GetConverged() {
		return fmt.Sprintf("%d node(s) converged", f.GetNodes())
	}
	return fmt.Sprintf("%d node(s) not converged", f.GetNodes())
}

// observedText is the canary's share of the requests the fleet reported
// in the current step, next to the configured weight: "9.8%", "settling"
// (the requests so far came partly before the fleet ACKed the step), "no
// traffic yet" (nodes report, no request counted yet), "no stats yet" (no
// node reported), "-" for a finished rollout. No data is never shown as 0%.
func observedText(r *shiftplanev1.Rollout) string {
	if phaseTerminal(r.GetPhase()) {
		return "-"
	}
	return shareText(r.GetObserved())
}

// observedWide is observedText with the requests it counts.
func observedWide(r *shiftplanev1.Rollout) string {
	o := r.GetObserved()
	if phaseTerminal(r.GetPhase()) || o == nil || o.CanaryShare == nil {
		return observedText(r)
	}
	return fmt.Sprintf("%s of %d", shareText(o), o.GetStableRequests()+o.GetCanaryRequests())
}

// shareText is one step's observed canary share.
func shareText(o *shiftplanev1.StepTraffic) string {
	switch {
	case o == nil || o.GetNodes() == 0:
		return "no stats yet"
	case o.CanaryShare == nil && o.GetMirror() > 0 && o.GetMirroredRequests() > 0:
		// canary.match requests and mirrored copies are one count
		return fmt.Sprintf("no share (v2 %d mirrored + matched)", o.GetMirroredRequests())
	case o.CanaryShare != nil && o.GetMirroredRequests() > 0:
		return fmt.Sprintf("%.1f%% (+%d mirrored)", o.GetCanaryShare(), o.GetMirroredRequests())
	case o.CanaryShare == nil && o.GetTransitionStableRequests()+o.GetTransitionCanaryRequests() > 0:
		return "settling" // requests so far were served partly at the previous weight
	case o.CanaryShare == nil:
		return "no traffic yet"
	}
	return fmt.Sprintf("%.1f%%", o.GetCanaryShare())
}

// stepSplitText says what the fleet served in a step: "v2 9.8% of 2441
// requests (v1 2201, v2 240)".
func stepSplitText(o *shiftplanev1.StepTraffic) string {
	if o.CanaryShare == nil {
		return shareText(o)
	}
	txt := fmt.Sprintf("v2 %.1f%% of %d requests (v1 %d, v2 %d)", o.GetCanaryShare(),
		o.GetStableRequests()+o.GetCanaryRequests(), o.GetStableRequests(), o.GetCanaryRequests())
	if m := o.GetMirroredRequests(); m > 0 {
		txt += fmt.Sprintf("; v2 got %d mirrored copies (not user requests)", m)
	}
	return txt
}

// writeRolloutTable prints NAME PHASE WEIGHT STEP SIGNAL AGE, one rollout a
// line, aligned.
func writeRolloutTable(w io.Writer, rs []*shiftplanev1.Rollout, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPHASE\tWEIGHT\tOBSERVED\tSTEP\tSIGNAL\tAGE")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%d%%\t%s\t%s\t%s\t%s\n", r.GetName(), phaseName(r.GetPhase()), r.GetCanaryWeight(),
			observedText(r), stepText(r), signalName(r.GetSignal().GetState()), age(r.GetCreatedAt(), now))
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
		if o := e.GetObserved(); o != nil {
			fmt.Fprintf(tw, "    | step %d at %d%% served %s\n", o.GetStepIndex()+1, o.GetWeight(), stepSplitText(o))
		}
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
	fmt.Fprintln(tw, "NODE\tCLUSTER\tKIND\tPROTOCOL\tCONVERGED\tCONNECTED\tLAST STATS\tACKED\tNACKS")
	var nacks, missing []string
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
			for _, m := range t.GetMissing() {
				missing = append(missing, fmt.Sprintf("%s asked for %s %q, which version %s does not serve", n.GetId(), shortType(t.GetTypeUrl()), m, orDash(t.GetAckedVersion())))
			}
		}
		stats := "never"
		if n.GetLastStatsReport() != nil {
			stats = age(n.GetLastStatsReport(), now) + " ago"
		}
		converged := "no"
		switch {
		case n.GetNotReady():
			converged = "not ready" // ACKed nothing yet
		case n.GetConverged():
			converged = "yes"
		}
		kind := orDash(n.GetClientKind())
		if ua := n.GetUserAgent(); ua != "" {
			kind += " (" + ua + ")"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", replicaCol(n), n.GetId(), n.GetCluster(), kind, n.GetProtocol(), converged,
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
	for _, l := range missing {
		if _, err := fmt.Fprintln(w, "MISSING: "+l); err != nil {
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

// progressBar draws weight (0..100) as [██████░░░░], cells wide inside.
func progressBar(weight int32, cells int) string {
	w := min(max(int(weight), 0), 100)
	full := w * cells / 100
	return "[" + strings.Repeat("█", full) + strings.Repeat("░", cells-full) + "]"
}

// watcher renders a Watch stream: on a terminal, a progress line redrawn
// in place, cut to the terminal's width so it never wraps (a wrapped line
// is not erased by \r and stacks up), with events printed above it;
// otherwise plain lines, a status line only when something a reader cares
// about changed.
type watcher struct {
	w        io.Writer
	tty      bool
	width    func() int // terminal columns; nil or 0: unknown
	drawn    bool       // a progress line is on screen (tty)
	lastLine string     // the last status line printed (plain)
	last     *shiftplanev1.Rollout
}

func newWatcher(w io.Writer, tty bool, width func() int) *watcher {
	return &watcher{w: w, tty: tty, width: width}
}

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
	step := fmt.Sprintf("step %d", e.GetStepIndex()+1)
	if n := wt.last.GetStepCount(); n > 0 {
		step += fmt.Sprintf("/%d", n)
	}
	wt.println(fmt.Sprintf("%s  event  %s  weight %d%%  %s  %s", e.GetTime().AsTime().Local().Format("15:04:05"),
		arrow, e.GetWeight(), step, e.GetReason()))
	if o := e.GetObserved(); o != nil {
		wt.println(fmt.Sprintf("          observed  step %d at %d%% served %s", o.GetStepIndex()+1, o.GetWeight(), stepSplitText(o)))
	}
	if wt.tty && wt.last != nil {
		wt.draw(wt.last)
	}
}

// note prints a line about the watch itself (a lost connection).
func (wt *watcher) note(msg string) {
	wt.clearLine()
	wt.println(time.Now().Format("15:04:05") + "  " + msg)
	if wt.tty && wt.last != nil {
		wt.draw(wt.last)
	}
}

// println prints a line that scrolls up; on a terminal it is cut to the
// width too, so the screen holds what was printed, line for line.
func (wt *watcher) println(line string) {
	if wt.tty {
		line = fit(line, wt.columns())
	}
	fmt.Fprintln(wt.w, line)
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

func (wt *watcher) columns() int {
	if wt.width == nil {
		return 0
	}
	return wt.width()
}

func (wt *watcher) draw(r *shiftplanev1.Rollout) {
	cols := wt.columns()
	text := fmt.Sprintf("%3d%%  %s", r.GetCanaryWeight(), statusLine(r, true))
	if r.GetObserved() != nil && !phaseTerminal(r.GetPhase()) {
		// Next to the configured weight, what the fleet served in this step.
		// Plain output prints a line per change and the share changes with
		// every report, so only the live line shows it.
		text = fmt.Sprintf("%3d%% (observed %s)  %s", r.GetCanaryWeight(), observedWide(r), statusLine(r, true))
	}
	// The words come first; the bar takes what room is left, up to
	// barWidth cells, and is left out when fewer than 10 are.
	bw := barWidth
	if cols > 0 {
		bw = min(barWidth, cols-1-len([]rune(text))-3)
	}
	line := text
	if bw >= 10 {
		line = progressBar(r.GetCanaryWeight(), bw) + " " + text
	}
	// One column is left free: writing the last one makes some terminals
	// wrap at once.
	fmt.Fprint(wt.w, fit(line, cols))
	wt.drawn = true
}

// fit cuts s to cols-1 cells (every rune here is one cell wide); cols 0
// means no limit.
func fit(s string, cols int) string {
	if cols <= 0 {
		return s
	}
	rs := []rune(s)
	if len(rs) < cols {
		return s
	}
	if cols < 2 {
		return ""
	}
	return string(rs[:cols-2]) + "…"
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
		fmt.Fprintf(&b, "  weight %s", weightText(r))
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
