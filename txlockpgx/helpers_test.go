package txlockpgx_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/retry"
)

// These tests run against the real PostgreSQL (TXLOCK_TEST_DATABASE_URL,
// default 127.0.0.1:5432), each on a private schema (testenv.PostgresURL),
// through pgxpool and pgx without database/sql. With CI=true a missing
// server fails them. Every pool checks, when its test ends, that no
// connection is still acquired.

// newPool opens a pool on u for t, with at most maxConns connections (0:
// pgxpool's default). When t ends it checks that no connection is still
// acquired, which catches a transaction or a connection Run did not give
// back, then closes the pool.
func newPool(t testing.TB, u string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		t.Fatalf("parse %s: %v", u, err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		testenv.Unavailable(t, "postgres %s: %v", u, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		testenv.Unavailable(t, "postgres %s: %v", u, err)
	}
	t.Cleanup(func() {
		checkReleased(t, pool)
		pool.Close()
	})
	return pool
}

// checkReleased fails t if a connection of pool is still acquired.
func checkReleased(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for pool.Stat().AcquiredConns() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("leak: %d pool connections still acquired", n)
	}
}

// postgres returns a pool on a private schema for t.
func postgres(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return newPool(t, testenv.PostgresURL(t), 0)
}

func execSQL(t testing.TB, pool *pgxpool.Pool, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := pool.Exec(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// ints returns the single int column of query's rows.
func ints(t testing.TB, pool *pgxpool.Pool, query string) []int {
	t.Helper()
	rows, err := pool.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t testing.TB, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// fastRetry keeps real conflicts cheap without making retries immediate
// (immediate retries of a deadlock tend to deadlock again).
var fastRetry = txlock.WithBackoff(retry.Exponential{Base: time.Millisecond, Max: 20 * time.Millisecond})

func isolation(level sql.IsolationLevel) txlock.Option {
	return txlock.WithTxOptions(&sql.TxOptions{Isolation: level})
}

// events records every attempt's Event.
type events struct {
	mu  sync.Mutex
	evs []txlock.Event
}

func (e *events) option() txlock.Option {
	return txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, ev txlock.Event) {
		e.mu.Lock()
		e.evs = append(e.evs, ev)
		e.mu.Unlock()
	}})
}

func (e *events) all() []txlock.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]txlock.Event(nil), e.evs...)
}

// retriedWith counts the retried attempts whose error carries SQLSTATE code.
func (e *events) retriedWith(code string) int {
	n := 0
	for _, ev := range e.all() {
		var pe *pgconn.PgError
		if ev.Retry && errors.As(ev.Err, &pe) && pe.Code == code {
			n++
		}
	}
	return n
}

// advisoryLocks counts the advisory locks of ids that some session holds
// or waits for.
func advisoryLocks(t testing.TB, pool *pgxpool.Pool, ids []int64) int {
	t.Helper()
	return count(t, pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
		AND ((classid::bigint << 32) | objid::bigint) = ANY($1)`, ids)
}

// stageRecorder wraps a Locker and records the stage of every Acquire.
type stageRecorder struct {
	txlock.Locker
	mu     sync.Mutex
	stages map[txlock.Stage]int
}

func (s *stageRecorder) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	s.mu.Lock()
	if s.stages == nil {
		s.stages = map[txlock.Stage]int{}
	}
	s.stages[req.Stage]++
	s.mu.Unlock()
	return s.Locker.Acquire(ctx, req)
}

func (s *stageRecorder) only() (txlock.Stage, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.stages) != 1 {
		return 0, false
	}
	for st := range s.stages {
		return st, true
	}
	return 0, false
}
