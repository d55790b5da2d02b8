// Package pgtemp runs a throwaway PostgreSQL server (15 or newer) for the
// migration example's demo and tests: a fresh data directory under
// os.TempDir(), a free 127.0.0.1 port, trust authentication for the user
// "shiftplane", durability off. initdb and postgres refuse to run as root,
// so as root both run as the user "nobody".
package pgtemp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// FindBin returns the folder holding initdb and postgres 15+: $PG_BIN, else
// the newest /usr/lib/postgresql/<major>/bin (Debian's layout, installed by
// scripts/install-postgres.sh). tried lists where it looked.
func FindBin() (dir string, tried []string, err error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		if Major(d) >= 15 {
			return d, nil, nil
		}
		return "", []string{d}, fmt.Errorf("PG_BIN=%s holds no postgres of version 15 or newer", d)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return Major(dirs[i]) > Major(dirs[j]) })
	for _, d := range dirs {
		if Major(d) >= 15 {
			return d, nil, nil
		}
	}
	return "", append([]string{"$PG_BIN"}, append(dirs, "/usr/lib/postgresql/*/bin")...), nil
}

// Major is the major version of dir/postgres, 0 if it cannot tell.
func Major(dir string) int {
	for _, f := range []string{"postgres", "initdb"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return 0
		}
	}
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return 0
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	fs := strings.Fields(string(out))
	if len(fs) < 3 {
		return 0
	}
	m, _ := strconv.Atoi(strings.SplitN(fs[2], ".", 2)[0])
	return m
}

// Server is a running PostgreSQL. Stop it on every exit path.
type Server struct {
	URL     string // connects to the "postgres" database as "shiftplane"
	Port    int
	Base    string // holds data/, run/ (the socket) and postgres.log
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start initialises a data directory and starts postgres from binDir on
// 127.0.0.1:port (0: a free port), returning once it accepts connections
// (bounded by ctx).
func Start(ctx context.Context, binDir string, port int) (_ *Server, err error) {
	base, err := os.MkdirTemp("", "shiftplane-pg-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(base)
		}
	}()
	// The unprivileged user must reach data/ and run/ through base.
	if err := os.Chmod(base, 0o755); err != nil {
		return nil, err
	}
	cred, err := unprivileged()
	if err != nil {
		return nil, err
	}
	data, sock := filepath.Join(base, "data"), filepath.Join(base, "run")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		if cred != nil {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	env := append(os.Environ(), "HOME="+base)
	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), "-D", data, "-U", "shiftplane",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr, initdb.Dir, initdb.Env = procAttr(cred), base, env
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	s := &Server{Port: port, Base: base, LogPath: filepath.Join(base, "postgres.log"), done: make(chan struct{})}
	s.URL = fmt.Sprintf("postgres://shiftplane@127.0.0.1:%d/postgres?sslmode=disable", port)
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// Durability is not what the example is about; speed is.
	s.cmd = exec.Command(filepath.Join(binDir, "postgres"), "-D", data, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+sock,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "log_min_messages=warning")
	s.cmd.SysProcAttr, s.cmd.Dir, s.cmd.Env = procAttr(cred), base, env
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		_ = logf.Close()
		close(s.done)
	}()
	if err := s.waitReady(ctx); err != nil {
		_ = s.stopProcess()
		return nil, err
	}
	return s, nil
}

// unprivileged returns nobody's credentials when running as root, else nil.
func unprivileged() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, fmt.Errorf("running as root and no user nobody to run postgres as: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user nobody: uid %q gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	var last error
	for ctx.Err() == nil {
		select {
		case <-s.done:
			return fmt.Errorf("postgres exited before accepting connections (%v); see %s", s.err, s.LogPath)
		default:
		}
		c, err := pgx.Connect(ctx, s.URL)
		if err == nil {
			err = c.Ping(ctx)
			_ = c.Close(ctx)
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postgres not accepting connections on port %d: %v (%w)", s.Port, last, ctx.Err())
}

// PID is the postmaster's process ID.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Done is closed once the postmaster has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Stop asks for a fast shutdown (SIGINT), SIGKILLs the postmaster if it has
// not exited within 10 s, and removes the directory. It returns an error if
// it had to kill.
func (s *Server) Stop() error {
	err := s.stopProcess()
	if rmErr := os.RemoveAll(s.Base); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

func (s *Server) stopProcess() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("postgres pid %d: still not reaped 10s after SIGKILL", s.PID())
	}
	return errors.New("postgres: no fast shutdown within 10s; killed")
}
