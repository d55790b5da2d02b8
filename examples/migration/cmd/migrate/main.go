// Command migrate runs the users table's two-phase schema change, one step
// per call, each safe to re-run:
//
//	migrate init       v1's schema: users(id, name), and the step journal
//	migrate expand     add email, nullable        (beforeShift: v1 and v2 both work)
//	migrate backfill   fill email for v1's rows   (afterPromote: v1 has drained)
//	migrate contract   make email NOT NULL        (afterPromote, after backfill)
//	migrate status     print the schema state
//	migrate naive      the mistake: add email NOT NULL while v1 still writes
//
// The database is --database or $DATABASE_URL. Run as a shiftplane exec
// hook, it inherits the server's environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shiftplane/shiftplane/examples/migration/schema"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "migrate:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	dsn := fs.String("database", os.Getenv("DATABASE_URL"), "PostgreSQL URL (default $DATABASE_URL)")
	delay := fs.Duration("step-delay", 0, "sleep this long after each contract step (to watch it in a demo)")
	batch := fs.Int("batch", 500, "rows per backfill transaction")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: migrate [flags] init|expand|backfill|contract|status|naive")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("want exactly one step")
	}
	if *dsn == "" {
		return errors.New("--database: no PostgreSQL URL given (and $DATABASE_URL is empty)")
	}
	if *batch < 1 {
		return fmt.Errorf("--batch: must be at least 1, got %d", *batch)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, *dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m := &schema.Migrator{Conn: conn, Log: os.Stdout, StepDelay: *delay, Batch: *batch}
	switch step := fs.Arg(0); step {
	case "init":
		return m.Init(ctx)
	case "expand":
		return m.Expand(ctx)
	case "backfill":
		return m.Backfill(ctx)
	case "contract":
		return m.Contract(ctx)
	case "naive":
		return m.Naive(ctx)
	case "status":
		st, err := schema.Inspect(ctx, conn)
		if err != nil {
			return err
		}
		fmt.Println(st)
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("unknown step %q", step)
	}
}
