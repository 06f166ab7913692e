package advisorylock_test

import (
	"context"
	"database/sql"
	"sync"
	"testing"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
)

// TestSnapshotFollowsTheLockUnderContention: at REPEATABLE READ and
// SERIALIZABLE the advisory lock is taken on the connection before BEGIN,
// so every waiter's snapshot is taken after the previous holder committed.
// Sixteen workers on one key each succeed on their first attempt (a stale
// snapshot would need a retry, and WithMaxAttempts(1) would make it an
// error), and the read-then-write counter loses nothing. Afterwards no
// session still holds an advisory lock of the test.
func TestSnapshotFollowsTheLockUnderContention(t *testing.T) {
	for _, level := range []sql.IsolationLevel{sql.LevelRepeatableRead, sql.LevelSerializable} {
		t.Run(level.String(), func(t *testing.T) {
			db := testenv.Postgres(t)
			if _, err := db.Exec(`CREATE TABLE counter (n int NOT NULL); INSERT INTO counter VALUES (0)`); err != nil {
				t.Fatal(err)
			}
			ns := t.Name()
			l := advisorylock.New(advisorylock.WithNamespace(ns))
			const workers = 16
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					err := txlock.Run(context.Background(), db, []string{"counter"}, func(ctx context.Context, tx *sql.Tx) error {
						var n int
						if err := tx.QueryRowContext(ctx, "SELECT n FROM counter").Scan(&n); err != nil {
							return err
						}
						_, err := tx.ExecContext(ctx, "UPDATE counter SET n = $1", n+1)
						return err
					}, txlock.WithLocker(l), txlock.WithTxOptions(&sql.TxOptions{Isolation: level}), txlock.WithMaxAttempts(1))
					if err != nil {
						t.Errorf("Run at %v under contention: %v", level, err)
					}
				}()
			}
			close(start)
			wg.Wait()
			var n int
			if err := db.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != workers {
				t.Fatalf("counter = %d, want %d", n, workers)
			}
			id := advisorylock.ID(ns, "counter")
			if granted, waiting := advisoryLocks(t, db, []int64{id}); len(granted)+len(waiting) != 0 {
				t.Fatalf("advisory lock still held (%v) or waited for (%v) after every Run returned", granted, waiting)
			}
		})
	}
}
