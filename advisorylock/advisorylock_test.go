package advisorylock_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/sqladapter"
)

// holdInOtherTx takes key's advisory lock in a transaction of its own and
// keeps it until the returned function is called.
func holdInOtherTx(t *testing.T, db *sql.DB, l *advisorylock.Locker, key string) (release func()) {
	t.Helper()
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{key}, Stage: txlock.InTx, Conn: inTx{tx}, TryOnce: true}); err != nil {
		_ = tx.Rollback()
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback() }) }
	t.Cleanup(release)
	return release
}

func noop(context.Context, *sql.Tx) error { return nil }

func TestBusyWithoutWait(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	holdInOtherTx(t, db, l, "k")
	start := time.Now()
	err := txlock.Run(context.Background(), db, []string{"k"}, noop, txlock.WithLocker(l), txlock.WithLockWait(0))
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("err = %v, want ErrLockBusy", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("wait 0 took %v", d)
	}
}

func TestWaitTimesOut(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	holdInOtherTx(t, db, l, "k")
	err := txlock.Run(context.Background(), db, []string{"a", "k"}, noop, txlock.WithLocker(l), txlock.WithLockWait(200*time.Millisecond))
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("err = %v, want ErrLockBusy", err)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55P03" {
		t.Errorf("want Postgres's lock_timeout (55P03) in the chain, got %v", err)
	}
}

func TestWaitSucceedsWhenReleased(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	release := holdInOtherTx(t, db, l, "k")
	time.AfterFunc(100*time.Millisecond, release)
	var timeout string
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SHOW lock_timeout").Scan(&timeout)
	}, txlock.WithLocker(l), txlock.WithLockWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if timeout != "0" {
		t.Errorf("lock_timeout in the body = %q, want the session's own (0): the wait's setting leaked", timeout)
	}
}

func TestCancelWhileWaiting(t *testing.T) {
	testenv.CheckLeaks(t) // first, so it runs after the pool is closed
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	holdInOtherTx(t, db, l, "k")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := txlock.Run(ctx, db, []string{"k"}, noop, txlock.WithLocker(l))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestAnyKey(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New()
	keys := []string{"\x00", "'; DROP TABLE x; --", strings.Repeat("k", 100_000), "\xff\xfe", "名前", "a b\r\n"}
	err := txlock.Run(context.Background(), db, keys, func(ctx context.Context, tx *sql.Tx) error {
		var n int
		err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`).Scan(&n)
		if err == nil && n != len(keys) {
			t.Errorf("holding %d advisory locks, want %d", n, len(keys))
		}
		return err
	}, txlock.WithLocker(l))
	if err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.QueryRow(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d advisory locks survived the transaction", left)
	}
}

func TestIDIsStableAndNamespaced(t *testing.T) {
	// Pinned: a change here would let two versions of an application
	// running side by side take different locks for one key.
	if got, want := advisorylock.ID("", "name:ann"), advisorylock.ID("", "name:ann"); got != want {
		t.Fatal("ID is not deterministic")
	}
	if advisorylock.ID("a", "k") == advisorylock.ID("b", "k") {
		t.Error("namespaces do not separate keys")
	}
	if advisorylock.ID("ab", "c") == advisorylock.ID("a", "bc") {
		t.Error("namespace and key run together")
	}
	if advisorylock.ID("a", "b\x00c") == advisorylock.ID("a\x00b", "c") {
		t.Error("a NUL byte lets namespace and key run together")
	}
	// SHA-256(uint64be(len(ns)) || ns || key)[:8] as a signed big-endian
	// integer, computed independently (Python's hashlib and struct).
	for _, p := range []struct {
		ns   string
		want int64
	}{
		{"", -617846107189374553},
		{"app", -4542531295208450894},
	} {
		if got := advisorylock.ID(p.ns, "name:ann"); got != p.want {
			t.Errorf("ID(%q, \"name:ann\") = %d, want %d (the hash must never change)", p.ns, got, p.want)
		}
	}
}

// TestMutualExclusion: 12 goroutines increment a counter with a read then a
// write at READ COMMITTED, where only the advisory lock prevents lost updates.
func TestMutualExclusion(t *testing.T) {
	db := testenv.Postgres(t)
	if _, err := db.Exec("CREATE TABLE counter (n int NOT NULL); INSERT INTO counter VALUES (0)"); err != nil {
		t.Fatal(err)
	}
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	const workers, each = 12, 10
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				err := txlock.Run(context.Background(), db, []string{"counter"}, func(ctx context.Context, tx *sql.Tx) error {
					var n int
					if err := tx.QueryRowContext(ctx, "SELECT n FROM counter").Scan(&n); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, "UPDATE counter SET n = $1", n+1)
					return err
				}, txlock.WithLocker(l))
				if err != nil {
					failed.Add(1)
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var n int
	if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != workers*each {
		t.Fatalf("counter = %d, want %d: updates were lost", n, workers*each)
	}
}

func TestNoTransaction(t *testing.T) {
	_, err := advisorylock.New().Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
	if !errors.Is(err, txlock.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	var nilLocker *advisorylock.Locker
	if _, err := nilLocker.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}}); !errors.Is(err, txlock.ErrInvalid) {
		t.Fatalf("nil locker: %v", err)
	}
}

// The unit tests below pin the statements sent, with go-sqlmock.

func mockTx(t *testing.T) (*sql.Tx, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New(sqlmock.QueryMatcherOption(sqlmock.QueryMatcherRegexp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Error(err)
		}
		db.Close()
	})
	mock.ExpectBegin()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mock.ExpectRollback(); _ = tx.Rollback() })
	return tx, mock
}

func TestUncontendedIsOneRoundTrip(t *testing.T) {
	tx, mock := mockTx(t)
	mock.ExpectQuery(`pg_try_advisory_xact_lock\(\$1\)`).
		WithArgs(advisorylock.ID("", "k")).
		WillReturnRows(tryRows(0, "read committed"))
	if _, err := advisorylock.New().Acquire(context.Background(), txlock.Request{Keys: []string{"k"}, Stage: txlock.InTx, Conn: inTx{tx}}); err != nil {
		t.Fatal(err)
	}
}

func TestManyKeysOneRoundTripInOrder(t *testing.T) {
	tx, mock := mockTx(t)
	ids := []int64{advisorylock.ID("", "a"), advisorylock.ID("", "b"), advisorylock.ID("", "c")}
	sortInts(ids)
	want := "{" + itoa(ids[0]) + "," + itoa(ids[1]) + "," + itoa(ids[2]) + "}"
	mock.ExpectQuery(`WITH ORDINALITY`).WithArgs(want).
		WillReturnRows(tryRows(0, "read committed"))
	if _, err := advisorylock.New().Acquire(context.Background(), txlock.Request{Keys: []string{"c", "a", "b"}, Stage: txlock.InTx, Conn: inTx{tx}}); err != nil {
		t.Fatal(err)
	}
}

func TestBusyThenWaitWithLockTimeout(t *testing.T) {
	tx, mock := mockTx(t)
	id := advisorylock.ID("", "k")
	mock.ExpectQuery(`pg_try_advisory_xact_lock`).WillReturnRows(tryRows(1, "read committed"))
	mock.ExpectQuery(`SELECT set_config\('lock_timeout', old, true\), current_setting\('transaction_isolation'\) FROM`).
		WithArgs("{"+itoa(id)+"}", sqlmock.AnyArg()).
		WillReturnError(&pgconn.PgError{Code: "55P03", Message: "canceling statement due to lock timeout"})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := advisorylock.New().Acquire(ctx, txlock.Request{Keys: []string{"k"}, Stage: txlock.InTx, Conn: inTx{tx}})
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("err = %v, want ErrLockBusy", err)
	}
}

func TestBusyTryOnce(t *testing.T) {
	tx, mock := mockTx(t)
	mock.ExpectQuery(`pg_try_advisory_xact_lock`).WillReturnRows(tryRows(1, "read committed"))
	_, err := advisorylock.New().Acquire(context.Background(), txlock.Request{Keys: []string{"k"}, Stage: txlock.InTx, Conn: inTx{tx}, TryOnce: true})
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("err = %v, want ErrLockBusy", err)
	}
}

func tryRows(firstBusy int, isolation string) *sqlmock.Rows {
	return sqlmock.NewRows([]string{"busy", "isolation"}).AddRow(firstBusy, isolation)
}

func TestStaleRepeatableReadSnapshotIsRetried(t *testing.T) {
	tx, mock := mockTx(t)
	mock.ExpectQuery(`pg_try_advisory_xact_lock`).WillReturnRows(tryRows(0, "repeatable read"))
	mock.ExpectQuery(`pg_snapshot_xip`).WillReturnRows(sqlmock.NewRows([]string{"stale"}).AddRow(true))
	_, err := advisorylock.New().Acquire(context.Background(), txlock.Request{Keys: []string{"k"}, Stage: txlock.InTx, Conn: inTx{tx}})
	if code, _ := sqladapter.SQLState(err); code != "40001" || sqladapter.Classify(err, sqladapter.InTx) != sqladapter.Retryable {
		t.Fatalf("err = %v, want a serialization failure (40001) that Run retries", err)
	}
	if errors.Is(err, txlock.ErrLockLost) {
		t.Fatalf("err = %v: no lock was lost", err)
	}
}

func sortInts(xs []int64) { slices.Sort(xs) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestRepeatableReadSeesPreviousHolder: at REPEATABLE READ the snapshot is
// fixed by the lock statement itself, so a waiter's snapshot predates the
// holder's commit. Without the stale-snapshot check this test inserts
// duplicates; with it, Run retries and every later body sees the row.
func TestRepeatableReadSeesPreviousHolder(t *testing.T) {
	db := testenv.Postgres(t)
	if _, err := db.Exec("CREATE TABLE names (name text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	rr := txlock.WithTxOptions(&sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	const workers = 12
	var wg sync.WaitGroup
	var inserted atomic.Int32
	start := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := txlock.Run(context.Background(), db, []string{"name:ann"}, func(ctx context.Context, tx *sql.Tx) error {
				var n int
				if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM names WHERE name = 'ann'").Scan(&n); err != nil {
					return err
				}
				if n > 0 {
					return nil
				}
				time.Sleep(2 * time.Millisecond)
				if _, err := tx.ExecContext(ctx, "INSERT INTO names VALUES ('ann')"); err != nil {
					return err
				}
				return txlock.AfterCommit(ctx, func() { inserted.Add(1) })
			}, txlock.WithLocker(l), rr, txlock.WithMaxAttempts(100))
			if err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM names").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 || inserted.Load() != 1 {
		t.Fatalf("%d rows, %d acknowledged inserts; want 1 and 1", n, inserted.Load())
	}
}

// inTx runs a Locker's statements in a database/sql transaction, as Run
// does for the lockers of stage txlock.InTx.
type inTx struct{ tx *sql.Tx }

func (q inTx) QueryRow(ctx context.Context, query string, args ...any) txlock.Row {
	return q.tx.QueryRowContext(ctx, query, args...)
}

// TestRecentlyBusyKeyWaitsAtOnce: a key this Locker found busy a moment
// ago is waited for with one statement, without a try first; a caller that
// does not wait still tries; and a REPEATABLE READ snapshot is checked,
// since whether the wait was needed is not known.
func TestRecentlyBusyKeyWaitsAtOnce(t *testing.T) {
	const wait = `SELECT set_config\('lock_timeout', old, true\), current_setting\('transaction_isolation'\) FROM`
	waitRows := func(isolation string) *sqlmock.Rows {
		return sqlmock.NewRows([]string{"set_config", "isolation"}).AddRow("0", isolation)
	}
	l := advisorylock.New()
	id := advisorylock.ID("", "k")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	acquire := func(tx *sql.Tx, try bool) error {
		_, err := l.Acquire(ctx, txlock.Request{Keys: []string{"k"}, Stage: txlock.InTx, Conn: inTx{tx}, TryOnce: try})
		return err
	}

	tx, mock := mockTx(t)
	mock.ExpectQuery(`pg_try_advisory_xact_lock`).WillReturnRows(tryRows(1, "read committed"))
	mock.ExpectQuery(wait).WithArgs("{"+itoa(id)+"}", sqlmock.AnyArg()).WillReturnRows(waitRows("read committed"))
	if err := acquire(tx, false); err != nil {
		t.Fatalf("busy, then waited: %v", err)
	}

	tx, mock = mockTx(t)
	mock.ExpectQuery(wait).WithArgs("{"+itoa(id)+"}", sqlmock.AnyArg()).WillReturnRows(waitRows("read committed"))
	if err := acquire(tx, false); err != nil {
		t.Fatalf("recently busy: %v", err)
	}

	tx, mock = mockTx(t)
	mock.ExpectQuery(`pg_try_advisory_xact_lock`).WillReturnRows(tryRows(0, "read committed"))
	if err := acquire(tx, true); err != nil {
		t.Fatalf("recently busy, try once: %v", err)
	}

	tx, mock = mockTx(t)
	mock.ExpectQuery(wait).WillReturnRows(waitRows("repeatable read"))
	mock.ExpectQuery(`pg_snapshot_xip`).WillReturnRows(sqlmock.NewRows([]string{"stale"}).AddRow(false))
	if err := acquire(tx, false); err != nil {
		t.Fatalf("recently busy at repeatable read, snapshot fresh: %v", err)
	}
}
