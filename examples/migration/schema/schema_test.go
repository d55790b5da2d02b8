package schema

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shiftplane/shiftplane/test/harness"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func inspect(t *testing.T, c *pgx.Conn) State {
	t.Helper()
	st, err := Inspect(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func exec(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Every step twice, and a contract resumed from each point a crash can
// leave it at.
func TestStepsAreIdempotent(t *testing.T) {
	pg := harness.StartPostgres(t)
	c := connect(t, pg.URL)
	m := &Migrator{Conn: c, Batch: 7}
	ctx := t.Context()
	for range 2 {
		if err := m.Init(ctx); err != nil {
			t.Fatal(err)
		}
	}
	exec(t, c, "INSERT INTO users (name) SELECT 'v1-' || g FROM generate_series(1, 50) g")
	for range 2 {
		if err := m.Expand(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := inspect(t, c); !st.HasEmail || st.EmailNotNull || st.NullEmails != 50 {
		t.Fatalf("after expand: %s", st)
	}
	// Contract before the backfill fails, names the cause, and leaves the
	// NOT VALID check behind for the re-run to pick up.
	if err := m.Contract(ctx); err == nil || !strings.Contains(err.Error(), "run backfill first") {
		t.Fatalf("contract with NULL emails: err %v, want one saying to run backfill first", err)
	}
	if st := inspect(t, c); st.Check != CheckNotValid || st.EmailNotNull {
		t.Fatalf("after a failed contract: %s, want the NOT VALID check and a nullable column", st)
	}
	for range 2 {
		if err := m.Backfill(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := inspect(t, c); st.NullEmails != 0 {
		t.Fatalf("after backfill: %s", st)
	}
	for range 2 {
		if err := m.Contract(ctx); err != nil {
			t.Fatal(err)
		}
	}
	st := inspect(t, c)
	if !st.EmailNotNull || st.Check != CheckAbsent {
		t.Fatalf("after contract: %s, want email NOT NULL and no check left", st)
	}
	// A crash after SET NOT NULL, before the check was dropped.
	exec(t, c, "ALTER TABLE users ADD CONSTRAINT "+CheckName+" CHECK (email IS NOT NULL)")
	if err := m.Contract(ctx); err != nil {
		t.Fatal(err)
	}
	if st := inspect(t, c); !st.EmailNotNull || st.Check != CheckAbsent {
		t.Fatalf("contract resumed after SET NOT NULL: %s", st)
	}
	_, err := c.Exec(ctx, "INSERT INTO users (name) VALUES ('late v1')")
	if err == nil || !strings.Contains(err.Error(), "23502") {
		t.Fatalf("an insert without email after contract: %v, want SQLSTATE 23502", err)
	}
	t.Logf("final: %s", inspect(t, c))
}

// A run waits for another one that holds the advisory lock.
func TestStepsSerialise(t *testing.T) {
	pg := harness.StartPostgres(t)
	a, b := connect(t, pg.URL), connect(t, pg.URL)
	ma := &Migrator{Conn: a}
	if err := ma.Init(t.Context()); err != nil {
		t.Fatal(err)
	}
	exec(t, a, "SELECT pg_advisory_lock(4242001)")
	ctx, cancel := context.WithTimeout(t.Context(), 600*time.Millisecond)
	defer cancel()
	if err := (&Migrator{Conn: b}).Expand(ctx); err == nil || !strings.Contains(err.Error(), "advisory lock") {
		t.Fatalf("expand while another run holds the lock: %v, want it to wait for the lock until its deadline", err)
	}
	exec(t, a, "SELECT pg_advisory_unlock(4242001)")
	if err := (&Migrator{Conn: b}).Expand(t.Context()); err != nil {
		t.Fatal(err)
	}
}
