package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresInstallHint says how to get a PostgreSQL the harness can find.
const PostgresInstallHint = "bash scripts/install-postgres.sh (then PG_BIN=<the folder it prints>)"

// Postgres is a real PostgreSQL server started for one test: its own data
// directory under os.TempDir(), listening on a free 127.0.0.1 port with
// trust authentication for the user "shiftplane". It is stopped (fast
// shutdown, then SIGKILL) and its directory removed in t.Cleanup.
type Postgres struct {
	// URL connects to the "postgres" database as "shiftplane".
	URL  string
	Port int
	Dir  string // data directory, socket and log live below it
	// LogPath receives the server's output.
	LogPath string

	p *proc
}

// FindPostgres returns the folder holding initdb and postgres (15 or
// newer): $PG_BIN, else the newest /usr/lib/postgresql/<major>/bin. If none
// is found the test fails under CI=true and is skipped otherwise.
func FindPostgres(t testing.TB) string {
	t.Helper()
	var tried []string
	if d := os.Getenv("PG_BIN"); d != "" {
		if pgMajor(d) >= 15 {
			return d
		}
		t.Fatalf("harness: PG_BIN=%s holds no postgres of version 15 or newer", d)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		tried = append(tried, d)
		if pgMajor(d) >= 15 {
			return d
		}
	}
	msg := fmt.Sprintf("harness: PostgreSQL 15+ not found (looked at $PG_BIN and %s); install it with: %s",
		strings.Join(append(tried, "/usr/lib/postgresql/*/bin"), ", "), PostgresInstallHint)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// pgMajor is the major version of dir/postgres, 0 if it cannot tell.
func pgMajor(dir string) int {
	for _, f := range []string{"postgres", "initdb"} {
		if !isExecutable(filepath.Join(dir, f)) {
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

// StartPostgres initialises a data directory and starts a PostgreSQL
// server on a free loopback port. initdb and postgres refuse to run as
// root, so when the test runs as root both run as the user "nobody".
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := FindPostgres(t)
	base, err := os.MkdirTemp("", "shiftplane-pg-")
	if err != nil {
		t.Fatalf("harness: postgres dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	// nobody must be able to reach the data directory through base.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatalf("harness: postgres dir: %v", err)
	}
	cred, err := unprivileged()
	if err != nil {
		t.Fatalf("harness: postgres: %v", err)
	}
	data, sock := filepath.Join(base, "data"), filepath.Join(base, "run")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatalf("harness: postgres dir: %v", err)
		}
		if cred != nil {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatalf("harness: postgres dir: %v", err)
			}
		}
	}
	attr := func() *syscall.SysProcAttr {
		a := sysProcAttr()
		a.Credential = cred
		return a
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "shiftplane",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = attr()
	initdb.Dir = base
	initdb.Env = append(os.Environ(), "HOME="+base)
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("harness: initdb: %v\n%s", err, out)
	}

	pg := &Postgres{Port: FreePort(t), Dir: data, LogPath: filepath.Join(base, "postgres.log")}
	pg.URL = fmt.Sprintf("postgres://shiftplane@127.0.0.1:%d/postgres?sslmode=disable", pg.Port)
	// Durability is not what these tests are about; speed is.
	args := []string{"-D", data, "-p", strconv.Itoa(pg.Port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + sock,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "log_min_messages=warning"}
	p, err := startProcAttr(filepath.Join(bin, "postgres"), args, []string{"HOME=" + base}, base, pg.LogPath, attr())
	if err != nil {
		t.Fatalf("harness: start postgres: %v", err)
	}
	pg.p = p
	t.Cleanup(func() {
		if err := pg.stop(); err != nil {
			t.Logf("harness: stop postgres: %v", err)
		}
		if t.Failed() {
			t.Logf("harness: last %d lines of postgres (pid %d):\n%s", logTailLines, p.pid(), tailFile(pg.LogPath, logTailLines))
		}
	})
	if err := pg.waitReady(ctx); err != nil {
		t.Fatalf("harness: postgres: %v\n%s", err, tailFile(pg.LogPath, logTailLines))
	}
	return pg
}

// unprivileged returns the credentials of "nobody" when running as root,
// nil otherwise.
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

func (pg *Postgres) waitReady(ctx context.Context) error {
	var last error
	for ctx.Err() == nil {
		if pg.p.exited() {
			return fmt.Errorf("exited before accepting connections: %v", pg.p.err)
		}
		c, err := pgx.Connect(ctx, pg.URL)
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
	return fmt.Errorf("not accepting connections on %d: %v", pg.Port, last)
}

// PID is the postmaster's process ID.
func (pg *Postgres) PID() int { return pg.p.pid() }

// stop asks for a fast shutdown (SIGINT: sessions are ended, no new ones
// start), then SIGKILLs the postmaster if it has not exited.
func (pg *Postgres) stop() error {
	if pg.p.exited() {
		return nil
	}
	_ = pg.p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-pg.p.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	if err := pg.p.kill(); err != nil {
		return err
	}
	return fmt.Errorf("pid %d: no fast shutdown within 10s; killed", pg.p.pid())
}
