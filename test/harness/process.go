package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// StopGrace is how long Stop waits after SIGTERM before it kills.
const StopGrace = 5 * time.Second

// logTailLines is how many output lines are logged when a test fails.
const logTailLines = 50

// Process is a started binary. Its methods may be called from any goroutine.
type Process struct {
	// LogPath is the file that receives the process's stdout and stderr.
	LogPath string

	bin string
	p   *proc
}

// StartProcess starts bin with args; env entries ("K=V") are added to the
// test's environment. Output goes to a file in t.TempDir(), whose last lines
// are logged if the test fails. The process is stopped in t.Cleanup.
func StartProcess(t testing.TB, bin string, args []string, env []string) *Process {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, filepath.Base(bin)+".log")
	p, err := startProc(bin, args, env, "", logPath)
	if err != nil {
		t.Fatalf("harness: start %s: %v", bin, err)
	}
	pr := &Process{LogPath: logPath, bin: bin, p: p}
	t.Cleanup(func() {
		if err := p.stop(StopGrace); err != nil {
			t.Logf("harness: stop %s: %v", filepath.Base(bin), err)
		}
		if t.Failed() {
			t.Logf("harness: last %d lines of %s (pid %d, exit %d):\n%s",
				logTailLines, filepath.Base(bin), p.pid(), p.exitCode(), tailFile(logPath, logTailLines))
		}
	})
	return pr
}

// PID is the process's ID.
func (pr *Process) PID() int { return pr.p.pid() }

// Done is closed once the process has exited.
func (pr *Process) Done() <-chan struct{} { return pr.p.done }

// Kill sends SIGKILL to this PID only and waits for it to be reaped.
func (pr *Process) Kill() error { return pr.p.kill() }

// Stop sends SIGTERM, waits up to StopGrace, then kills. It returns an error
// if the process had to be killed. Stopping an exited process does nothing.
func (pr *Process) Stop() error { return pr.p.stop(StopGrace) }

// Wait waits for the process to exit and returns its exit code (-1 if a
// signal ended it). It returns ctx's error if ctx ends first; without a
// deadline on ctx it waits at most DefaultWait.
func (pr *Process) Wait(ctx context.Context) (int, error) {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	select {
	case <-pr.p.done:
		return pr.p.exitCode(), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for %s (pid %d): %w", filepath.Base(pr.bin), pr.PID(), ctx.Err())
	}
}

// Output returns everything the process has written so far.
func (pr *Process) Output() string {
	b, err := os.ReadFile(pr.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", pr.LogPath, err)
	}
	return string(b)
}

type buildResult struct {
	once sync.Once
	path string
	err  error
}

var (
	builds     sync.Map // pkg → *buildResult
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
)

// BuildBinary builds pkg (a package path relative to the repo root such as
// "./cmd/shiftplane", or a full import path) once per test process and
// returns the binary's path. Binaries live in a per-process directory under
// os.TempDir(); directories left by test processes that are gone are removed.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	root := RepoRoot(t)
	v, _ := builds.LoadOrStore(pkg, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() { b.path, b.err = build(root, pkg) })
	if b.err != nil {
		t.Fatalf("harness: %v", b.err)
	}
	return b.path
}

func build(root, pkg string) (string, error) {
	binDirOnce.Do(func() { binDir, binDirErr = makeBinDir() })
	if binDirErr != nil {
		return "", fmt.Errorf("build %s: %w", pkg, binDirErr)
	}
	sub := strings.NewReplacer("/", "_", ".", "_", "\\", "_").Replace(pkg)
	out := filepath.Join(binDir, sub, path.Base(filepath.ToSlash(pkg)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

const binDirPrefix = "shiftplane-harness-bin-"

func makeBinDir() (string, error) {
	tmp := os.TempDir()
	if stale, err := filepath.Glob(filepath.Join(tmp, binDirPrefix+"*")); err == nil {
		for _, d := range stale {
			pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), binDirPrefix))
			if err == nil && pid != os.Getpid() && !processAlive(pid) {
				_ = os.RemoveAll(d)
			}
		}
	}
	dir := filepath.Join(tmp, binDirPrefix+strconv.Itoa(os.Getpid()))
	return dir, os.MkdirAll(dir, 0o755)
}
