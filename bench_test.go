package txlock_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
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

// BenchmarkRunCost measures what Run itself costs, CPU and allocations,
// with a database/sql driver that does no I/O: a bare transaction against
// the same transaction through Run with the in-process locker. The
// difference is Run's own price per call, which on a real database is
// paid on top of every round trip:
//
//	go test -run '^$' -bench RunCost -benchmem .
func BenchmarkRunCost(b *testing.B) {
	db := sql.OpenDB(noopConnector{})
	defer db.Close()
	ctx := context.Background()
	body := func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT")
		return err
	}
	b.Run("bare", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := body(ctx, tx); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	})
	local := txlock.WithLocker(txlock.NewLocalLocker())
	b.Run("run-local", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := txlock.Run(ctx, db, []string{"name:x"}, body, local); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// noopConnector is a database/sql driver whose connections do nothing.
type noopConnector struct{}

func (noopConnector) Connect(context.Context) (driver.Conn, error) { return noopConn{}, nil }
func (noopConnector) Driver() driver.Driver                        { return nil }

type noopConn struct{}

func (noopConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("noop: no statements") }
func (noopConn) Close() error                        { return nil }
func (noopConn) Begin() (driver.Tx, error)           { return noopConn{}, nil }
func (noopConn) Commit() error                       { return nil }
func (noopConn) Rollback() error                     { return nil }
func (noopConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}
