package txlocktest_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/txlocktest"
)

func events(evs *[]txlock.Event) txlock.Option {
	var mu sync.Mutex
	return txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
		mu.Lock()
		*evs = append(*evs, e)
		mu.Unlock()
	}})
}

func insertAttempt(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO things (attempt) VALUES ($1)`, txlock.Attempt(ctx))
	return err
}

func attemptsStored(t *testing.T, db *sql.DB) []int {
	t.Helper()
	rows, err := db.Query(`SELECT attempt FROM things ORDER BY attempt`)
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

func postgres(t *testing.T) *sql.DB {
	db := testenv.Postgres(t)
	if _, err := db.Exec(`CREATE TABLE things (attempt int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return db
}

// On a real database, each helper does to the transaction what the fault
// it stands for does: a forced conflict or a lost lease stores nothing of
// the attempt; an unknown COMMIT stores it or not, as asked, and Run's
// lookup finds out which.
func TestFaultsOnPostgres(t *testing.T) {
	always := txlock.WithCommitCheck(txlock.CommitCheckAlways)
	for _, tc := range []struct {
		name   string
		opts   []txlock.Option
		stored []int
		reason string
		commit txlock.CommitOutcome
	}{
		{"conflict on 1", []txlock.Option{txlocktest.ConflictOn(1)}, []int{2}, "serialization_failure", txlock.CommitKnown},
		{"conflict on 1 and 2", []txlock.Option{txlocktest.ConflictOn(1, 2)}, []int{3}, "serialization_failure", txlock.CommitKnown},
		{"lease lost on 1", []txlock.Option{txlocktest.LoseLeaseOn(1)}, []int{2}, "lock_lost", txlock.CommitKnown},
		{"unknown commit, stored, looked up", []txlock.Option{txlocktest.UnknownCommitOn(true, 1), always}, []int{1}, "", txlock.CommitFoundCommitted},
		{"unknown commit, not stored, looked up", []txlock.Option{txlocktest.UnknownCommitOn(false, 1), always}, []int{2}, "commit_aborted", txlock.CommitFoundAborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := postgres(t)
			var evs []txlock.Event
			err := txlock.Run(context.Background(), db, []string{"k"}, insertAttempt, append(tc.opts, events(&evs))...)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := attemptsStored(t, db); !equal(got, tc.stored) {
				t.Fatalf("stored attempts %v, want %v", got, tc.stored)
			}
			if evs[0].Reason != tc.reason || evs[0].Commit != tc.commit {
				t.Errorf("attempt 1: reason %q, commit %v; want %q, %v", evs[0].Reason, evs[0].Commit, tc.reason, tc.commit)
			}
		})
	}
	t.Run("unknown commit without a lookup", func(t *testing.T) {
		db := postgres(t)
		err := txlock.Run(context.Background(), db, []string{"k"}, insertAttempt,
			txlocktest.UnknownCommitOn(false, 1), txlock.WithCommitCheck(txlock.CommitCheckNever))
		if !errors.Is(err, txlock.ErrAmbiguousCommit) {
			t.Fatalf("Run = %v, want ErrAmbiguousCommit", err)
		}
		if got := attemptsStored(t, db); len(got) != 0 {
			t.Fatalf("stored %v", got)
		}
	})
	t.Run("conflicts on every attempt", func(t *testing.T) {
		db := postgres(t)
		err := txlock.Run(context.Background(), db, []string{"k"}, insertAttempt,
			txlocktest.ConflictOn(1, 2, 3), txlock.WithMaxAttempts(3))
		var ce *txlocktest.ConflictError
		if !errors.Is(err, txlock.ErrTooManyAttempts) || !errors.As(err, &ce) || ce.Attempt != 3 {
			t.Fatalf("Run = %v, want ErrTooManyAttempts wrapping attempt 3's conflict", err)
		}
	})
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The Locker excludes concurrent Runs, records their keys, frees them all,
// and Lose stops a body mid-way.
func TestLocker(t *testing.T) {
	db := postgres(t)
	l := txlocktest.NewLocker()
	var wg sync.WaitGroup
	var mu sync.Mutex
	inside := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				mu.Lock()
				inside++
				n := inside
				mu.Unlock()
				defer func() { mu.Lock(); inside--; mu.Unlock() }()
				if n > 1 {
					t.Error("two Runs inside the lock at once")
				}
				return insertAttempt(ctx, tx)
			}, txlock.WithLocker(l))
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := len(l.Taken()); got != 8 {
		t.Errorf("Taken has %d keys, want 8", got)
	}
	if h := l.Held(); len(h) != 0 {
		t.Errorf("still held: %v", h)
	}

	var evs []txlock.Event
	err := txlock.Run(context.Background(), db, []string{"lose"}, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			if !l.Lose("lose") {
				t.Error("Lose: not held")
			}
			<-ctx.Done()
			return context.Cause(ctx)
		}
		return nil
	}, txlock.WithLocker(l), events(&evs))
	if err != nil || len(evs) != 2 || evs[0].Reason != "lock_lost" {
		t.Fatalf("Run = %v, events %+v; want a lost lease on attempt 1, then success", err, evs)
	}
	if l.Lose("nothing") {
		t.Error("Lose of a key nobody holds reported true")
	}
}

// TestLoseLeaseOnCancelsTheBody: even with the in-process locker, whose
// leases cannot really be lost, and a context that cannot end, the body of
// the chosen attempt sees its context end with a cause wrapping
// txlock.ErrLockLost.
func TestLoseLeaseOnCancelsTheBody(t *testing.T) {
	db := postgres(t)
	var seen error
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			<-ctx.Done()
			seen = context.Cause(ctx)
			return seen
		}
		return insertAttempt(ctx, tx)
	}, txlocktest.LoseLeaseOn(1))
	if err != nil || !errors.Is(seen, txlock.ErrLockLost) {
		t.Fatalf("Run = %v, cause seen by attempt 1 = %v; want success and a cause wrapping ErrLockLost", err, seen)
	}
}
