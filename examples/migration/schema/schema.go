// Package schema is the users table of the migration example and its
// two-phase (expand/contract) change: v2 adds an email column that must
// end up NOT NULL, while v1, which knows nothing of it, still writes.
//
// Every step is idempotent: it reads the catalog, does only what is
// missing, and may be re-run after a crash at any point. Steps serialise on
// a session advisory lock, so a re-run waits for a leftover run instead of
// racing it, and every DDL statement runs with a short lock_timeout (and is
// retried), so a migration never queues application writes behind it for
// long.
package schema

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// CheckName is the constraint contract adds as NOT VALID, validates, and
// drops once the column itself is NOT NULL.
const CheckName = "users_email_not_null"

// advisoryKey serialises migration runs (any 64-bit number both sides agree on).
const advisoryKey = 4_242_001

// lockTimeout bounds how long one DDL statement waits for its table lock;
// waiting longer would make every application write queue behind it.
const lockTimeout = "2s"

// Migrator runs the steps on one connection (advisory locks belong to a session).
type Migrator struct {
	Conn *pgx.Conn
	// Log receives one line per action (nil: discarded).
	Log io.Writer
	// StepDelay is slept after each contract step, so a demo (or a crash
	// test) can see the steps one by one. 0 in production.
	StepDelay time.Duration
	// Batch is the number of rows backfill updates per transaction (default 500).
	Batch int
}

func (m *Migrator) logf(format string, args ...any) {
	if m.Log != nil {
		fmt.Fprintf(m.Log, "%s migrate: %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

// Init creates v1's schema: users(id, name), and the journal that records
// every step's start and end (the demo and the tests read it).
func (m *Migrator) Init(ctx context.Context) error {
	_, err := m.Conn.Exec(ctx, `
CREATE TABLE IF NOT EXISTS users (
	id   bigserial PRIMARY KEY,
	name text NOT NULL
);
CREATE TABLE IF NOT EXISTS migration_journal (
	id    bigserial PRIMARY KEY,
	step  text NOT NULL,
	event text NOT NULL,
	detail text NOT NULL DEFAULT '',
	pid   int NOT NULL DEFAULT pg_backend_pid(),
	at    timestamptz NOT NULL DEFAULT clock_timestamp()
)`)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	m.logf("init: users(id, name) and migration_journal exist")
	return nil
}

// Run takes the advisory lock, journals step's start, runs f, and
// journals its end ("done" or "failed").
func (m *Migrator) Run(ctx context.Context, step string, f func(context.Context) (string, error)) error {
	if err := m.lock(ctx); err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	defer func() {
		_, _ = m.Conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", advisoryKey)
	}()
	if _, err := m.Conn.Exec(ctx, "SET lock_timeout = '"+lockTimeout+"'"); err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	m.journal(ctx, step, "start", "")
	detail, err := f(ctx)
	if err != nil {
		m.journal(ctx, step, "failed", err.Error())
		return fmt.Errorf("%s: %w", step, err)
	}
	m.journal(ctx, step, "done", detail)
	m.logf("%s: done: %s", step, detail)
	return nil
}

// lock waits (bounded by ctx) for the migration advisory lock.
func (m *Migrator) lock(ctx context.Context) error {
	waited := false
	for {
		var ok bool
		if err := m.Conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", advisoryKey).Scan(&ok); err != nil {
			return fmt.Errorf("advisory lock: %w", err)
		}
		if ok {
			return nil
		}
		if !waited {
			m.logf("another migration holds the lock; waiting")
			waited = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("advisory lock: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (m *Migrator) journal(ctx context.Context, step, event, detail string) {
	if _, err := m.Conn.Exec(ctx, "INSERT INTO migration_journal (step, event, detail) VALUES ($1, $2, $3)", step, event, detail); err != nil {
		m.logf("journal %s %s: %v", step, event, err)
	}
}

// ddl runs one DDL statement, retrying while its lock is not granted
// within lockTimeout (SQLSTATE 55P03), up to 15 tries.
func (m *Migrator) ddl(ctx context.Context, sql string) error {
	for try := 1; ; try++ {
		_, err := m.Conn.Exec(ctx, sql)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || pe.Code != "55P03" || try >= 15 {
			if err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
			return nil
		}
		m.logf("lock not granted within %s (try %d): %s", lockTimeout, try, sql)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try) * 100 * time.Millisecond):
		}
	}
}

// Expand adds email as a nullable column: v1 keeps inserting rows without
// it, v2 fills it. Adding a nullable column without a default is a catalog
// change only (no table rewrite).
func (m *Migrator) Expand(ctx context.Context) error {
	return m.Run(ctx, "expand", func(ctx context.Context) (string, error) {
		st, err := Inspect(ctx, m.Conn)
		if err != nil {
			return "", err
		}
		if st.HasEmail {
			return "email already exists; nothing to do", nil
		}
		if err := m.ddl(ctx, "ALTER TABLE users ADD COLUMN IF NOT EXISTS email text"); err != nil {
			return "", err
		}
		return "added users.email (nullable)", nil
	})
}

// Backfill gives every row that v1 wrote (email NULL) an email, in batches
// of m.Batch rows, each its own short transaction. Rows locked by a writer
// are skipped and picked up by a later batch.
func (m *Migrator) Backfill(ctx context.Context) error {
	return m.Run(ctx, "backfill", func(ctx context.Context) (string, error) {
		st, err := Inspect(ctx, m.Conn)
		if err != nil {
			return "", err
		}
		if !st.HasEmail {
			return "", errors.New("users.email does not exist: run expand first")
		}
		batch := m.Batch
		if batch <= 0 {
			batch = 500
		}
		var total int64
		for batches := 0; ; batches++ {
			tag, err := m.Conn.Exec(ctx, `
WITH b AS (SELECT id FROM users WHERE email IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE users u SET email = 'user-' || u.id || '@backfill.invalid' FROM b WHERE u.id = b.id`, batch)
			if err != nil {
				return "", fmt.Errorf("batch %d: %w", batches, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() > 0 {
				continue
			}
			var left int64
			if err := m.Conn.QueryRow(ctx, "SELECT count(*) FROM users WHERE email IS NULL").Scan(&left); err != nil {
				return "", err
			}
			if left == 0 {
				return fmt.Sprintf("filled %d rows in %d batches of up to %d", total, batches, batch), nil
			}
			select { // the rest are locked by writers right now
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// Contract makes email NOT NULL without holding a long exclusive lock:
//
//  1. ADD CONSTRAINT … CHECK (email IS NOT NULL) NOT VALID: a brief lock,
//     no scan; from now on every write must carry an email;
//  2. VALIDATE CONSTRAINT: scans the table under SHARE UPDATE EXCLUSIVE,
//     which lets reads and writes go on;
//  3. ALTER COLUMN email SET NOT NULL: PostgreSQL 12+ sees the valid check
//     and skips the scan, so this lock is brief too;
//  4. DROP CONSTRAINT: the check is redundant now.
//
// Each step looks at the catalog first, so a re-run after a crash goes on
// from wherever the last run stopped.
func (m *Migrator) Contract(ctx context.Context) error {
	return m.Run(ctx, "contract", func(ctx context.Context) (string, error) {
		st, err := Inspect(ctx, m.Conn)
		if err != nil {
			return "", err
		}
		if !st.HasEmail {
			return "", errors.New("users.email does not exist: run expand first")
		}
		var did []string
		step := func(name, sql string) error {
			m.journal(ctx, "contract:"+name, "start", "")
			if err := m.ddl(ctx, sql); err != nil {
				return err
			}
			m.journal(ctx, "contract:"+name, "done", "")
			did = append(did, name)
			m.logf("contract: %s", name)
			if m.StepDelay > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(m.StepDelay):
				}
			}
			return nil
		}
		if !st.EmailNotNull {
			if st.Check == CheckAbsent {
				if err := step("add-check", "ALTER TABLE users ADD CONSTRAINT "+CheckName+" CHECK (email IS NOT NULL) NOT VALID"); err != nil {
					return "", err
				}
				st.Check = CheckNotValid
			}
			if st.Check == CheckNotValid {
				if err := step("validate", "ALTER TABLE users VALIDATE CONSTRAINT "+CheckName); err != nil {
					var pe *pgconn.PgError
					if errors.As(err, &pe) && pe.Code == "23514" {
						return "", fmt.Errorf("rows without an email remain (run backfill first): %w", err)
					}
					return "", err
				}
			}
			if err := step("set-not-null", "ALTER TABLE users ALTER COLUMN email SET NOT NULL"); err != nil {
				return "", err
			}
		}
		if st.Check != CheckAbsent || len(did) > 0 {
			if err := step("drop-check", "ALTER TABLE users DROP CONSTRAINT IF EXISTS "+CheckName); err != nil {
				return "", err
			}
		}
		if len(did) == 0 {
			return "email already NOT NULL; nothing to do", nil
		}
		return fmt.Sprintf("email is NOT NULL (steps: %v)", did), nil
	})
}

// Naive is the mistake the example exists to show: email added NOT NULL
// (with a default only long enough to fill the existing rows) while v1
// still writes. Every v1 INSERT then fails with SQLSTATE 23502.
func (m *Migrator) Naive(ctx context.Context) error {
	return m.Run(ctx, "naive", func(ctx context.Context) (string, error) {
		st, err := Inspect(ctx, m.Conn)
		if err != nil {
			return "", err
		}
		if st.HasEmail {
			return "email already exists; nothing to do", nil
		}
		tx, err := m.Conn.Begin(ctx)
		if err != nil {
			return "", err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, "ALTER TABLE users ADD COLUMN email text NOT NULL DEFAULT 'unknown@backfill.invalid'"); err != nil {
			return "", err
		}
		if _, err := tx.Exec(ctx, "ALTER TABLE users ALTER COLUMN email DROP DEFAULT"); err != nil {
			return "", err
		}
		if err := tx.Commit(ctx); err != nil {
			return "", err
		}
		return "added users.email NOT NULL (v1's inserts now fail)", nil
	})
}

// CheckState is where the contract's CHECK constraint is.
type CheckState string

// The states of the CHECK constraint.
const (
	CheckAbsent   CheckState = "absent"
	CheckNotValid CheckState = "NOT VALID"
	CheckValid    CheckState = "valid"
)

// State is the schema as the catalog shows it, and the rows' emails.
type State struct {
	HasEmail     bool
	EmailNotNull bool
	Check        CheckState
	Rows         int64
	NullEmails   int64 // rows whose email is NULL (0 without the column)
}

// String is one line for the demo: "email nullable, 120 of 4000 rows without".
func (s State) String() string {
	switch {
	case !s.HasEmail:
		return fmt.Sprintf("users(id, name): no email column; %d rows", s.Rows)
	case s.EmailNotNull:
		return fmt.Sprintf("email NOT NULL; %d rows, %d without email; check %s", s.Rows, s.NullEmails, s.Check)
	case s.Check != CheckAbsent:
		return fmt.Sprintf("email nullable + CHECK %s; %d rows, %d without email", s.Check, s.Rows, s.NullEmails)
	}
	return fmt.Sprintf("email nullable; %d rows, %d without email", s.Rows, s.NullEmails)
}

// Querier is what Inspect needs: a *pgx.Conn or a *pgxpool.Pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Inspect reads the schema state of users from the catalog.
func Inspect(ctx context.Context, q Querier) (State, error) {
	var st State
	var notNull *bool
	err := q.QueryRow(ctx, `SELECT (SELECT attnotnull FROM pg_attribute
	WHERE attrelid = 'users'::regclass AND attname = 'email' AND NOT attisdropped)`).Scan(&notNull)
	if err != nil {
		return st, fmt.Errorf("inspect: %w", err)
	}
	st.HasEmail = notNull != nil
	st.EmailNotNull = notNull != nil && *notNull
	var validated *bool
	if err := q.QueryRow(ctx, `SELECT (SELECT convalidated FROM pg_constraint
	WHERE conrelid = 'users'::regclass AND conname = $1)`, CheckName).Scan(&validated); err != nil {
		return st, fmt.Errorf("inspect: %w", err)
	}
	switch {
	case validated == nil:
		st.Check = CheckAbsent
	case *validated:
		st.Check = CheckValid
	default:
		st.Check = CheckNotValid
	}
	count := "SELECT count(*), 0::bigint FROM users"
	if st.HasEmail {
		count = "SELECT count(*), count(*) FILTER (WHERE email IS NULL) FROM users"
	}
	if err := q.QueryRow(ctx, count).Scan(&st.Rows, &st.NullEmails); err != nil {
		return st, fmt.Errorf("inspect: %w", err)
	}
	return st, nil
}
