package txlock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/retry"
	"github.com/txlock/txlock/sqladapter"
)

// These tests drive every path through Run against go-sqlmock, which fails
// the test on any statement it was not told to expect. So "nothing reached
// the database" is checked by expecting nothing.

func newMock(t *testing.T) (*sql.DB, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Errorf("sqlmock: %v", err)
		}
		if n := db.Stats().InUse; n != 0 {
			t.Errorf("leak: %d connections in use", n)
		}
		db.Close()
	})
	return db, mock
}

func pgErr(code string) *pgconn.PgError {
	return &pgconn.PgError{Severity: "ERROR", Code: code, Message: "test error " + code}
}

// noWait makes retries immediate so tests do not sleep.
var noWait = txlock.WithBackoff(retry.Constant(0))

// onAttempt calls f with every attempt's Event.
func onAttempt(f func(txlock.Event)) txlock.Option {
	return txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) { f(e) }})
}

func insert(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO names")
	return err
}

// recorder is a Locker that logs what Run asks of it and can be told to fail.
type recorder struct {
	name string
	inTx bool
	log  *eventLog

	acquireErr func(attempt int) error
	verifyErr  func(attempt int) error
	releaseErr error
	loseOn     int // call req.Lost during acquire of this attempt

	mu   sync.Mutex
	lost func(error) // the last Request.Lost, for tests to call

	attempts atomic.Int32
	held     atomic.Int32
}

type eventLog struct {
	mu sync.Mutex
	ev []string
}

func (l *eventLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, fmt.Sprintf(format, args...))
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.ev, " ")
}

func (r *recorder) Traits(*sql.TxOptions) txlock.Traits {
	if r.inTx {
		return txlock.Traits{Stage: txlock.InTx}
	}
	return txlock.Traits{Stage: txlock.BeforeBegin}
}

// lose reports the last lease lost, as a refresher that found the key gone
// would.
func (r *recorder) lose() {
	r.mu.Lock()
	lost := r.lost
	r.mu.Unlock()
	lost(fmt.Errorf("%w: test eviction", txlock.ErrLockLost))
}

func (r *recorder) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	n := int(r.attempts.Add(1))
	r.log.add("%s.acquire%v(tx=%t)", r.name, req.Keys, req.Stage == txlock.InTx)
	if r.acquireErr != nil {
		if err := r.acquireErr(n); err != nil {
			return nil, err
		}
	}
	if r.loseOn == n {
		req.Lost(fmt.Errorf("%w: test eviction", txlock.ErrLockLost))
	}
	r.mu.Lock()
	r.lost = req.Lost
	r.mu.Unlock()
	r.held.Add(1)
	return &recordedLease{r: r, n: n}, nil
}

type recordedLease struct {
	r    *recorder
	n    int
	once sync.Once
}

func (l *recordedLease) Verify(context.Context) error {
	l.r.log.add("%s.verify", l.r.name)
	if l.r.verifyErr != nil {
		return l.r.verifyErr(l.n)
	}
	return nil
}

func (l *recordedLease) Release(ctx context.Context) error {
	released := false
	l.once.Do(func() { released = true })
	if !released {
		panic("lease released twice")
	}
	if ctx.Err() != nil {
		panic("release got a cancelled context")
	}
	l.r.held.Add(-1)
	l.r.log.add("%s.release", l.r.name)
	return l.r.releaseErr
}

func TestRunCommits(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit()

	local := txlock.NewLocalLocker()
	var attempt int
	err := txlock.Run(context.Background(), db, []string{"b", "a"}, func(ctx context.Context, tx *sql.Tx) error {
		attempt = txlock.Attempt(ctx)
		if local.Len() != 2 {
			t.Errorf("inside the body %d keys are held, want 2", local.Len())
		}
		return insert(ctx, tx)
	}, txlock.WithLocker(local))
	if err != nil {
		t.Fatal(err)
	}
	if attempt != 1 {
		t.Errorf("Attempt = %d, want 1", attempt)
	}
	if local.Len() != 0 {
		t.Errorf("after Run %d keys are still held", local.Len())
	}
}

func TestRunRetriesConflicts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		atCommit bool
		err      error
	}{
		{"serialization failure in a statement", false, pgErr("40001")},
		{"serialization failure at commit", true, pgErr("40001")},
		{"deadlock", false, pgErr("40P01")},
		{"unique violation", false, pgErr("23505")},
		{"wrapped serialization failure", false, fmt.Errorf("repo: insert: %w", pgErr("40001"))},
		{"bad connection before commit", false, driver.ErrBadConn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, mock := newMock(t)
			mock.ExpectBegin()
			if tc.atCommit {
				mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
				mock.ExpectCommit().WillReturnError(tc.err)
			} else {
				mock.ExpectExec("INSERT").WillReturnError(tc.err)
				mock.ExpectRollback()
			}
			mock.ExpectBegin()
			mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
			mock.ExpectCommit()

			var attempts []int
			var events []txlock.Event
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				attempts = append(attempts, txlock.Attempt(ctx))
				return insert(ctx, tx)
			}, noWait, txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) { events = append(events, e) }}))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(attempts, []int{1, 2}) {
				t.Errorf("attempts = %v, want [1 2]", attempts)
			}
			if len(events) != 2 || !events[0].Retry || events[0].Err == nil || events[1].Err != nil {
				t.Errorf("events = %+v, want a retried failure then a commit", events)
			}
		})
	}
}

func TestRunDoesNotRetryPermanentErrors(t *testing.T) {
	bodyErr := errors.New("name taken")
	for _, tc := range []struct {
		name string
		err  error
		opts []txlock.Option
	}{
		{"body error", bodyErr, nil},
		{"check violation", pgErr("23514"), nil},
		{"syntax error", pgErr("42601"), nil},
		{"unique violation narrowed to other constraints", &pgconn.PgError{Code: "23505", ConstraintName: "users_email_key"},
			[]txlock.Option{txlock.WithClassifier(sqladapter.Classifier{UniqueConstraints: []string{"names_pkey"}}.Classify)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, mock := newMock(t)
			mock.ExpectBegin()
			mock.ExpectRollback()
			calls := 0
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				calls++
				return tc.err
			}, append(tc.opts, noWait)...)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if calls != 1 {
				t.Errorf("body ran %d times, want 1", calls)
			}
		})
	}
}

func TestRunUniqueRetryNarrowedToNamedConstraint(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnError(&pgconn.PgError{Code: "23505", ConstraintName: "names_pkey"})
	mock.ExpectRollback()
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit()
	err := txlock.Run(context.Background(), db, nil, insert, noWait,
		txlock.WithClassifier(sqladapter.Classifier{UniqueConstraints: []string{"names_pkey"}}.Classify))
	if err != nil {
		t.Fatal(err)
	}
}

func TestRunAmbiguousCommitIsNeverRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"statement completion unknown", pgErr("40003")},
		{"transaction resolution unknown", pgErr("08007")},
		{"connection failure", pgErr("08006")},
		{"backend terminated", pgErr("57P01")},
		{"unexpected EOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF)},
		{"bad connection", driver.ErrBadConn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, mock := newMock(t)
			mock.ExpectBegin()
			mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
			mock.ExpectCommit().WillReturnError(tc.err)
			calls := 0
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				calls++
				return insert(ctx, tx)
			}, noWait)
			if !errors.Is(err, txlock.ErrAmbiguousCommit) {
				t.Fatalf("err = %v, want ErrAmbiguousCommit", err)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("err = %v does not wrap the driver's error", err)
			}
			if calls != 1 {
				t.Errorf("body ran %d times, want 1", calls)
			}
		})
	}
}

func TestRunPermanentCommitErrorIsNotAmbiguous(t *testing.T) {
	// A deferred constraint failing at COMMIT: Postgres rolled back, and
	// says so. That is a plain error, not an unknown outcome.
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit().WillReturnError(pgErr("23503"))
	err := txlock.Run(context.Background(), db, nil, insert, noWait)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23503" || errors.Is(err, txlock.ErrAmbiguousCommit) {
		t.Fatalf("err = %v, want the 23503 error and not ErrAmbiguousCommit", err)
	}
}

func TestRunExhaustion(t *testing.T) {
	db, mock := newMock(t)
	for i := 0; i < 3; i++ {
		mock.ExpectBegin()
		mock.ExpectExec("INSERT").WillReturnError(pgErr("40001"))
		mock.ExpectRollback()
	}
	local := txlock.NewLocalLocker()
	err := txlock.Run(context.Background(), db, []string{"k"}, insert, noWait,
		txlock.WithMaxAttempts(3), txlock.WithLocker(local))
	if !errors.Is(err, txlock.ErrTooManyAttempts) {
		t.Fatalf("err = %v, want ErrTooManyAttempts", err)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "40001" {
		t.Fatalf("errors.As does not find the driver's error in %v", err)
	}
	if local.Len() != 0 {
		t.Errorf("%d keys still held", local.Len())
	}
}

func TestRunMaxAttemptsOneNeverRetries(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnError(pgErr("40P01"))
	mock.ExpectRollback()
	err := txlock.Run(context.Background(), db, nil, insert, txlock.WithMaxAttempts(1))
	if !errors.Is(err, txlock.ErrTooManyAttempts) {
		t.Fatalf("err = %v, want ErrTooManyAttempts", err)
	}
}

func TestRunBeginErrors(t *testing.T) {
	t.Run("retryable", func(t *testing.T) {
		db, mock := newMock(t)
		mock.ExpectBegin().WillReturnError(pgErr("57P03")) // cannot connect now
		mock.ExpectBegin()
		mock.ExpectCommit()
		if err := txlock.Run(context.Background(), db, nil, func(context.Context, *sql.Tx) error { return nil }, noWait); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("permanent", func(t *testing.T) {
		db, mock := newMock(t)
		mock.ExpectBegin().WillReturnError(pgErr("28P01")) // bad password
		local := txlock.NewLocalLocker()
		err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error {
			t.Error("body ran")
			return nil
		}, noWait, txlock.WithLocker(local))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" {
			t.Fatalf("err = %v", err)
		}
		if local.Len() != 0 {
			t.Error("lock leaked after BEGIN failed")
		}
	})
}

func TestRunCancelledWhileWaitingForLock(t *testing.T) {
	db, _ := newMock(t) // expects nothing: the waiter must not BEGIN
	local := txlock.NewLocalLocker()
	hold := make(chan struct{})
	holding := make(chan struct{})
	go func() {
		lease, err := local.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
		if err != nil {
			t.Error(err)
			return
		}
		close(holding)
		<-hold
		_ = lease.Release(context.Background())
	}()
	<-holding
	defer close(hold)

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	err := txlock.Run(ctx, db, []string{"k"}, func(context.Context, *sql.Tx) error {
		t.Error("body ran without the lock")
		return nil
	}, txlock.WithLocker(local))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if errors.Is(err, txlock.ErrLockBusy) {
		t.Errorf("a cancelled wait is not ErrLockBusy: %v", err)
	}
	if n := local.Len(); n != 1 {
		t.Errorf("Len = %d, want 1 (only the holder)", n)
	}
}

func TestRunLockBusy(t *testing.T) {
	for _, wait := range []time.Duration{0, 30 * time.Millisecond} {
		t.Run(fmt.Sprint("wait=", wait), func(t *testing.T) {
			db, _ := newMock(t)
			local := txlock.NewLocalLocker()
			lease, err := local.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
			if err != nil {
				t.Fatal(err)
			}
			defer lease.Release(context.Background())
			calls := 0
			err = txlock.Run(context.Background(), db, []string{"j", "k"}, func(context.Context, *sql.Tx) error {
				calls++
				return nil
			}, txlock.WithLocker(local), txlock.WithLockWait(wait))
			if !errors.Is(err, txlock.ErrLockBusy) {
				t.Fatalf("err = %v, want ErrLockBusy", err)
			}
			if calls != 0 {
				t.Error("body ran")
			}
			if n := local.Len(); n != 1 {
				t.Errorf("Len = %d, want 1: key j must have been given back", n)
			}
		})
	}
}

// TestRunWaitsForABusyInProcessKey: a key held in the process is waited
// for within the lock wait, and taken when its holder lets it go.
func TestRunWaitsForABusyInProcessKey(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	local := txlock.NewLocalLocker()
	holder, err := local.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	calls := 0
	go func() {
		done <- txlock.Run(context.Background(), db, []string{"j", "k"}, func(context.Context, *sql.Tx) error {
			calls++
			return nil
		}, txlock.WithLocker(local), txlock.WithLockWait(10*time.Second))
	}()
	for deadline := time.Now().Add(5 * time.Second); local.Waiters("k") < 2; {
		if time.Now().After(deadline) {
			t.Fatal("Run did not queue for the busy key")
		}
		runtime.Gosched()
	}
	if err := holder.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if calls != 1 {
		t.Errorf("body ran %d times, want 1", calls)
	}
	if n := local.Len(); n != 0 {
		t.Errorf("Len = %d after Run, want 0", n)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestRunCancelledDuringBody(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	ctx, cancel := context.WithCancel(context.Background())
	local := txlock.NewLocalLocker()
	calls := 0
	err := txlock.Run(ctx, db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		calls++
		cancel()
		<-ctx.Done()
		return fmt.Errorf("query: %w", pgErr("40001")) // retryable, but the caller gave up
	}, txlock.WithLocker(local), noWait)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Errorf("the last error is lost: %v", err)
	}
	if calls != 1 {
		t.Errorf("body ran %d times after cancellation", calls)
	}
	if local.Len() != 0 {
		t.Error("lock leaked")
	}
}

func TestRunCancelledDuringBackoffKeepsLastError(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnError(pgErr("40001"))
	mock.ExpectRollback()
	ctx, cancel := context.WithCancel(context.Background())
	local := txlock.NewLocalLocker()
	backoff := retry.BackoffFunc(func(int) time.Duration {
		if local.Len() != 0 {
			t.Error("backoff while holding locks")
		}
		cancel()
		return time.Hour
	})
	err := txlock.Run(ctx, db, []string{"k"}, insert, txlock.WithBackoff(backoff), txlock.WithLocker(local))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "40001" {
		t.Fatalf("err = %v does not keep the last error", err)
	}
}

func TestRunAfterCommit(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnError(pgErr("40001"))
	mock.ExpectRollback()
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit()

	local := txlock.NewLocalLocker()
	var got []string
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		n := txlock.Attempt(ctx)
		for _, name := range []string{"first", "second", "third"} {
			if err := txlock.AfterCommit(ctx, func() {
				if local.Len() != 0 {
					t.Error("AfterCommit callback ran while locks were held")
				}
				got = append(got, fmt.Sprintf("%s@%d", name, n))
			}); err != nil {
				return err
			}
		}
		if len(got) != 0 {
			t.Error("callback ran before commit")
		}
		return insert(ctx, tx)
	}, txlock.WithLocker(local), noWait)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"first@2", "second@2", "third@2"}; !slices.Equal(got, want) {
		t.Fatalf("callbacks = %v, want %v (only the committed attempt's, in order)", got, want)
	}
}

func TestRunAfterCommitNotRunOnFailure(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit().WillReturnError(pgErr("08006"))
	ran := false
	err := txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
		if err := txlock.AfterCommit(ctx, func() { ran = true }); err != nil {
			return err
		}
		return insert(ctx, tx)
	})
	if !errors.Is(err, txlock.ErrAmbiguousCommit) {
		t.Fatalf("err = %v", err)
	}
	if ran {
		t.Error("AfterCommit ran after a commit that did not succeed")
	}
}

func TestNestedRunIsRefused(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	var inner error
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		inner = txlock.Run(ctx, db, []string{"other"}, func(context.Context, *sql.Tx) error {
			t.Error("nested body ran")
			return nil
		})
		return inner
	})
	if !errors.Is(inner, txlock.ErrNestedRun) || !errors.Is(err, txlock.ErrNestedRun) {
		t.Fatalf("inner = %v, outer = %v, want ErrNestedRun", inner, err)
	}
}

func TestOutsideRun(t *testing.T) {
	ctx := context.Background()
	if err := txlock.Lock(ctx, "k"); !errors.Is(err, txlock.ErrNotInRun) {
		t.Errorf("Lock: %v", err)
	}
	if err := txlock.AfterCommit(ctx, func() {}); !errors.Is(err, txlock.ErrNotInRun) {
		t.Errorf("AfterCommit: %v", err)
	}
	if n := txlock.Attempt(ctx); n != 0 {
		t.Errorf("Attempt = %d", n)
	}
	if err := txlock.Lock(noCtx, "k"); !errors.Is(err, txlock.ErrNotInRun) {
		t.Errorf("Lock(nil): %v", err)
	}
	if n := txlock.Attempt(noCtx); n != 0 {
		t.Errorf("Attempt(nil) = %d", n)
	}
	if err := txlock.AfterCommit(noCtx, func() {}); !errors.Is(err, txlock.ErrNotInRun) {
		t.Errorf("AfterCommit(nil): %v", err)
	}
}

func TestContextUsedAfterBodyReturned(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	local := txlock.NewLocalLocker()
	var saved context.Context
	if err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		saved = ctx
		return nil
	}, txlock.WithLocker(local)); err != nil {
		t.Fatal(err)
	}
	if err := txlock.Lock(saved, "late"); !errors.Is(err, txlock.ErrNotInRun) {
		t.Errorf("Lock after the body: %v", err)
	}
	if err := txlock.AfterCommit(saved, func() {}); !errors.Is(err, txlock.ErrNotInRun) {
		t.Errorf("AfterCommit after the body: %v", err)
	}
	if local.Len() != 0 {
		t.Error("late Lock leaked a key")
	}
}

func TestLockInsideRun(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	local := txlock.NewLocalLocker()
	log := &eventLog{}
	adv := &recorder{name: "adv", inTx: true, log: log}
	err := txlock.Run(context.Background(), db, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
		// Already held: a no-op, not a self-deadlock (LocalLocker is not reentrant).
		if err := txlock.Lock(ctx, "a", "a"); err != nil {
			return err
		}
		if err := txlock.Lock(ctx, "c", "b", "c"); err != nil {
			return err
		}
		if err := txlock.Lock(ctx, "b"); err != nil {
			return err
		}
		if local.Len() != 3 {
			t.Errorf("held %d keys, want 3", local.Len())
		}
		if err := txlock.Lock(ctx, ""); !errors.Is(err, txlock.ErrInvalid) {
			t.Errorf("Lock(\"\") = %v, want ErrInvalid", err)
		}
		return nil
	}, txlock.WithLocker(local, adv), txlock.WithLockWait(0))
	if err != nil {
		t.Fatal(err)
	}
	if local.Len() != 0 || adv.held.Load() != 0 {
		t.Errorf("locks leaked: local %d, adv %d", local.Len(), adv.held.Load())
	}
	want := "adv.acquire[a](tx=true) adv.acquire[b c](tx=true) adv.verify adv.verify adv.release adv.release"
	if got := log.String(); got != want {
		t.Errorf("log:\n got %s\nwant %s", got, want)
	}
}

func TestKeysAreDeduplicatedAndSorted(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	log := &eventLog{}
	r := &recorder{name: "r", log: log}
	err := txlock.Run(context.Background(), db, []string{"z", "a", "m", "a", "z"}, func(context.Context, *sql.Tx) error { return nil }, txlock.WithLocker(r))
	if err != nil {
		t.Fatal(err)
	}
	if got := log.String(); !strings.HasPrefix(got, "r.acquire[a m z](tx=false)") {
		t.Errorf("log = %s", got)
	}
}

func TestLockerOrderAndTransactionBoundary(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	log := &eventLog{}
	mc := &recorder{name: "mc", log: log}
	adv := &recorder{name: "adv", inTx: true, log: log}
	mc2 := &recorder{name: "mc2", log: log}
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		log.add("body")
		return nil
	}, txlock.WithLocker(mc, adv, mc2))
	if err != nil {
		t.Fatal(err)
	}
	want := "mc.acquire[k](tx=false) adv.acquire[k](tx=true) mc2.acquire[k](tx=true) body " +
		"mc.verify adv.verify mc2.verify mc2.release adv.release mc.release"
	if got := log.String(); got != want {
		t.Errorf("log:\n got %s\nwant %s", got, want)
	}
}

func TestLostLockRetries(t *testing.T) {
	t.Run("lost while the body runs", func(t *testing.T) {
		db, mock := newMock(t)
		mock.ExpectBegin()
		mock.ExpectRollback()
		mock.ExpectBegin()
		mock.ExpectCommit()
		r := &recorder{name: "mc", log: &eventLog{}}
		var causes []error
		err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
			if txlock.Attempt(ctx) == 1 {
				r.lose()
				<-ctx.Done()
				causes = append(causes, context.Cause(ctx))
				return ctx.Err()
			}
			return nil
		}, txlock.WithLocker(r), noWait)
		if err != nil {
			t.Fatal(err)
		}
		if len(causes) != 1 || !errors.Is(causes[0], txlock.ErrLockLost) {
			t.Errorf("body's context cause = %v, want ErrLockLost", causes)
		}
	})
	t.Run("lost at verify", func(t *testing.T) {
		db, mock := newMock(t)
		mock.ExpectBegin()
		mock.ExpectRollback() // never COMMIT under a lost lock
		mock.ExpectBegin()
		mock.ExpectCommit()
		r := &recorder{name: "mc", log: &eventLog{}, verifyErr: func(n int) error {
			if n == 1 {
				return fmt.Errorf("%w: token mismatch", txlock.ErrLockLost)
			}
			return nil
		}}
		if err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil }, txlock.WithLocker(r), noWait); err != nil {
			t.Fatal(err)
		}
		if r.held.Load() != 0 {
			t.Error("lease leaked")
		}
	})
	t.Run("body ignores the cancellation", func(t *testing.T) {
		db, mock := newMock(t)
		mock.ExpectBegin()
		mock.ExpectRollback()
		mock.ExpectBegin()
		mock.ExpectCommit()
		r := &recorder{name: "mc", log: &eventLog{}}
		if err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, _ *sql.Tx) error {
			if txlock.Attempt(ctx) == 1 {
				r.lose()
			}
			return nil
		}, txlock.WithLocker(r), noWait); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("lost before BEGIN", func(t *testing.T) {
		db, mock := newMock(t)
		mock.ExpectBegin() // only the second attempt begins
		mock.ExpectCommit()
		r := &recorder{name: "mc", log: &eventLog{}, loseOn: 1}
		if err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil }, txlock.WithLocker(r), noWait); err != nil {
			t.Fatal(err)
		}
		if r.attempts.Load() != 2 || r.held.Load() != 0 {
			t.Errorf("attempts %d, held %d", r.attempts.Load(), r.held.Load())
		}
	})
}

// A lease that cannot be verified because its service is down is never
// committed under: the attempt rolls back and the next one waits the
// outage out.
func TestVerifyUnavailableRollsBackAndRetries(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	mock.ExpectBegin()
	mock.ExpectCommit()
	down := fmt.Errorf("%w: dial tcp: connection refused", txlock.ErrLockUnavailable)
	r := &recorder{name: "mc", log: &eventLog{}, verifyErr: func(n int) error {
		if n == 1 {
			return down
		}
		return nil
	}}
	var reasons []string
	err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		txlock.WithLocker(r), noWait, onAttempt(func(e txlock.Event) { reasons = append(reasons, e.Reason) }))
	if err != nil {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(reasons, []string{"lock_unavailable", ""}) {
		t.Errorf("reasons = %q", reasons)
	}
	// Still down at every attempt: the run ends, and says why.
	db2, mock2 := newMock(t)
	for range 2 {
		mock2.ExpectBegin()
		mock2.ExpectRollback()
	}
	r2 := &recorder{name: "mc", log: &eventLog{}, verifyErr: func(int) error { return down }}
	err = txlock.Run(context.Background(), db2, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		txlock.WithLocker(r2), noWait, txlock.WithMaxAttempts(2))
	if !errors.Is(err, txlock.ErrLockUnavailable) || !errors.Is(err, txlock.ErrTooManyAttempts) {
		t.Fatalf("err = %v, want ErrTooManyAttempts wrapping ErrLockUnavailable", err)
	}
}

func TestInTxLockerDeadlockIsRetried(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	mock.ExpectBegin()
	mock.ExpectCommit()
	adv := &recorder{name: "adv", inTx: true, log: &eventLog{}, acquireErr: func(n int) error {
		if n == 1 {
			return fmt.Errorf("advisory lock: %w", pgErr("40P01"))
		}
		return nil
	}}
	if err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil }, txlock.WithLocker(adv), noWait); err != nil {
		t.Fatal(err)
	}
}

func TestAcquireErrorIsReturned(t *testing.T) {
	db, _ := newMock(t)
	// The transport error inside would look retryable to the driver
	// classifier; ErrLockUnavailable must win.
	down := fmt.Errorf("%w: %w", txlock.ErrLockUnavailable, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	log := &eventLog{}
	first := &recorder{name: "first", log: log}
	second := &recorder{name: "second", log: log, acquireErr: func(int) error { return down }}
	err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil }, txlock.WithLocker(first, second))
	if !errors.Is(err, txlock.ErrLockUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if first.held.Load() != 0 {
		t.Error("the first locker's lease leaked when the second failed")
	}
}

func TestReleaseErrorIsObservedNotReturned(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	r := &recorder{name: "mc", log: &eventLog{}, releaseErr: errors.New("release failed")}
	var ev txlock.Event
	err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		txlock.WithLocker(r), txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) { ev = e }}))
	if err != nil {
		t.Fatal(err)
	}
	if ev.ReleaseErr == nil {
		t.Error("release error not reported to the observer")
	}
}

func TestPanicReleasesAndRepanics(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	local := txlock.NewLocalLocker()
	type boom struct{ msg string }
	defer func() {
		p := recover()
		if b, ok := p.(boom); !ok || b.msg != "body" {
			t.Fatalf("recovered %v, want the body's panic value", p)
		}
		if local.Len() != 0 {
			t.Error("lock leaked after panic")
		}
	}()
	_ = txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error {
		panic(boom{"body"})
	}, txlock.WithLocker(local))
	t.Fatal("Run returned after a panic")
}

// countingBeginner fails the test if anything reaches it.
type countingBeginner struct{ calls atomic.Int32 }

func (c *countingBeginner) BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error) {
	c.calls.Add(1)
	return nil, errors.New("should not be called")
}

func TestBadInput(t *testing.T) {
	var typedNil *sql.DB
	var typedNilConn *sql.Conn
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	fn := func(context.Context, *sql.Tx) error { return nil }
	cb := &countingBeginner{}
	local := txlock.NewLocalLocker()
	var nilLocker *txlock.LocalLocker
	for _, tc := range []struct {
		name string
		ctx  context.Context
		db   txlock.Beginner
		keys []string
		fn   func(context.Context, *sql.Tx) error
		opts []txlock.Option
		want error
	}{
		{"nil context", nil, cb, nil, fn, nil, txlock.ErrInvalid},
		{"nil db", context.Background(), nil, nil, fn, nil, txlock.ErrInvalid},
		{"typed nil *sql.DB", context.Background(), typedNil, nil, fn, nil, txlock.ErrInvalid},
		{"typed nil *sql.Conn", context.Background(), typedNilConn, nil, fn, nil, txlock.ErrInvalid},
		{"nil fn", context.Background(), cb, nil, nil, nil, txlock.ErrInvalid},
		{"empty key", context.Background(), cb, []string{"a", ""}, fn, nil, txlock.ErrInvalid},
		{"zero attempts", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithMaxAttempts(0)}, txlock.ErrInvalid},
		{"negative attempts", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithMaxAttempts(-3)}, txlock.ErrInvalid},
		{"negative wait", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithLockWait(-time.Second)}, txlock.ErrInvalid},
		{"no lockers", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithLocker()}, txlock.ErrInvalid},
		{"nil locker", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithLocker(local, nil)}, txlock.ErrInvalid},
		{"typed nil locker", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithLocker(nilLocker)}, txlock.ErrInvalid},
		{"nil classifier", context.Background(), cb, nil, fn, []txlock.Option{txlock.WithClassifier(nil)}, txlock.ErrInvalid},
		{"cancelled context", cancelled, cb, []string{"k"}, fn, nil, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := txlock.Run(tc.ctx, tc.db, tc.keys, tc.fn, append(tc.opts, nil)...) // a nil Option is ignored
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if n := cb.calls.Load(); n != 0 {
		t.Errorf("bad input reached the database %d times", n)
	}
	if local.Len() != 0 {
		t.Error("bad input took a lock")
	}
}

func TestAnyKeyIsValid(t *testing.T) {
	db, mock := newMock(t)
	keys := []string{"\x00", "a b\r\nset x 0 0 1\r\n", strings.Repeat("k", 1<<20), "\xff\xfe", "名前", "' OR 1=1 --"}
	mock.ExpectBegin()
	mock.ExpectCommit()
	local := txlock.NewLocalLocker()
	err := txlock.Run(context.Background(), db, keys, func(context.Context, *sql.Tx) error {
		if local.Len() != len(keys) {
			t.Errorf("held %d keys, want %d", local.Len(), len(keys))
		}
		return nil
	}, txlock.WithLocker(local))
	if err != nil {
		t.Fatal(err)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	testenv.CheckLeaks(t)
	db, mock := newMock(t)
	for i := 0; i < 20; i++ {
		mock.ExpectBegin()
		mock.ExpectExec("INSERT").WillReturnError(pgErr("40001"))
		mock.ExpectRollback()
	}
	local := txlock.NewLocalLocker()
	for i := 0; i < 10; i++ {
		_ = txlock.Run(context.Background(), db, []string{"k"}, insert, noWait, txlock.WithMaxAttempts(2), txlock.WithLocker(local))
	}
}

// liar claims its leases cannot be lost, then reports one lost anyway.
type liar struct{ recorder }

func (*liar) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.BeforeBegin, Stable: true}
}

func TestStableLockersKeepTheBodyContextUncancellable(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	mock.ExpectBegin()
	mock.ExpectCommit()
	var done []bool
	body := func(ctx context.Context, tx *sql.Tx) error {
		done = append(done, ctx.Done() != nil)
		return nil
	}
	if err := txlock.Run(context.Background(), db, []string{"k"}, body, txlock.WithLocker(txlock.NewLocalLocker())); err != nil {
		t.Fatal(err)
	}
	r := &recorder{name: "mc", log: &eventLog{}}
	if err := txlock.Run(context.Background(), db, []string{"k"}, body, txlock.WithLocker(txlock.NewLocalLocker(), r)); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(done, []bool{false, true}) {
		t.Fatalf("body context cancellable = %v, want [false true]: only lockers that may lose a lease need it", done)
	}
}

func TestLossReportedByAStableLockerStillPreventsCommit(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	mock.ExpectBegin()
	mock.ExpectCommit()
	l := &liar{recorder{name: "liar", log: &eventLog{}}}
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			l.lose()
		}
		return nil
	}, txlock.WithLocker(l), noWait)
	if err != nil {
		t.Fatal(err)
	}
}

func TestAfterCommitNotRunWhenTheBodyPanics(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectRollback()
	ran := false
	func() {
		defer func() { _ = recover() }()
		_ = txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
			if err := txlock.AfterCommit(ctx, func() { ran = true }); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if ran {
		t.Fatal("AfterCommit callback ran although the transaction rolled back")
	}
}

func TestAfterCommitSeesALiveContext(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	ctx, cancel := context.WithCancel(context.Background()) // cancellable: the body gets its own context
	defer cancel()
	var cbErr error = errors.New("callback did not run")
	r := &recorder{name: "mc", log: &eventLog{}}
	err := txlock.Run(ctx, db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		return txlock.AfterCommit(ctx, func() {
			cbErr = ctx.Err()
			if n := txlock.Attempt(ctx); n != 0 {
				t.Errorf("Attempt in a callback = %d, want 0: the body is over", n)
			}
		})
	}, txlock.WithLocker(r))
	if err != nil {
		t.Fatal(err)
	}
	if cbErr != nil {
		t.Fatalf("the body's context was already done in the callback: %v", cbErr)
	}
}

func TestSameLockerTwiceIsRejected(t *testing.T) {
	l := txlock.NewLocalLocker()
	err := txlock.Run(context.Background(), &countingBeginner{}, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		txlock.WithLocker(l, l))
	if !errors.Is(err, txlock.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}

func TestBodyThatCommitsItself(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit()
	err := txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
		return tx.Commit()
	})
	if !errors.Is(err, sql.ErrTxDone) {
		t.Fatalf("err = %v, want sql.ErrTxDone in the chain", err)
	}
}
