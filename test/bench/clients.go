package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shiftplane/shiftplane/test/bench/fleetsim"
)

// Clients is a simulated fleet the bench drives: in this process
// (LocalClients) or in a child process (ChildClients). Calls are serialised
// by the caller.
type Clients interface {
	// Connect starts n clients against addr and returns how long it took
	// until every one had ACKed CDS, EDS, LDS and RDS.
	Connect(ctx context.Context, addr string, n int) (time.Duration, error)
	// WaitVersion waits until every client ACKed version v of t.
	WaitVersion(ctx context.Context, t fleetsim.Type, v uint64) (fleetsim.Span, error)
	Counters(ctx context.Context) (ClientCounters, error)
	// Storm drops every connection at once and reconnects them all.
	Storm(ctx context.Context) (fleetsim.Storm, error)
	// Disconnect stops every client; Connect may follow.
	Disconnect(ctx context.Context) error
	Close() error
}

// ClientCounters are the fleet's counters and its process's resource use.
type ClientCounters struct {
	fleetsim.Counters
	CPU       time.Duration // CPU time of the process the clients run in
	HeapInuse uint64
}

// LocalClients runs the fleet in this process.
type LocalClients struct {
	Mode fleetsim.Mode
	// Parallel is fleetsim.FleetConfig.Parallel.
	Parallel int
	// KeepResources keeps what each client received (Fleet().Clients()).
	KeepResources bool

	fleet *fleetsim.Fleet
}

// Fleet returns the connected fleet, nil before Connect.
func (l *LocalClients) Fleet() *fleetsim.Fleet { return l.fleet }

// Connect implements Clients.
func (l *LocalClients) Connect(ctx context.Context, addr string, n int) (time.Duration, error) {
	if l.fleet != nil {
		return 0, errors.New("already connected")
	}
	t0 := time.Now()
	f, err := fleetsim.Start(ctx, fleetsim.FleetConfig{Addr: addr, N: n, Mode: l.Mode, Parallel: l.Parallel, KeepResources: l.KeepResources})
	if err != nil {
		return 0, err
	}
	l.fleet = f
	return time.Since(t0), nil
}

// WaitVersion implements Clients.
func (l *LocalClients) WaitVersion(ctx context.Context, t fleetsim.Type, v uint64) (fleetsim.Span, error) {
	if l.fleet == nil {
		return fleetsim.Span{}, errors.New("not connected")
	}
	return l.fleet.WaitVersion(ctx, t, v)
}

// Counters implements Clients.
func (l *LocalClients) Counters(context.Context) (ClientCounters, error) {
	var c ClientCounters
	if l.fleet != nil {
		c.Counters = l.fleet.Counters()
	}
	c.CPU = ProcessCPU()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	c.HeapInuse = ms.HeapInuse
	return c, nil
}

// Storm implements Clients.
func (l *LocalClients) Storm(ctx context.Context) (fleetsim.Storm, error) {
	if l.fleet == nil {
		return fleetsim.Storm{}, errors.New("not connected")
	}
	return l.fleet.Storm(ctx)
}

// Disconnect implements Clients.
func (l *LocalClients) Disconnect(context.Context) error {
	if l.fleet != nil {
		l.fleet.Stop()
		l.fleet = nil
	}
	return nil
}

// Close implements Clients.
func (l *LocalClients) Close() error { return l.Disconnect(context.Background()) }

// ProcessCPU returns the user+system CPU time this process has used.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childRequest and childResponse are the JSON lines between the bench and
// its child processes: the client process (ServeChild) and the floor
// process (ServeFloor).
type childRequest struct {
	// Op is connect, wait, counters, storm or disconnect (client process);
	// start, mem, step, settle or profile (floor process).
	Op      string `json:"op"`
	Addr    string `json:"addr,omitempty"`
	N       int    `json:"n,omitempty"`
	Type    int    `json:"type,omitempty"`
	Version uint64 `json:"version,omitempty"`
	Weight  int    `json:"weight,omitempty"`
	Path    string `json:"path,omitempty"`
	// Timeout bounds the child's own wait, a little under the parent's.
	Timeout time.Duration `json:"timeout,omitempty"`
}

type childResponse struct {
	Err      string         `json:"err,omitempty"`
	Connect  time.Duration  `json:"connect,omitempty"`
	Span     fleetsim.Span  `json:"span"`
	Counters ClientCounters `json:"counters"`
	Storm    fleetsim.Storm `json:"storm"`
	// Floor process.
	Addr string    `json:"addr,omitempty"`
	Mem  Mem       `json:"mem"`
	Step floorStep `json:"step"`
	Cost StepCost  `json:"cost"`
}

// ChildEnv marks a process started by StartChild; its main calls ServeChild.
const ChildEnv = "SHIFTPLANE_BENCH_CHILD"

// child is a child process of the bench: the same binary, started with an
// environment variable that makes its main serve JSON requests on stdin and
// replies on stdout. It exits when its stdin closes and is killed with the
// parent (Pdeathsig).
type child struct {
	what      string // "client process", "floor process": for errors
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	lines     chan []byte
	quit      chan struct{} // closed by close: stop reading replies
	closeOnce sync.Once
	stderr    *tailBuffer
	done      chan struct{}
	err       error
}

// startChildProcess starts exe with args and the extra environment env.
func startChildProcess(what, exe string, args, env []string) (*child, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c := &child{what: what, cmd: cmd, stdin: stdin, lines: make(chan []byte), quit: make(chan struct{}), stderr: &tailBuffer{max: 8 << 10}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			select {
			case c.lines <- append([]byte(nil), sc.Bytes()...):
			case <-c.quit:
				return
			}
		}
	}()
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) call(ctx context.Context, req childRequest) (childResponse, error) {
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = time.Until(dl) * 9 / 10
	}
	b, _ := json.Marshal(req)
	if _, err := c.stdin.Write(append(b, '\n')); err != nil {
		return childResponse{}, fmt.Errorf("%s: %s: %w%s", c.what, req.Op, err, c.tail())
	}
	select {
	case line, ok := <-c.lines:
		if !ok {
			<-c.done
			return childResponse{}, fmt.Errorf("%s exited (%v) during %s%s", c.what, c.err, req.Op, c.tail())
		}
		var resp childResponse
		if err := json.Unmarshal(line, &resp); err != nil {
			return childResponse{}, fmt.Errorf("%s: %s: bad reply %q: %w", c.what, req.Op, line, err)
		}
		if resp.Err != "" {
			return resp, fmt.Errorf("%s: %s", c.what, resp.Err)
		}
		return resp, nil
	case <-ctx.Done():
		c.kill()
		return childResponse{}, fmt.Errorf("%s: %s: %w%s", c.what, req.Op, ctx.Err(), c.tail())
	}
}

func (c *child) tail() string {
	if s := strings.TrimSpace(c.stderr.String()); s != "" {
		return "\n" + c.what + " stderr:\n" + s
	}
	return ""
}

func (c *child) kill() {
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Kill() // by PID: the child we started
	}
}

// close ends the child: its stdin closes and it exits; after 10 s it is
// killed.
func (c *child) close() {
	c.closeOnce.Do(func() { close(c.quit) })
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.kill()
		<-c.done
	}
}

// ChildClients runs the fleet in a child process: the same binary, started
// with ChildEnv set, serving ServeChild on its stdin and stdout.
type ChildClients struct{ *child }

// StartChild starts exe (normally os.Executable()) with args as a client
// process speaking mode.
func StartChild(exe string, args []string, mode fleetsim.Mode, parallel int) (*ChildClients, error) {
	c, err := startChildProcess("client process", exe, args,
		[]string{ChildEnv + "=1", "SHIFTPLANE_BENCH_MODE=" + string(mode), fmt.Sprintf("SHIFTPLANE_BENCH_PARALLEL=%d", parallel)})
	if err != nil {
		return nil, err
	}
	return &ChildClients{c}, nil
}

// Connect implements Clients.
func (c *ChildClients) Connect(ctx context.Context, addr string, n int) (time.Duration, error) {
	r, err := c.call(ctx, childRequest{Op: "connect", Addr: addr, N: n})
	return r.Connect, err
}

// WaitVersion implements Clients.
func (c *ChildClients) WaitVersion(ctx context.Context, t fleetsim.Type, v uint64) (fleetsim.Span, error) {
	r, err := c.call(ctx, childRequest{Op: "wait", Type: int(t), Version: v})
	return r.Span, err
}

// Counters implements Clients.
func (c *ChildClients) Counters(ctx context.Context) (ClientCounters, error) {
	r, err := c.call(ctx, childRequest{Op: "counters"})
	return r.Counters, err
}

// Storm implements Clients.
func (c *ChildClients) Storm(ctx context.Context) (fleetsim.Storm, error) {
	r, err := c.call(ctx, childRequest{Op: "storm"})
	return r.Storm, err
}

// Disconnect implements Clients.
func (c *ChildClients) Disconnect(ctx context.Context) error {
	_, err := c.call(ctx, childRequest{Op: "disconnect"})
	return err
}

// Close ends the child: its stdin closes, it stops its clients and exits;
// after 10 s it is killed.
func (c *ChildClients) Close() error {
	c.close()
	return nil
}

// ServeChild is the client process's main loop: requests on r, replies on
// w, one JSON line each, until r closes.
func ServeChild(r io.Reader, w io.Writer, mode fleetsim.Mode, parallel int) error {
	local := &LocalClients{Mode: mode, Parallel: parallel}
	defer local.Close()
	return serveRequests(r, w, func(ctx context.Context, req childRequest, resp *childResponse) (err error) {
		switch req.Op {
		case "connect":
			resp.Connect, err = local.Connect(ctx, req.Addr, req.N)
		case "wait":
			resp.Span, err = local.WaitVersion(ctx, fleetsim.Type(req.Type), req.Version)
		case "counters":
			resp.Counters, err = local.Counters(ctx)
		case "storm":
			resp.Storm, err = local.Storm(ctx)
		case "disconnect":
			err = local.Disconnect(ctx)
		default:
			err = fmt.Errorf("unknown op %q", req.Op)
		}
		return err
	})
}

// serveRequests is a child process's loop: one JSON request per line on
// r, each handled under its timeout (a minute if unset), one JSON reply per
// line on w carrying the handler's error, until r closes.
func serveRequests(r io.Reader, w io.Writer, handle func(context.Context, childRequest, *childResponse) error) error {
	dec := json.NewDecoder(r)
	enc := json.NewEncoder(w)
	for {
		var req childRequest
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		timeout := req.Timeout
		if timeout <= 0 {
			timeout = time.Minute
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		var resp childResponse
		err := handle(ctx, req, &resp)
		cancel()
		if err != nil {
			resp.Err = err.Error()
		}
		if err := enc.Encode(resp); err != nil {
			return err
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
