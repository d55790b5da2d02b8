// Package harness starts and drives real processes for end-to-end tests:
// Envoy (FindEnvoy, StartEnvoy), in-process HTTP backends (StartBackend),
// binaries of this repo (BuildBinary, StartProcess) and a bounded HTTP load
// generator (HTTPLoad), all on 127.0.0.1.
//
// Every process it starts runs in its own process group, is killed by PID
// only, and is stopped in t.Cleanup on every exit path (on Linux the kernel
// also kills it if the test binary dies). Every wait is bounded: helpers that
// take a context add a default deadline when the context has none.
//
// Functions that take a testing.TB must be called from the test's goroutine;
// methods that return an error (Stats, WaitListener, HTTPLoad, ...) are safe
// to call from any goroutine.
package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DefaultWait bounds a wait whose context has no deadline.
const DefaultWait = 30 * time.Second

// withDefaultDeadline returns ctx bounded by DefaultWait unless it already
// has a deadline.
func withDefaultDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultWait)
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// RepoRoot returns the directory holding this module's go.mod, found by
// walking up from the working directory (a test runs in its package dir),
// then from this source file.
func RepoRoot(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() { rootDir, rootErr = findRepoRoot() })
	if rootErr != nil {
		t.Fatalf("harness: %v", rootErr)
	}
	return rootDir
}

func findRepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("no go.mod above %q", starts)
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{} // handed out by this process
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that FreePort has not returned before in this process. Another process may
// still take it before the caller binds; prefer port 0 where the server
// reports what it bound.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("harness: free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		portsMu.Lock()
		seen := ports[port]
		ports[port] = true
		portsMu.Unlock()
		if !seen {
			return port
		}
	}
	t.Fatalf("harness: free port: no unused port after 100 tries")
	return 0
}

// tailFile returns the last n lines of the file at path (read from at most
// its last 256 KiB), or a note saying why it could not.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const maxRead = 256 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxRead {
		_, _ = f.Seek(st.Size()-maxRead, 0)
	}
	buf := make([]byte, maxRead)
	m, _ := f.Read(buf)
	b := bytes.TrimRight(buf[:m], "\n")
	if len(b) == 0 {
		return "(empty)"
	}
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// proc is one started OS process, reaped by its own goroutine.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's error, set before done is closed
}

func startProc(bin string, args, env []string, dir, logPath string) (*proc, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out // *os.File: no copying goroutine to wait for
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = out.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to this PID only and waits (bounded) for the reaper.
func (p *proc) kill() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pid %d: still not reaped 10s after SIGKILL", p.pid())
	}
}

// stop sends SIGTERM, waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := p.kill(); err != nil {
		return err
	}
	return fmt.Errorf("pid %d: did not exit within %v of SIGTERM; killed", p.pid(), grace)
}

// exitCode is the process's exit code, -1 if a signal ended it.
func (p *proc) exitCode() int {
	if st := p.cmd.ProcessState; st != nil {
		return st.ExitCode()
	}
	return -1
}
