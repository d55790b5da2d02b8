package harness

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shiftplane/shiftplane/examples/migration/pgtemp"
)

// PostgresInstallHint says how to get a PostgreSQL the harness can find.
const PostgresInstallHint = "bash scripts/install-postgres.sh (then PG_BIN=<the folder it prints>)"

// FindPostgres returns the folder holding initdb and postgres (15 or
// newer): $PG_BIN, else the newest /usr/lib/postgresql/<major>/bin. A set
// but unusable $PG_BIN fails the test; if none is found the test fails
// under CI=true and is skipped otherwise.
func FindPostgres(t testing.TB) string {
	t.Helper()
	dir, tried, err := pgtemp.FindBin()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	if dir != "" {
		return dir
	}
	msg := fmt.Sprintf("harness: PostgreSQL 15+ not found (looked at %s); install it with: %s",
		strings.Join(tried, ", "), PostgresInstallHint)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// StartPostgres starts a real PostgreSQL server for the test (package
// pgtemp: its own data directory, a free loopback port, run as "nobody"
// when the test runs as root). It is stopped and its directory removed in
// t.Cleanup; if the test failed, the end of its log is logged.
func StartPostgres(t testing.TB) *pgtemp.Server {
	t.Helper()
	bin := FindPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, bin, FreePort(t))
	if err != nil {
		t.Fatalf("harness: postgres: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("harness: last %d lines of postgres (pid %d):\n%s", logTailLines, pg.PID(), tailFile(pg.LogPath, logTailLines))
		}
		if err := pg.Stop(); err != nil {
			t.Logf("harness: stop postgres: %v", err)
		}
	})
	return pg
}
