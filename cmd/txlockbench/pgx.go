package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlockpgx"
)

// The pgx rows run the same workload as their database/sql counterparts
// through txlockpgx.Run on a *pgxpool.Pool instead of txlock.Run on a
// *sql.DB (pgx's database/sql driver): same locker, same options, same
// statements, same pool warm-up, so that the rows differ only in the path.
//
//   - local-pgx: LocalLocker, as local; uncontended scenario only.

const localPgx = "local-pgx"

// pgxMode reports whether mode runs through txlockpgx.
func pgxMode(mode string) bool { return mode == localPgx }

// runPgxJob is runJob for the pgx modes.
func runPgxJob(ctx context.Context, j job) (report, error) {
	if j.HotWorkers > 0 || j.Pool > 0 {
		return report{}, fmt.Errorf("mode %s runs in the uncontended scenario only", j.Mode)
	}
	cfg, err := pgxpool.ParseConfig(j.DB)
	if err != nil {
		return report{}, err
	}
	// As the database/sql rows: as many connections as workers, kept.
	cfg.MaxConns = int32(max(j.ColdWorkers, 1))
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return report{}, err
	}
	defer pool.Close()
	lockOpts := []txlock.Option{txlock.WithLocker(txlock.NewLocalLocker())}
	// Open a connection for every worker, as runJob does, so that
	// connection set-up is not measured.
	held := make([]*pgxpool.Conn, 0, j.ColdWorkers)
	for range j.ColdWorkers {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return report{}, err
		}
		held = append(held, c)
	}
	for _, c := range held {
		c.Release()
	}

	time.Sleep(time.Until(j.Start))
	deadline := j.Start.Add(j.Duration)
	windowCPU := measureWindow(j, deadline)
	var mu sync.Mutex
	var r report
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := range j.ColdWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var t tally
			for time.Now().Before(deadline) {
				name := fmt.Sprintf("cold-%d-%d-%d", j.Proc, w, seq.Add(1))
				start := time.Now()
				attempts, err := onePgx(ctx, pool, lockOpts, name)
				t.record(start, deadline, attempts, err)
			}
			mu.Lock()
			r.Cold.merge(t)
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.WindowCPU = windowCPU()
	return r, nil
}

// onePgx is one for the pgx modes: a single reservation, with the options
// one gives a run, and how many attempts it took.
func onePgx(ctx context.Context, pool *pgxpool.Pool, lockOpts []txlock.Option, name string) (int, error) {
	attempts := 0
	opts := append(slices.Clip(lockOpts),
		txlock.WithMaxAttempts(1000),
		txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, _ txlock.Event) { attempts++ }}))
	err := txlockpgx.Run(ctx, pool, []string{"name:" + name}, func(ctx context.Context, tx pgx.Tx) error {
		return reservePgx(ctx, tx, name)
	}, opts...)
	return attempts, err
}

// reservePgx is reserve on a pgx.Tx: the same statements.
func reservePgx(ctx context.Context, tx pgx.Tx, name string) error {
	var active bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM bench_names WHERE name = $1 AND expires_at > now())`, name).Scan(&active); err != nil {
		return err
	}
	if active {
		return errTaken
	}
	_, err := tx.Exec(ctx, `INSERT INTO bench_names (name, owner, expires_at) VALUES ($1, 'bench', now() + interval '1 hour')`, name)
	return err
}
