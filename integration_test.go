package txlock_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/retry"
)

// These tests run against the real PostgreSQL (TXLOCK_TEST_DATABASE_URL,
// default 127.0.0.1:5432) through the pgx stdlib driver. With CI=true a
// missing server fails them. testenv checks db.Stats().InUse == 0 at the
// end of each.

func exec(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

var serializable = txlock.WithTxOptions(&sql.TxOptions{Isolation: sql.LevelSerializable})

// fastRetry keeps real conflicts cheap in tests without making retries
// immediate (immediate retries of a deadlock tend to deadlock again).
var fastRetry = txlock.WithBackoff(retry.Exponential{Base: time.Millisecond, Max: 20 * time.Millisecond})

// TestWriteSkewSerializable: the classic on-call invariant. Two doctors are
// on call; each may go off call only if another stays. Under SERIALIZABLE
// without locks (keys nil), Postgres aborts one of two concurrent
// transactions with 40001; Run retries it, and the retry sees the other's
// commit and refuses. The invariant holds and both Runs return.
func TestWriteSkewSerializable(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db,
		"CREATE TABLE doctors (name text PRIMARY KEY, on_call bool NOT NULL)",
		"INSERT INTO doctors VALUES ('alice', true), ('bob', true)")

	errStaysOnCall := errors.New("last doctor on call")
	var serializationFailures atomic.Int32
	var barrier sync.WaitGroup
	barrier.Add(2)
	goOffCall := func(name string) error {
		return txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
			var n int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM doctors WHERE on_call").Scan(&n); err != nil {
				return err
			}
			if txlock.Attempt(ctx) == 1 {
				// Both first attempts read before either writes.
				barrier.Done()
				barrier.Wait()
			}
			if n < 2 {
				return errStaysOnCall
			}
			_, err := tx.ExecContext(ctx, "UPDATE doctors SET on_call = false WHERE name = $1", name)
			return err
		}, serializable, fastRetry, txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
			var pe *pgconn.PgError
			if errors.As(e.Err, &pe) && pe.Code == "40001" && e.Retry {
				serializationFailures.Add(1)
			}
		}}))
	}
	errs := make(chan error, 2)
	for _, name := range []string{"alice", "bob"} {
		go func() { errs <- goOffCall(name) }()
	}
	var ok, refused int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errors.Is(err, errStaysOnCall):
			refused++
		default:
			t.Fatalf("Run: %v", err)
		}
	}
	var onCall int
	if err := db.QueryRow("SELECT count(*) FROM doctors WHERE on_call").Scan(&onCall); err != nil {
		t.Fatal(err)
	}
	if onCall != 1 || ok != 1 || refused != 1 {
		t.Fatalf("on call %d, ok %d, refused %d; want 1, 1, 1", onCall, ok, refused)
	}
	if serializationFailures.Load() == 0 {
		t.Fatal("no serialization failure was retried: the test did not exercise the retry")
	}
}

// TestDeadlockIsRetried provokes a real deadlock: two transactions update
// two rows in opposite orders. Postgres aborts one with 40P01; Run retries
// it and both increments land.
func TestDeadlockIsRetried(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db,
		"CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL)",
		"INSERT INTO accounts VALUES (1, 0), (2, 0)")
	var deadlocks atomic.Int32
	var barrier sync.WaitGroup
	barrier.Add(2)
	transfer := func(first, second int) error {
		return txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE accounts SET n = n + 1 WHERE id = $1", first); err != nil {
				return err
			}
			if txlock.Attempt(ctx) == 1 {
				barrier.Done()
				barrier.Wait()
			}
			_, err := tx.ExecContext(ctx, "UPDATE accounts SET n = n + 1 WHERE id = $1", second)
			return err
		}, fastRetry, txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
			var pe *pgconn.PgError
			if errors.As(e.Err, &pe) && pe.Code == "40P01" && e.Retry {
				deadlocks.Add(1)
			}
		}}))
	}
	errs := make(chan error, 2)
	go func() { errs <- transfer(1, 2) }()
	go func() { errs <- transfer(2, 1) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	var a, b int
	if err := db.QueryRow("SELECT (SELECT n FROM accounts WHERE id = 1), (SELECT n FROM accounts WHERE id = 2)").Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	if a != 2 || b != 2 {
		t.Fatalf("accounts = %d, %d; want 2, 2 (both transactions applied once)", a, b)
	}
	if deadlocks.Load() == 0 {
		t.Fatal("no deadlock was retried: the test did not exercise the retry")
	}
}

// TestUniqueViolationIsRetried: two writers insert the same key, neither
// sees the other's uncommitted row, and the loser's INSERT fails with 23505
// once the winner commits. On the retry its body sees the row and takes the
// other branch.
func TestUniqueViolationIsRetried(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db, "CREATE TABLE users (email text PRIMARY KEY, created_by text NOT NULL)")
	var violations atomic.Int32
	var barrier sync.WaitGroup
	barrier.Add(2)
	var sawExisting atomic.Int32
	register := func(who string) error {
		return txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
			var exists bool
			if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE email = 'a@example.com')").Scan(&exists); err != nil {
				return err
			}
			if txlock.Attempt(ctx) == 1 {
				barrier.Done()
				barrier.Wait()
			}
			if exists {
				sawExisting.Add(1)
				return nil
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO users VALUES ('a@example.com', $1)", who)
			return err
		}, fastRetry, txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
			var pe *pgconn.PgError
			if errors.As(e.Err, &pe) && pe.Code == "23505" && e.Retry {
				violations.Add(1)
			}
		}}))
	}
	errs := make(chan error, 2)
	go func() { errs <- register("one") }()
	go func() { errs <- register("two") }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	if violations.Load() != 1 || sawExisting.Load() != 1 {
		t.Fatalf("violations retried %d, bodies that saw the row %d; want 1, 1", violations.Load(), sawExisting.Load())
	}
}

// TestLocalLockerSerializesCheckThenInsert is the flagship race in one
// process: 16 goroutines reserve the same name with a check-then-insert at
// READ COMMITTED, where only the lock keeps them apart.
func TestLocalLockerSerializesCheckThenInsert(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db, "CREATE TABLE reservations (name text NOT NULL, owner int NOT NULL)")
	const workers = 16
	var wg sync.WaitGroup
	var won atomic.Int32
	start := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := txlock.Run(context.Background(), db, []string{"name:ann"}, func(ctx context.Context, tx *sql.Tx) error {
				var n int
				if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM reservations WHERE name = 'ann'").Scan(&n); err != nil {
					return err
				}
				if n > 0 {
					return nil
				}
				time.Sleep(time.Millisecond) // widen the gap the lock must close
				if _, err := tx.ExecContext(ctx, "INSERT INTO reservations VALUES ('ann', $1)", w); err != nil {
					return err
				}
				return txlock.AfterCommit(ctx, func() { won.Add(1) })
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM reservations WHERE name = 'ann'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 || won.Load() != 1 {
		t.Fatalf("%d rows and %d acknowledged reservations for one name, want 1 and 1", n, won.Load())
	}
}

// TestCancelDuringBodyRollsBack: a context cancelled in the middle of a
// statement rolls back; nothing is committed and the connection returns.
func TestCancelDuringBodyRollsBack(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db, "CREATE TABLE things (id int)")
	ctx, cancel := context.WithCancel(context.Background())
	err := txlock.Run(ctx, db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO things VALUES (1)"); err != nil {
			return err
		}
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := tx.ExecContext(ctx, "SELECT pg_sleep(5)")
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM things").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d rows committed by a cancelled Run", n)
	}
}

// TestTerminatedBackendIsRetried: pg_terminate_backend kills the session
// in the middle of the body. Nothing was committed, so Run runs the
// transaction again on a fresh connection.
func TestTerminatedBackendIsRetried(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db, "CREATE TABLE things (id int)")
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO things VALUES ($1)", txlock.Attempt(ctx)); err != nil {
			return err
		}
		if txlock.Attempt(ctx) == 1 {
			return terminateOwnBackend(ctx, db, tx)
		}
		return nil
	}, fastRetry)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var ids []int
	rows, err := db.Query("SELECT id FROM things")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if len(ids) != 1 || ids[0] != 2 {
		t.Fatalf("rows = %v, want only the second attempt's [2]", ids)
	}
}

// terminateOwnBackend has the body's backend terminated from another
// connection, then runs a statement on it: the error a body sees when its
// session dies under it.
func terminateOwnBackend(ctx context.Context, db *sql.DB, tx *sql.Tx) error {
	var pid int
	if err := tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, "SELECT 1")
	return err
}

// TestStatementTimeoutIsNotRetried: a statement that times out (57014) is
// the body's failure, not a conflict: Run returns it at once, nothing is
// committed, and the connection goes back to the pool.
func TestStatementTimeoutIsNotRetried(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db, "CREATE TABLE things (id int)")
	calls := 0
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		calls++
		if _, err := tx.ExecContext(ctx, "INSERT INTO things VALUES (1)"); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "SET LOCAL statement_timeout = '50ms'"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "SELECT pg_sleep(2)")
		return err
	}, fastRetry)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Fatalf("err = %v, want the statement timeout (57014)", err)
	}
	if calls != 1 {
		t.Errorf("body ran %d times, want 1", calls)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM things").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d rows committed by a failed Run", n)
	}
}

// sessionLocker takes its "locks" on the connection before BEGIN (stage
// OnConn), as advisorylock does at REPEATABLE READ, and remembers which
// backend it ran on. Its Release fails when told to.
type sessionLocker struct {
	pid        atomic.Int64
	releaseErr error
}

func (*sessionLocker) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.OnConn, Stable: true}
}

func (l *sessionLocker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	var pid int64
	if err := req.Conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return nil, err
	}
	l.pid.Store(pid)
	return sessionLease{l}, nil
}

type sessionLease struct{ l *sessionLocker }

func (sessionLease) Verify(context.Context) error    { return nil }
func (s sessionLease) Release(context.Context) error { return s.l.releaseErr }

// TestConnectionWithAnUnconfirmedReleaseIsClosed: a lock that lives on the
// session and cannot be confirmed released must not go back to the pool
// with the session: Run closes the connection, which ends the session and
// every lock it holds. A confirmed release keeps the connection pooled.
func TestConnectionWithAnUnconfirmedReleaseIsClosed(t *testing.T) {
	db := testenv.Postgres(t)
	alive := func(pid int64) bool {
		var n int
		if err := db.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	for _, tc := range []struct {
		name       string
		releaseErr error
		wantAlive  bool
	}{
		{"release confirmed", nil, true},
		{"release failed", errors.New("unlock: connection state unknown"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &sessionLocker{releaseErr: tc.releaseErr}
			var bodyPID int64
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				return tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&bodyPID)
			}, txlock.WithLocker(l))
			if err != nil {
				t.Fatal(err)
			}
			if bodyPID != l.pid.Load() {
				t.Fatalf("the lock was taken on backend %d, the transaction ran on %d", l.pid.Load(), bodyPID)
			}
			deadline := time.Now().Add(5 * time.Second)
			for alive(bodyPID) != tc.wantAlive && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := alive(bodyPID); got != tc.wantAlive {
				t.Fatalf("backend alive after Run = %v, want %v", got, tc.wantAlive)
			}
		})
	}
}
