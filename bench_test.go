package txlock_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// BenchmarkOverhead compares an uncontended check-then-insert run bare
// (BEGIN, body, COMMIT by hand) with the same through Run and the
// in-process locker, on the real Postgres, 8 goroutines at a time:
//
//	go test -run '^$' -bench Overhead -benchtime 5s .
func BenchmarkOverhead(b *testing.B) {
	db := testenv.Postgres(b)
	if _, err := db.Exec(`CREATE TABLE names (name text NOT NULL, expires_at timestamptz NOT NULL); CREATE INDEX ON names (name, expires_at)`); err != nil {
		b.Fatal(err)
	}
	db.SetMaxIdleConns(16)
	var seq atomic.Int64
	body := func(ctx context.Context, tx *sql.Tx, name string) error {
		var active bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM names WHERE name = $1 AND expires_at > now())`, name).Scan(&active); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO names VALUES ($1, now() + interval '1 hour')`, name)
		return err
	}
	bare := func(ctx context.Context, name string) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := body(ctx, tx, name); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	local := txlock.WithLocker(txlock.NewLocalLocker())
	withRun := func(ctx context.Context, name string) error {
		return txlock.Run(ctx, db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
			return body(ctx, tx, name)
		}, local)
	}
	for _, c := range []struct {
		name string
		f    func(context.Context, string) error
	}{{"bare", bare}, {"run-local", withRun}, {"bare", bare}, {"run-local", withRun}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetParallelism(4) // 8 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.f(context.Background(), fmt.Sprint("n", seq.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
