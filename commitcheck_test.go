package txlock_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/seam"
	"github.com/txlock/txlock/internal/testenv"
)

// These tests make COMMIT's outcome unknown for real, in two ways:
//
//   - a proxy between Run and Postgres forwards COMMIT, swallows the
//     answer and cuts the connection: Postgres committed, Run saw EOF;
//   - a deferred constraint trigger sleeps at COMMIT and the backend is
//     terminated (pg_terminate_backend) during the sleep: Postgres aborted,
//     Run saw 57P01.
//
// With the transaction id recorded (CommitCheckAlways) Run asks Postgres
// and gets it right both times; without it the answer is
// ErrAmbiguousCommit.

// commitEvents records the Event of every attempt.
type commitEvents struct{ evs []txlock.Event }

func (c *commitEvents) option() txlock.Option {
	return txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
		c.evs = append(c.evs, e)
	}})
}

func rowsOf(t *testing.T, db *sql.DB) []int {
	t.Helper()
	rows, err := db.Query("SELECT attempt FROM things ORDER BY attempt")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var a int
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func insertAttempt(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO things (attempt) VALUES ($1)", txlock.Attempt(ctx))
	return err
}

// TestUnknownCommitFoundCommitted: the connection is cut after COMMIT was
// sent and applied. Run looks the transaction up, finds it committed,
// succeeds without a retry, and runs the after-commit callbacks.
func TestUnknownCommitFoundCommitted(t *testing.T) {
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	db := testenv.OpenURL(t, u)
	exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
	var ev commitEvents
	var after atomic.Int32
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if err := insertAttempt(ctx, tx); err != nil {
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
	if got := rowsOf(t, db); len(got) != 1 || got[0] != 1 {
		t.Fatalf("rows %v, want the first attempt's only", got)
	}
	if after.Load() != 1 {
		t.Errorf("after-commit callbacks ran %d times, want 1", after.Load())
	}
	if len(ev.evs) != 1 || ev.evs[0].Commit != txlock.CommitFoundCommitted {
		t.Errorf("events %+v, want one attempt with Commit = found_committed", ev.evs)
	}
}

// TestUnknownCommitWithoutCheckIsAmbiguous: the same cut without a
// recorded transaction id: Run cannot tell, and says so.
func TestUnknownCommitWithoutCheckIsAmbiguous(t *testing.T) {
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	db := testenv.OpenURL(t, u)
	exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
	calls := 0
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		calls++
		if calls == 1 {
			proxy.CutNextCommit()
		}
		return insertAttempt(ctx, tx)
	}, txlock.WithCommitCheck(txlock.CommitCheckNever))
	if !errors.Is(err, txlock.ErrAmbiguousCommit) {
		t.Fatalf("Run = %v, want ErrAmbiguousCommit", err)
	}
	if calls != 1 {
		t.Errorf("body ran %d times: an unknown COMMIT must not be retried", calls)
	}
	if got := rowsOf(t, db); len(got) != 1 {
		t.Errorf("rows %v: the proxy let COMMIT through, so it committed", got)
	}
}

// sleepAtCommit adds a deferred constraint trigger on things that sleeps
// at COMMIT when the transaction set txlock.sleep_at_commit.
func sleepAtCommit(t *testing.T, db *sql.DB) {
	exec(t, db, `CREATE FUNCTION sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF current_setting('txlock.sleep_at_commit', true) = 'on' THEN
				PERFORM pg_sleep(30);
			END IF;
			RETURN NULL;
		END $$`,
		`CREATE CONSTRAINT TRIGGER things_sleep AFTER INSERT ON things
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sleep_at_commit()`)
}

// terminateInCommit waits for backend pid to sleep in COMMIT's deferred
// trigger, then terminates it.
func terminateInCommit(t *testing.T, admin *sql.DB, pid int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var sleeping bool
		err := admin.QueryRow(`SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE pid = $1 AND wait_event = 'PgSleep' AND lower(query) LIKE '%commit%')`, pid).Scan(&sleeping)
		if err != nil {
			t.Error(err)
			return
		}
		if sleeping {
			if _, err := admin.Exec("SELECT pg_terminate_backend($1)", pid); err != nil {
				t.Error(err)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Error("the backend never slept in COMMIT")
}

// TestUnknownCommitFoundAborted: the backend is terminated while COMMIT
// runs its deferred trigger. Run looks the transaction up, finds it
// aborted, and runs it again; the second attempt commits.
func TestUnknownCommitFoundAborted(t *testing.T) {
	for _, check := range []struct {
		name string
		cc   txlock.CommitCheck
	}{{"always", txlock.CommitCheckAlways}, {"never", txlock.CommitCheckNever}} {
		t.Run(check.name, func(t *testing.T) {
			db := testenv.Postgres(t)
			exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
			sleepAtCommit(t, db)
			var ev commitEvents
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				if err := insertAttempt(ctx, tx); err != nil {
					return err
				}
				if txlock.Attempt(ctx) != 1 {
					return nil
				}
				var pid int
				if err := tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, "SET LOCAL txlock.sleep_at_commit = 'on'"); err != nil {
					return err
				}
				go terminateInCommit(t, db, pid)
				return nil
			}, txlock.WithCommitCheck(check.cc), fastRetry, ev.option())
			if check.cc == txlock.CommitCheckNever {
				var pe *pgconn.PgError
				if !errors.Is(err, txlock.ErrAmbiguousCommit) || !errors.As(err, &pe) || pe.Code != "57P01" {
					t.Fatalf("Run = %v, want ErrAmbiguousCommit with the driver's 57P01", err)
				}
				if got := rowsOf(t, db); len(got) != 0 {
					t.Fatalf("rows %v: the terminated COMMIT committed", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run = %v, want success on the second attempt", err)
			}
			if got := rowsOf(t, db); len(got) != 1 || got[0] != 2 {
				t.Fatalf("rows %v, want the second attempt's only", got)
			}
			if len(ev.evs) != 2 || ev.evs[0].Commit != txlock.CommitFoundAborted || ev.evs[0].Reason != "commit_aborted" {
				t.Errorf("events %+v, want attempt 1 found aborted and retried", ev.evs)
			}
		})
	}
}

// TestUnknownCommitStillInProgress: the connection is cut as soon as COMMIT
// is sent, while the server still works on it (a deferred trigger
// sleeps). Run's lookup first finds the transaction in progress and asks
// again. pgx sends a cancel request when it drops a broken connection: if
// it gets through, the COMMIT is cancelled and Run finds it aborted and
// runs the transaction again; if the network drops it too, the COMMIT
// completes and Run finds it committed. Postgres ignores a cancel request
// that reaches a backend still waiting for its next command, so the proxy
// holds the request for half a second (see CutNextCommitEarly): on a loaded
// machine the backend may not have read the COMMIT yet when pgx, which
// sends it as soon as the connection breaks, gets it there. Where the
// request gets through, the trigger sleeps 4 s, the time it has to arrive
// (a new connection, for which Postgres starts a process; a cancelled
// sleep ends at once). That stays within Run's 5 s lookup budget, so that a
// request that never arrives shows as the COMMIT found committed, not as a
// hang.
func TestUnknownCommitStillInProgress(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dropCancel bool
		sleep      string // seconds the COMMIT works
		want       txlock.CommitOutcome
		rows       []int
	}{
		{"cancel request gets through", false, "4", txlock.CommitFoundAborted, []int{2}},
		{"cancel request lost", true, "1.5", txlock.CommitFoundCommitted, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
			if tc.dropCancel {
				proxy.DropCancelRequests()
			}
			db := testenv.OpenURL(t, u)
			exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
			sleepAtCommit(t, db)
			exec(t, db, `CREATE OR REPLACE FUNCTION sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN
					IF current_setting('txlock.sleep_at_commit', true) = 'on' THEN
						PERFORM pg_sleep(`+tc.sleep+`);
					END IF;
					RETURN NULL;
				END $$`)
			var ev commitEvents
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				if err := insertAttempt(ctx, tx); err != nil {
					return err
				}
				if txlock.Attempt(ctx) == 1 {
					if _, err := tx.ExecContext(ctx, "SET LOCAL txlock.sleep_at_commit = 'on'"); err != nil {
						return err
					}
					proxy.CutNextCommitEarly()
				}
				return nil
			}, txlock.WithCommitCheck(txlock.CommitCheckAlways), ev.option())
			if err != nil {
				t.Fatalf("Run = %v, want success", err)
			}
			if proxy.Cuts() != 1 {
				t.Fatalf("the proxy cut %d connections, want 1", proxy.Cuts())
			}
			if got := rowsOf(t, db); !slices.Equal(got, tc.rows) {
				t.Fatalf("rows %v, want %v; events %+v", got, tc.rows, ev.evs)
			}
			if len(ev.evs) == 0 || ev.evs[0].Commit != tc.want {
				t.Errorf("events %+v, want attempt 1 %v", ev.evs, tc.want)
			}
		})
	}
}

// TestCommitCheckAutoAfterAFault: by default Run records transaction ids
// only in the minutes after this process saw a fault. A backend
// terminated under a body is one; the next Run's unknown COMMIT is then
// looked up and found committed.
func TestCommitCheckAutoAfterAFault(t *testing.T) {
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	db := testenv.OpenURL(t, u)
	exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
	err := txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			return terminateOwnBackend(ctx, db, tx)
		}
		return nil
	}, fastRetry)
	if err != nil {
		t.Fatalf("Run across a terminated backend: %v", err)
	}
	var ev commitEvents
	err = txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			proxy.CutNextCommit()
		}
		return insertAttempt(ctx, tx)
	}, ev.option()) // the default: CommitCheckAuto
	if err != nil {
		t.Fatalf("Run = %v, want success: looked up after the fault", err)
	}
	if got := rowsOf(t, db); len(got) != 1 || got[0] != 1 {
		t.Fatalf("rows %v, want the first attempt's only", got)
	}
	if len(ev.evs) != 1 || ev.evs[0].Commit != txlock.CommitFoundCommitted {
		t.Errorf("events %+v, want one attempt found committed", ev.evs)
	}
}

// TestCommitCheckWithAPoolOfOne: finding out whether the database can be
// asked takes a connection of the pool, once; with a pool of one, that must
// happen before the attempt holds the only connection, or the question
// waits for the answer's own transaction.
func TestCommitCheckWithAPoolOfOne(t *testing.T) {
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	db := testenv.OpenURL(t, u)
	db.SetMaxOpenConns(1)
	exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
	var ev commitEvents
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			proxy.CutNextCommit()
		}
		return insertAttempt(ctx, tx)
	}, txlock.WithCommitCheck(txlock.CommitCheckAlways), ev.option())
	if err != nil {
		t.Fatalf("Run = %v, want success", err)
	}
	if len(ev.evs) != 1 || ev.evs[0].Commit != txlock.CommitFoundCommitted {
		t.Errorf("events %+v, want one attempt found committed", ev.evs)
	}
}

// TestUnknownCommitWithoutAnID: a body that only sends a notification has
// no transaction id before COMMIT (Postgres assigns it at COMMIT), so an
// unknown outcome cannot be looked up, and must not be taken for an abort:
// retrying would notify twice.
func TestUnknownCommitWithoutAnID(t *testing.T) {
	proxy, u := testenv.StartPGProxy(t, testenv.PostgresURL(t))
	db := testenv.OpenURL(t, u)
	calls := 0
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		calls++
		if calls == 1 {
			proxy.CutNextCommit()
		}
		_, err := tx.ExecContext(ctx, "SELECT pg_notify('txlock_test', 'hello')")
		return err
	}, txlock.WithCommitCheck(txlock.CommitCheckAlways))
	if !errors.Is(err, txlock.ErrAmbiguousCommit) || calls != 1 {
		t.Fatalf("Run = %v after %d calls, want ErrAmbiguousCommit after one", err, calls)
	}
}

// cancelBeforeCommit is a fault that cancels the run's context just
// before COMMIT would be sent.
type cancelBeforeCommit struct{ cancel context.CancelFunc }

func (cancelBeforeCommit) BodyStarted(context.Context, int) error { return nil }

func (f cancelBeforeCommit) Commit(_ context.Context, _ int, commit func() error) error {
	f.cancel()
	return commit()
}

// TestCancelledJustBeforeCommitIsNotAmbiguous: a context that ends between
// the last look before COMMIT and COMMIT itself makes database/sql (and
// pgx) refuse to send it. That is the caller's cancellation, nothing
// committed, not an unknown outcome.
func TestCancelledJustBeforeCommitIsNotAmbiguous(t *testing.T) {
	db := testenv.Postgres(t)
	exec(t, db, "CREATE TABLE things (attempt int NOT NULL)")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := txlock.Run(ctx, db, []string{"k"}, insertAttempt,
		seam.Option(cancelBeforeCommit{cancel}).(txlock.Option), txlock.WithCommitCheck(txlock.CommitCheckNever))
	if !errors.Is(err, context.Canceled) || errors.Is(err, txlock.ErrAmbiguousCommit) {
		t.Fatalf("Run = %v, want the cancellation, not an unknown outcome", err)
	}
	if got := rowsOf(t, db); len(got) != 0 {
		t.Fatalf("rows %v: committed", got)
	}
}
