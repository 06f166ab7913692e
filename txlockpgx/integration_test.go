package txlockpgx_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/memcachelock"
	"github.com/txlock/txlock/txlockpgx"
)

// TestCommit: the body gets a plain pgx.Tx, pgx's own features included
// (CopyFrom, batches), and what it wrote is committed.
func TestCommit(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool, "CREATE TABLE things (id int NOT NULL)")
	var system string
	err := txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO things VALUES ($1)", 1); err != nil {
			return err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"things"}, []string{"id"}, pgx.CopyFromRows([][]any{{2}, {3}})); err != nil {
			return err
		}
		b := &pgx.Batch{}
		b.Queue("INSERT INTO things VALUES ($1)", 4)
		return tx.SendBatch(ctx, b).Close()
	}, txlock.WithObserver(txlock.Observer{RunStart: func(ctx context.Context, info txlock.RunInfo) context.Context {
		system = info.System
		return nil
	}}))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := ints(t, pool, "SELECT id FROM things ORDER BY id"); !slices.Equal(got, []int{1, 2, 3, 4}) {
		t.Fatalf("rows %v, want [1 2 3 4]", got)
	}
	if system != "postgresql" {
		t.Errorf("RunInfo.System = %q, want postgresql", system)
	}
}

// TestWriteSkewSerializable: two doctors on call, each may go off call only
// if another stays. Under SERIALIZABLE without locks Postgres aborts one of
// the two with 40001; Run retries it, the retry sees the other's commit and
// refuses.
func TestWriteSkewSerializable(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool,
		"CREATE TABLE doctors (name text PRIMARY KEY, on_call bool NOT NULL)",
		"INSERT INTO doctors VALUES ('alice', true), ('bob', true)")
	errStaysOnCall := errors.New("last doctor on call")
	var ev events
	var barrier sync.WaitGroup
	barrier.Add(2)
	goOffCall := func(name string) error {
		return txlockpgx.Run(context.Background(), pool, nil, func(ctx context.Context, tx pgx.Tx) error {
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM doctors WHERE on_call").Scan(&n); err != nil {
				return err
			}
			if txlock.Attempt(ctx) == 1 {
				barrier.Done() // both first attempts read before either writes
				barrier.Wait()
			}
			if n < 2 {
				return errStaysOnCall
			}
			_, err := tx.Exec(ctx, "UPDATE doctors SET on_call = false WHERE name = $1", name)
			return err
		}, isolation(sql.LevelSerializable), fastRetry, ev.option())
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
	if onCall := count(t, pool, "SELECT count(*) FROM doctors WHERE on_call"); onCall != 1 || ok != 1 || refused != 1 {
		t.Fatalf("on call %d, ok %d, refused %d; want 1, 1, 1", onCall, ok, refused)
	}
	if ev.retriedWith("40001") == 0 {
		t.Fatal("no serialization failure was retried: the test did not exercise the retry")
	}
}

// TestDeadlockIsRetried: two transactions update two rows in opposite
// orders; Postgres aborts one with 40P01, Run retries it, and both
// increments land once.
func TestDeadlockIsRetried(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool,
		"CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL)",
		"INSERT INTO accounts VALUES (1, 0), (2, 0)")
	var ev events
	var barrier sync.WaitGroup
	barrier.Add(2)
	transfer := func(first, second int) error {
		return txlockpgx.Run(context.Background(), pool, nil, func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "UPDATE accounts SET n = n + 1 WHERE id = $1", first); err != nil {
				return err
			}
			if txlock.Attempt(ctx) == 1 {
				barrier.Done()
				barrier.Wait()
			}
			_, err := tx.Exec(ctx, "UPDATE accounts SET n = n + 1 WHERE id = $1", second)
			return err
		}, fastRetry, ev.option())
	}
	errs := make(chan error, 2)
	go func() { errs <- transfer(1, 2) }()
	go func() { errs <- transfer(2, 1) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	if got := ints(t, pool, "SELECT n FROM accounts ORDER BY id"); !slices.Equal(got, []int{2, 2}) {
		t.Fatalf("accounts = %v, want [2 2] (both transactions applied once)", got)
	}
	if ev.retriedWith("40P01") == 0 {
		t.Fatal("no deadlock was retried: the test did not exercise the retry")
	}
}

// TestUniqueViolationIsRetried: two writers insert the same key, neither
// sees the other's uncommitted row, and the loser's INSERT fails with 23505
// once the winner commits. On the retry its body sees the row.
func TestUniqueViolationIsRetried(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool, "CREATE TABLE users (email text PRIMARY KEY, created_by text NOT NULL)")
	var ev events
	var barrier sync.WaitGroup
	barrier.Add(2)
	var sawExisting atomic.Int32
	register := func(who string) error {
		return txlockpgx.Run(context.Background(), pool, nil, func(ctx context.Context, tx pgx.Tx) error {
			var exists bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE email = 'a@example.com')").Scan(&exists); err != nil {
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
			_, err := tx.Exec(ctx, "INSERT INTO users VALUES ('a@example.com', $1)", who)
			return err
		}, fastRetry, ev.option())
	}
	errs := make(chan error, 2)
	go func() { errs <- register("one") }()
	go func() { errs <- register("two") }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	if n := ev.retriedWith("23505"); n != 1 || sawExisting.Load() != 1 {
		t.Fatalf("violations retried %d, bodies that saw the row %d; want 1, 1", n, sawExisting.Load())
	}
}

// TestTerminatedBackendIsRetried: the body's backend is terminated before
// COMMIT. Nothing was committed, so Run runs the transaction again, on
// another connection of the pool.
func TestTerminatedBackendIsRetried(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool, "CREATE TABLE things (id int NOT NULL)")
	var ev events
	var pids []int
	err := txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
		var pid int
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		pids = append(pids, pid)
		if _, err := tx.Exec(ctx, "INSERT INTO things VALUES ($1)", txlock.Attempt(ctx)); err != nil {
			return err
		}
		if txlock.Attempt(ctx) > 1 {
			return nil
		}
		if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT 1")
		return err
	}, fastRetry, ev.option())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := ints(t, pool, "SELECT id FROM things"); !slices.Equal(got, []int{2}) {
		t.Fatalf("rows %v, want only the second attempt's [2]", got)
	}
	if len(pids) != 2 || pids[0] == pids[1] {
		t.Fatalf("backends %v, want two different ones", pids)
	}
	if evs := ev.all(); len(evs) != 2 || evs[0].Reason != "connection_lost" {
		t.Fatalf("events %+v, want a connection_lost retry then a commit", evs)
	}
}

// TestUnknownCommitFoundCommitted: a proxy forwards COMMIT, swallows its
// answer and cuts the connection. Run looks the transaction up on another
// connection of the pool, finds it committed, and succeeds without a
// retry.
func TestUnknownCommitFoundCommitted(t *testing.T) {
	testenv.CheckLeaks(t) // first, so it runs after the pool and the proxy are closed
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	pool := newPool(t, u, 0)
	execSQL(t, pool, "CREATE TABLE things (attempt int NOT NULL)")
	var ev events
	var after atomic.Int32
	err := txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO things VALUES ($1)", txlock.Attempt(ctx)); err != nil {
			return err
		}
		if txlock.Attempt(ctx) == 1 {
			proxy.CutNextCommit()
		}
		return txlock.AfterCommit(ctx, func() { after.Add(1) })
	}, txlock.WithCommitCheck(txlock.CommitCheckAlways), ev.option())
	if err != nil {
		t.Fatalf("Run = %v, want success: the transaction committed", err)
	}
	if proxy.Cuts() != 1 {
		t.Fatalf("the proxy cut %d connections, want 1: the test did not exercise an unknown COMMIT", proxy.Cuts())
	}
	if got := ints(t, pool, "SELECT attempt FROM things"); !slices.Equal(got, []int{1}) {
		t.Fatalf("rows %v, want the first attempt's only", got)
	}
	if after.Load() != 1 {
		t.Errorf("after-commit callbacks ran %d times, want 1", after.Load())
	}
	if evs := ev.all(); len(evs) != 1 || evs[0].Commit != txlock.CommitFoundCommitted {
		t.Errorf("events %+v, want one attempt with Commit = found_committed", evs)
	}
}

// TestUnknownCommitIsAmbiguousWithoutALookup: the same cut is
// ErrAmbiguousCommit, never a retry, when Run cannot look the transaction
// up: without a recorded id (CommitCheckNever), or on a single connection,
// which the cut closed.
func TestUnknownCommitIsAmbiguousWithoutALookup(t *testing.T) {
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	pool := newPool(t, u, 0)
	execSQL(t, pool, "CREATE TABLE things (attempt int NOT NULL)")
	conn, err := pgx.Connect(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, tc := range []struct {
		name string
		db   txlockpgx.Beginner
		cc   txlock.CommitCheck
	}{
		{"pool, CommitCheckNever", pool, txlock.CommitCheckNever},
		{"one *pgx.Conn, CommitCheckAlways", conn, txlock.CommitCheckAlways},
	} {
		t.Run(tc.name, func(t *testing.T) {
			execSQL(t, pool, "TRUNCATE things")
			calls := 0
			start := time.Now()
			err := txlockpgx.Run(context.Background(), tc.db, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
				calls++
				proxy.CutNextCommit()
				_, err := tx.Exec(ctx, "INSERT INTO things VALUES ($1)", txlock.Attempt(ctx))
				return err
			}, txlock.WithCommitCheck(tc.cc))
			if !errors.Is(err, txlock.ErrAmbiguousCommit) {
				t.Fatalf("Run = %v, want ErrAmbiguousCommit", err)
			}
			if calls != 1 {
				t.Errorf("body ran %d times: an unknown COMMIT must not be retried", calls)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("Run took %v: it should not try a lookup it cannot make", d)
			}
			if got := ints(t, pool, "SELECT attempt FROM things"); !slices.Equal(got, []int{1}) {
				t.Errorf("rows %v: the proxy let COMMIT through, so it committed", got)
			}
		})
	}
}

// TestBodyErrorIsNotRetried: an error of the body's own is returned as it
// is, after one attempt, and nothing is committed.
func TestBodyErrorIsNotRetried(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool, "CREATE TABLE things (id int NOT NULL)")
	errBody := errors.New("the body says no")
	calls := 0
	err := txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if _, err := tx.Exec(ctx, "INSERT INTO things VALUES (1)"); err != nil {
			return err
		}
		return errBody
	}, fastRetry)
	if !errors.Is(err, errBody) {
		t.Fatalf("Run = %v, want the body's error", err)
	}
	if calls != 1 {
		t.Errorf("body ran %d times, want 1", calls)
	}
	if n := count(t, pool, "SELECT count(*) FROM things"); n != 0 {
		t.Fatalf("%d rows committed by a failed Run", n)
	}
}

// TestBodyThatCommitsItself: COMMIT is not sent twice; the error says the
// transaction had already ended, as database/sql's sql.ErrTxDone and as
// pgx's pgx.ErrTxClosed, and is not retried.
func TestBodyThatCommitsItself(t *testing.T) {
	pool := postgres(t)
	calls := 0
	err := txlockpgx.Run(context.Background(), pool, nil, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		return tx.Commit(ctx)
	})
	if !errors.Is(err, sql.ErrTxDone) || !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Run = %v, want sql.ErrTxDone and pgx.ErrTxClosed in the chain", err)
	}
	if calls != 1 {
		t.Errorf("body ran %d times, want 1", calls)
	}
}

// TestPanicReleasesAndRepanics: a panicking body is rolled back, its
// locks (in-process, and an advisory session lock held on the connection
// at REPEATABLE READ) are released, its connection goes back to the pool,
// and the panic goes on.
func TestPanicReleasesAndRepanics(t *testing.T) {
	testenv.CheckLeaks(t) // first, so it runs after the pool is closed
	pool := postgres(t)
	execSQL(t, pool, "CREATE TABLE things (id int NOT NULL)")
	local := txlock.NewLocalLocker()
	ns := t.Name()
	type boom struct{ msg string }
	func() {
		defer func() {
			p := recover()
			if b, ok := p.(boom); !ok || b.msg != "body" {
				t.Fatalf("recovered %v, want the body's panic value", p)
			}
		}()
		_ = txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO things VALUES (1)"); err != nil {
				return err
			}
			panic(boom{"body"})
		}, txlock.WithLocker(local, advisorylock.New(advisorylock.WithNamespace(ns))), isolation(sql.LevelRepeatableRead))
		t.Fatal("Run returned after a panic")
	}()
	if lease, err := local.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}, TryOnce: true}); err != nil {
		t.Errorf("in-process lock leaked after a panic: %v", err)
	} else {
		_ = lease.Release(context.Background())
	}
	if n := advisoryLocks(t, pool, []int64{advisorylock.ID(ns, "k")}); n != 0 {
		t.Errorf("%d advisory locks still held after a panic", n)
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired after a panic", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM things"); n != 0 {
		t.Errorf("%d rows committed by a panicking body", n)
	}
}

// TestCancelDuringBodyRollsBack: a context cancelled in the middle of a
// statement ends the Run with the cancellation; nothing is committed, and
// the connection, which pgx closes to interrupt the statement, is not
// left acquired.
func TestCancelDuringBodyRollsBack(t *testing.T) {
	pool := postgres(t)
	execSQL(t, pool, "CREATE TABLE things (id int NOT NULL)")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := txlockpgx.Run(ctx, pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO things VALUES (1)"); err != nil {
			return err
		}
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := tx.Exec(ctx, "SELECT pg_sleep(5)")
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := count(t, pool, "SELECT count(*) FROM things"); n != 0 {
		t.Fatalf("%d rows committed by a cancelled Run", n)
	}
}

// TestCancelWhileWaitingForALock: a Run waiting for an advisory lock held
// by another gives up when its context is cancelled; the holder commits,
// and then no session holds or waits for the lock.
func TestCancelWhileWaitingForALock(t *testing.T) {
	for _, level := range []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead} {
		t.Run(level.String(), func(t *testing.T) {
			pool := postgres(t)
			ns := t.Name()
			opts := []txlock.Option{txlock.WithLocker(advisorylock.New(advisorylock.WithNamespace(ns))), isolation(level)}
			held, release := make(chan struct{}), make(chan struct{})
			holder := make(chan error, 1)
			go func() {
				holder <- txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
					close(held)
					<-release
					return nil
				}, opts...)
			}()
			<-held
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			err := txlockpgx.Run(ctx, pool, []string{"k"}, func(context.Context, pgx.Tx) error {
				t.Error("the waiter's body ran while the lock was held")
				return nil
			}, opts...)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("waiter: err = %v, want context.Canceled", err)
			}
			close(release)
			if err := <-holder; err != nil {
				t.Fatalf("holder: %v", err)
			}
			// pgx interrupts the waiter's statement by closing its
			// connection; its backend, blocked in the lock queue, only
			// notices when the lock is granted, and then exits.
			id := advisorylock.ID(ns, "k")
			deadline := time.Now().Add(5 * time.Second)
			for advisoryLocks(t, pool, []int64{id}) != 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := advisoryLocks(t, pool, []int64{id}); n != 0 {
				t.Errorf("%d advisory locks still held or waited for", n)
			}
		})
	}
}

// TestAdvisoryLockUnderContention: 16 goroutines run a read-then-write of
// one counter under one advisory lock. At READ COMMITTED the lock is a
// transaction lock taken in the transaction; at REPEATABLE READ and
// SERIALIZABLE it is a session lock taken on the connection before BEGIN,
// so the snapshot follows it. Either way every Run commits on its first
// attempt (WithMaxAttempts(1): a stale snapshot would be an error), the
// counter loses nothing, and no lock is left behind.
func TestAdvisoryLockUnderContention(t *testing.T) {
	for _, tc := range []struct {
		level sql.IsolationLevel
		stage txlock.Stage
	}{
		{sql.LevelReadCommitted, txlock.InTx},
		{sql.LevelRepeatableRead, txlock.OnConn},
		{sql.LevelSerializable, txlock.OnConn},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			pool := newPool(t, testenv.PostgresURL(t), 8)
			ns := t.Name()
			rec := &stageRecorder{Locker: advisorylock.New(advisorylock.WithNamespace(ns))}
			counterRace(t, pool, 16, txlock.WithLocker(rec), isolation(tc.level), txlock.WithMaxAttempts(1))
			if st, ok := rec.only(); !ok || st != tc.stage {
				t.Errorf("advisory locks taken at stages %v, want only %v", rec.stages, tc.stage)
			}
			if n := advisoryLocks(t, pool, []int64{advisorylock.ID(ns, "counter")}); n != 0 {
				t.Errorf("%d advisory locks still held or waited for after every Run returned", n)
			}
		})
	}
}

// TestMemcachedAndAdvisory: memcached queues the writers outside the
// database, advisory locks guard them inside it; 16 contending goroutines
// at each isolation level, every one committing on its first attempt.
func TestMemcachedAndAdvisory(t *testing.T) {
	mc := testenv.StartMemcached(t)
	for _, level := range []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable} {
		t.Run(level.String(), func(t *testing.T) {
			pool := newPool(t, testenv.PostgresURL(t), 8)
			ns := t.Name()
			lockers := txlock.WithLocker(
				memcachelock.New(memcache.New(mc.Addr()), memcachelock.WithPrefix(ns)),
				advisorylock.New(advisorylock.WithNamespace(ns)))
			counterRace(t, pool, 16, lockers, isolation(level), txlock.WithMaxAttempts(1))
			if n := advisoryLocks(t, pool, []int64{advisorylock.ID(ns, "counter")}); n != 0 {
				t.Errorf("%d advisory locks still held or waited for after every Run returned", n)
			}
		})
	}
}

// counterRace has workers goroutines increment one counter with a
// read-then-write under the lock "counter", all starting together, and
// checks that none failed and none was lost.
func counterRace(t *testing.T, pool *pgxpool.Pool, workers int, opts ...txlock.Option) {
	t.Helper()
	execSQL(t, pool, "CREATE TABLE counter (n int NOT NULL)", "INSERT INTO counter VALUES (0)")
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := txlockpgx.Run(context.Background(), pool, []string{"counter"}, func(ctx context.Context, tx pgx.Tx) error {
				var n int
				if err := tx.QueryRow(ctx, "SELECT n FROM counter").Scan(&n); err != nil {
					return err
				}
				time.Sleep(time.Millisecond) // widen the gap the lock must close
				_, err := tx.Exec(ctx, "UPDATE counter SET n = $1", n+1)
				return err
			}, opts...)
			if err != nil {
				t.Errorf("Run under contention: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := count(t, pool, "SELECT n FROM counter"); n != workers {
		t.Fatalf("counter = %d, want %d", n, workers)
	}
}

// sessionLocker takes its "lock" on the connection before BEGIN (stage
// OnConn), as advisorylock does at REPEATABLE READ, and remembers the
// backend. Its Release fails when told to.
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

// TestConnectionWithAnUnconfirmedReleaseIsClosed: a lock on the session
// that cannot be confirmed released must not go back to the pool with the
// session. The connection is taken out of the pool and closed, which ends
// the session; a confirmed release keeps it pooled. On the caller's own
// *pgx.Conn, the connection is closed.
func TestConnectionWithAnUnconfirmedReleaseIsClosed(t *testing.T) {
	u := testenv.PostgresURL(t)
	pool := newPool(t, u, 0)
	alive := func(pid int64) bool {
		return count(t, pool, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 1
	}
	waitAlive := func(pid int64, want bool) bool {
		deadline := time.Now().Add(5 * time.Second)
		for alive(pid) != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		return alive(pid) == want
	}
	for _, tc := range []struct {
		name       string
		releaseErr error
		wantAlive  bool
	}{
		{"release confirmed", nil, true},
		{"release failed", errors.New("unlock: connection state unknown"), false},
	} {
		t.Run("pool/"+tc.name, func(t *testing.T) {
			l := &sessionLocker{releaseErr: tc.releaseErr}
			var ev events
			var bodyPID int64
			err := txlockpgx.Run(context.Background(), pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
				return tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&bodyPID)
			}, txlock.WithLocker(l), ev.option())
			if err != nil {
				t.Fatal(err)
			}
			if bodyPID != l.pid.Load() {
				t.Fatalf("the lock was taken on backend %d, the transaction ran on %d", l.pid.Load(), bodyPID)
			}
			if !waitAlive(bodyPID, tc.wantAlive) {
				t.Fatalf("backend alive after Run = %v, want %v", !tc.wantAlive, tc.wantAlive)
			}
			if evs := ev.all(); len(evs) != 1 || (evs[0].ReleaseErr != nil) == tc.wantAlive {
				t.Errorf("events %+v: a failed release is reported, a confirmed one is not", evs)
			}
		})
		t.Run("conn/"+tc.name, func(t *testing.T) {
			conn, err := pgx.Connect(context.Background(), u)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			l := &sessionLocker{releaseErr: tc.releaseErr}
			err = txlockpgx.Run(context.Background(), conn, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
				if tx.Conn() != conn {
					t.Error("the transaction does not run on the caller's connection")
				}
				return nil
			}, txlock.WithLocker(l))
			if err != nil {
				t.Fatal(err)
			}
			if conn.IsClosed() == tc.wantAlive {
				t.Fatalf("connection closed = %v, want %v", conn.IsClosed(), !tc.wantAlive)
			}
			if !waitAlive(l.pid.Load(), tc.wantAlive) {
				t.Fatalf("backend alive after Run = %v, want %v", !tc.wantAlive, tc.wantAlive)
			}
		})
	}
}

// TestOneConnection: Run on a *pgx.Conn and on an acquired *pgxpool.Conn
// takes advisory session locks on that connection (REPEATABLE READ) and
// runs every attempt there; the connection stays the caller's.
func TestOneConnection(t *testing.T) {
	u := testenv.PostgresURL(t)
	pool := newPool(t, u, 0)
	execSQL(t, pool, "CREATE TABLE things (id int NOT NULL)")
	conn, err := pgx.Connect(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	acquired, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer acquired.Release()
	ns := t.Name()
	for i, db := range []txlockpgx.Beginner{conn, acquired} {
		rec := &stageRecorder{Locker: advisorylock.New(advisorylock.WithNamespace(ns))}
		err := txlockpgx.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
			if n := advisoryLocks(t, pool, []int64{advisorylock.ID(ns, "k")}); n != 1 {
				t.Errorf("%T: %d advisory locks held in the body, want 1", db, n)
			}
			_, err := tx.Exec(ctx, "INSERT INTO things VALUES ($1)", i)
			return err
		}, txlock.WithLocker(rec), isolation(sql.LevelRepeatableRead))
		if err != nil {
			t.Fatalf("%T: %v", db, err)
		}
		if st, ok := rec.only(); !ok || st != txlock.OnConn {
			t.Errorf("%T: advisory locks taken at stages %v, want on the connection", db, rec.stages)
		}
		if n := advisoryLocks(t, pool, []int64{advisorylock.ID(ns, "k")}); n != 0 {
			t.Errorf("%T: %d advisory locks left after Run", db, n)
		}
	}
	if conn.IsClosed() || acquired.Conn().IsClosed() {
		t.Error("Run closed a connection of the caller's")
	}
	if got := ints(t, pool, "SELECT id FROM things ORDER BY id"); !slices.Equal(got, []int{0, 1}) {
		t.Fatalf("rows %v, want [0 1]", got)
	}
}

// TestNestedRunIsRefused: a Run, of either package, from inside a body of
// either is ErrNestedRun, not a second transaction.
func TestNestedRunIsRefused(t *testing.T) {
	u := testenv.PostgresURL(t)
	pool := newPool(t, u, 0)
	db := testenv.OpenURL(t, u)
	innerPgx := func(ctx context.Context) error {
		return txlockpgx.Run(ctx, pool, nil, func(context.Context, pgx.Tx) error { return nil })
	}
	innerSQL := func(ctx context.Context) error {
		return txlock.Run(ctx, db, nil, func(context.Context, *sql.Tx) error { return nil })
	}
	for name, inner := range map[string]func(context.Context) error{"txlockpgx.Run": innerPgx, "txlock.Run": innerSQL} {
		err := txlockpgx.Run(context.Background(), pool, nil, func(ctx context.Context, tx pgx.Tx) error { return inner(ctx) })
		if !errors.Is(err, txlock.ErrNestedRun) {
			t.Errorf("%s in a txlockpgx.Run body: err = %v, want ErrNestedRun", name, err)
		}
		err = txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error { return inner(ctx) })
		if !errors.Is(err, txlock.ErrNestedRun) {
			t.Errorf("%s in a txlock.Run body: err = %v, want ErrNestedRun", name, err)
		}
	}
}

// TestLostSingleConnectionIsNotRetried: a *pgx.Conn whose backend is
// terminated cannot carry another attempt; Run says so after the one that
// broke instead of running every attempt against a closed connection.
func TestLostSingleConnectionIsNotRetried(t *testing.T) {
	pool := postgres(t)
	conn, err := pgx.Connect(context.Background(), testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ev events
	err = txlockpgx.Run(context.Background(), conn, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error {
		var pid int
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT 1")
		return err
	}, ev.option(), txlock.WithMaxAttempts(5))
	if err == nil || errors.Is(err, txlock.ErrTooManyAttempts) || len(ev.all()) != 2 {
		t.Fatalf("Run = %v after %d attempts; want a final error on the second", err, len(ev.all()))
	}
}
