package sqlc_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/examples/sqlc"
	"github.com/txlock/txlock/examples/sqlc/dbpgx"
	"github.com/txlock/txlock/examples/sqlc/dbsql"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/migrations"
)

// The transactions the bodies get are what sqlc's New takes, in each
// flavour; so are the pool and the *sql.DB, outside a transaction.
var (
	_ dbsql.DBTX = (*sql.Tx)(nil)
	_ dbsql.DBTX = (*sql.DB)(nil)
	_ dbpgx.DBTX = (pgx.Tx)(nil)
	_ dbpgx.DBTX = (*pgxpool.Pool)(nil)
)

// setup migrates a private schema (the migrations package's
// name_reservations table) and opens it through database/sql and through
// pgxpool. The pool checks, when t ends, that no connection is still
// acquired.
func setup(t *testing.T) (*sql.DB, *pgxpool.Pool) {
	t.Helper()
	u := testenv.PostgresURL(t)
	db := testenv.OpenURL(t, u)
	if err := migrations.Up(context.Background(), db, migrations.Postgres); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for pool.Stat().AcquiredConns() != 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := pool.Stat().AcquiredConns(); n != 0 {
			t.Errorf("leak: %d pool connections still acquired", n)
		}
		pool.Close()
	})
	return db, pool
}

// flavour reserves a name through one of the two repository packages and
// reports the owner it stored.
type flavour struct {
	name    string
	reserve func(ctx context.Context, name, owner string, opts ...txlock.Option) (storedOwner string, err error)
}

func flavours(db *sql.DB, pool *pgxpool.Pool) []flavour {
	expires := func() time.Time { return time.Now().Add(time.Hour) }
	return []flavour{
		{"database/sql", func(ctx context.Context, name, owner string, opts ...txlock.Option) (string, error) {
			r, err := sqlc.ReserveSQL(ctx, db, name, owner, expires(), opts...)
			return r.Owner, err
		}},
		{"pgx", func(ctx context.Context, name, owner string, opts ...txlock.Option) (string, error) {
			r, err := sqlc.ReservePgx(ctx, pool, name, owner, expires(), opts...)
			return r.Owner, err
		}},
	}
}

// TestCheckThenInsert: through each flavour, a free name is reserved, a
// second reservation of it is refused, through either flavour, and the
// name is reusable once its reservation is expired.
func TestCheckThenInsert(t *testing.T) {
	db, pool := setup(t)
	ctx := context.Background()
	fs := flavours(db, pool)
	for i, f := range fs {
		t.Run(f.name, func(t *testing.T) {
			name := "ann-" + f.name
			owner, err := f.reserve(ctx, name, "first")
			if err != nil || owner != "first" {
				t.Fatalf("reserve a free name: owner %q, err %v", owner, err)
			}
			for _, g := range fs {
				if _, err := g.reserve(ctx, name, "second"); !errors.Is(err, sqlc.ErrTaken) {
					t.Fatalf("reserve a taken name through %s: err %v, want ErrTaken", g.name, err)
				}
			}
			active, err := dbsql.New(db).ActiveReservations(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if len(active) != 1 || active[0].Owner != "first" || !active[0].ExpiresAt.After(time.Now()) {
				t.Fatalf("active reservations %+v, want first's only", active)
			}
			// Expire it outside any Run, through the other flavour's
			// queries on the plain pool or *sql.DB.
			if i == 0 {
				err = dbpgx.New(pool).ExpireReservation(ctx, dbpgx.ExpireReservationParams{Name: name, Owner: "first"})
			} else {
				err = dbsql.New(db).ExpireReservation(ctx, dbsql.ExpireReservationParams{Name: name, Owner: "first"})
			}
			if err != nil {
				t.Fatal(err)
			}
			if owner, err := f.reserve(ctx, name, "third"); err != nil || owner != "third" {
				t.Fatalf("reserve an expired name: owner %q, err %v", owner, err)
			}
			still, err := dbpgx.New(pool).ActiveReservations(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if len(still) != 1 || still[0].Owner != "third" || !still[0].ExpiresAt.Valid {
				t.Fatalf("active reservations %+v, want third's only", still)
			}
		})
	}
}

// TestFlavoursRace: 16 goroutines, half through each flavour, reserve the
// same name at once under the same lock: one wins, every other is told the
// name is taken, and one reservation is active. With the in-process
// default locker and with advisory locks, at READ COMMITTED, where only
// the lock keeps the check and the insert together.
func TestFlavoursRace(t *testing.T) {
	db, pool := setup(t)
	fs := flavours(db, pool)
	for _, tc := range []struct {
		name string
		opts []txlock.Option
	}{
		{"default locker", nil},
		{"advisory", []txlock.Option{txlock.WithLocker(advisorylock.New(advisorylock.WithNamespace(t.Name())))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "race-" + tc.name
			opts := append(tc.opts, txlock.WithTxOptions(&sql.TxOptions{Isolation: sql.LevelReadCommitted}))
			const workers = 16
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make([]error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, errs[w] = fs[w%2].reserve(context.Background(), name, fmt.Sprintf("w%d", w), opts...)
				}()
			}
			close(start)
			wg.Wait()
			won, taken := 0, 0
			for w, err := range errs {
				switch {
				case err == nil:
					won++
				case errors.Is(err, sqlc.ErrTaken):
					taken++
				default:
					t.Errorf("worker %d (%s): %v", w, fs[w%2].name, err)
				}
			}
			active, err := dbpgx.New(pool).ActiveReservations(context.Background(), name)
			if err != nil {
				t.Fatal(err)
			}
			if won != 1 || taken != workers-1 || len(active) != 1 {
				t.Fatalf("won %d, refused %d, active reservations %d; want 1, %d, 1", won, taken, len(active), workers-1)
			}
		})
	}
}
