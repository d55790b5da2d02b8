// Command users is the example service of the two-phase migration: one
// binary, two (or three) versions.
//
//	v1      writes and reads users(id, name); knows nothing of email
//	v2, v3  also write email, and read it as nullable: until contract has
//	        run, rows that v1 wrote have none
//
// API: POST /users {"name": ..., "email": ...} → 201 {"id": ...};
// GET /users/{id}; GET /stats (counts, database errors by SQLSTATE);
// GET /healthz. Every answer carries X-Version.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "users:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("users", flag.ContinueOnError)
	version := fs.String("version", "", "v1 (id, name) or v2/v3 (id, name, email)")
	listen := fs.String("listen", "127.0.0.1:8081", "address to serve on")
	dsn := fs.String("database", os.Getenv("DATABASE_URL"), "PostgreSQL URL (default $DATABASE_URL)")
	fail := fs.Bool("fail", false, "answer every /users request with 503 (a broken build, to watch a rollback)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *version {
	case "v1", "v2", "v3":
	default:
		return fmt.Errorf("--version: must be v1, v2 or v3, got %q", *version)
	}
	if *dsn == "" {
		return errors.New("--database: no PostgreSQL URL given (and $DATABASE_URL is empty)")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("version", *version)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg, err := pgxpool.ParseConfig(*dsn)
	if err != nil {
		return fmt.Errorf("--database: %w", err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()

	s := &server{version: *version, withEmail: *version != "v1", pool: pool, fail: *fail, log: log,
		stats: stats{Errors: map[string]int64{}}}
	s.stats.Version = *version
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	log.Info("serving", "address", l.Addr().String())
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type server struct {
	version   string
	withEmail bool
	fail      bool
	pool      *pgxpool.Pool
	log       *slog.Logger

	mu    sync.Mutex
	stats stats
}

// stats is what GET /stats reports.
type stats struct {
	Version string `json:"version"`
	Writes  int64  `json:"writes"` // INSERTs that committed
	Reads   int64  `json:"reads"`
	// Errors counts failed statements by SQLSTATE ("23502" not_null_violation,
	// "23514" check_violation, ...); "conn" for errors without one.
	Errors       map[string]int64 `json:"errors"`
	Failed       int64            `json:"failed"` // answers with a 5xx
	FirstRequest time.Time        `json:"firstRequest"`
	LastRequest  time.Time        `json:"lastRequest"` // end of the last /users request
}

func (s *server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /users", s.create)
	mux.HandleFunc("GET /users/{id}", s.get)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		b, _ := json.Marshal(s.stats)
		s.mu.Unlock()
		s.reply(w, http.StatusOK, b)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { s.reply(w, http.StatusOK, []byte(`{"ok":true}`)) })
	return mux
}

type user struct {
	ID    int64   `json:"id"`
	Name  string  `json:"name"`
	Email *string `json:"email,omitempty"` // v2+: nil for rows v1 wrote before the backfill
}

func (s *server) create(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var in user
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&in); err != nil || in.Name == "" {
		s.reply(w, http.StatusBadRequest, []byte(`{"error":"body: want {\"name\": ...}"}`))
		return
	}
	if s.fail {
		s.done(start, "", nil)
		s.reply(w, http.StatusServiceUnavailable, []byte(`{"error":"broken build"}`))
		return
	}
	var err error
	if s.withEmail {
		email := in.Name + "@example.com"
		if in.Email != nil && *in.Email != "" {
			email = *in.Email
		}
		err = s.pool.QueryRow(r.Context(), "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", in.Name, email).Scan(&in.ID)
	} else {
		// v1 names its columns: it never sees email, whatever the schema.
		err = s.pool.QueryRow(r.Context(), "INSERT INTO users (name) VALUES ($1) RETURNING id", in.Name).Scan(&in.ID)
	}
	if err != nil {
		s.dbError(w, start, "insert", err)
		return
	}
	s.done(start, "write", nil)
	b, _ := json.Marshal(map[string]int64{"id": in.ID})
	s.reply(w, http.StatusCreated, b)
}

func (s *server) get(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		s.reply(w, http.StatusBadRequest, []byte(`{"error":"id: not a number"}`))
		return
	}
	var u user
	if s.withEmail {
		err = s.pool.QueryRow(r.Context(), "SELECT id, name, email FROM users WHERE id = $1", id).Scan(&u.ID, &u.Name, &u.Email)
	} else {
		err = s.pool.QueryRow(r.Context(), "SELECT id, name FROM users WHERE id = $1", id).Scan(&u.ID, &u.Name)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		s.done(start, "read", nil)
		s.reply(w, http.StatusNotFound, []byte(`{"error":"no such user"}`))
		return
	}
	if err != nil {
		s.dbError(w, start, "select", err)
		return
	}
	s.done(start, "read", nil)
	b, _ := json.Marshal(u)
	s.reply(w, http.StatusOK, b)
}

func (s *server) dbError(w http.ResponseWriter, start time.Time, what string, err error) {
	code := "conn"
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		code = pe.Code
	}
	s.done(start, "", &code)
	s.log.Warn(what+" failed", "sqlstate", code, "error", err)
	b, _ := json.Marshal(map[string]string{"error": err.Error(), "sqlstate": code})
	s.reply(w, http.StatusInternalServerError, b)
}

// done counts one finished /users request: kind "write" or "read" when it
// succeeded; failed (with a SQLSTATE or not) otherwise.
func (s *server) done(start time.Time, kind string, sqlstate *string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats.FirstRequest.IsZero() {
		s.stats.FirstRequest = start
	}
	s.stats.LastRequest = time.Now()
	switch {
	case sqlstate != nil:
		s.stats.Errors[*sqlstate]++
		s.stats.Failed++
	case kind == "write":
		s.stats.Writes++
	case kind == "read":
		s.stats.Reads++
	default:
		s.stats.Failed++
	}
}

func (s *server) reply(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Version", s.version)
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
