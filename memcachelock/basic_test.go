package memcachelock

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

func TestUncontendedRunRoundTrips(t *testing.T) {
	testenv.CheckLeaks(t)
	m := testenv.StartMemcached(t)
	var cnt counter
	l := newLocker(t, client(&cnt, m.Addr()))
	db := counterDB(t)
	ctx := context.Background()
	// Warm up connections (dials are not round trips of the lock).
	for i := 0; i < 3; i++ {
		if err := txlock.Run(ctx, db, []string{"warm"}, increment, txlock.WithLocker(l)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		before := cnt.n.Load()
		if err := txlock.Run(ctx, db, []string{"rt"}, increment, txlock.WithLocker(l)); err != nil {
			t.Fatal(err)
		}
		if got := cnt.n.Load() - before; got > 3 {
			t.Fatalf("uncontended Run: %d memcached round trips, want <= 3", got)
		} else if i == 0 {
			t.Logf("uncontended Run: %d round trips", got)
		}
	}
	// The lock is free afterwards: add succeeds at once.
	lease, err := l.Acquire(ctx, txlock.Request{Keys: []string{"rt"}, TryOnce: true})
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	_ = lease.Release(ctx)
}

func TestExclusionAcrossLockers(t *testing.T) {
	testenv.CheckLeaks(t)
	m := testenv.StartMemcached(t)
	db := counterDB(t)
	// Two Lockers with their own clients behave as two processes.
	ls := []*Locker{newLocker(t, client(nil, m.Addr())), newLocker(t, client(nil, m.Addr()))}
	const workers, runs = 4, 15
	var inside atomic.Int32
	errc := make(chan error, 2*workers)
	for _, l := range ls {
		for w := 0; w < workers; w++ {
			go func() {
				for i := 0; i < runs; i++ {
					err := txlock.Run(context.Background(), db, []string{"hot"}, func(ctx context.Context, tx *sql.Tx) error {
						if inside.Add(1) != 1 {
							t.Error("two holders at once")
						}
						defer inside.Add(-1)
						return increment(ctx, tx)
					}, txlock.WithLocker(l))
					if err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
		}
	}
	for i := 0; i < 2*workers; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db); n != 2*workers*runs {
		t.Fatalf("counter = %d, want %d", n, 2*workers*runs)
	}
}

func TestTryOnceAndCancel(t *testing.T) {
	testenv.CheckLeaks(t)
	_, c := startMemcached(t)
	a, b := newLocker(t, c), newLocker(t, c)
	ctx := context.Background()
	lease, err := a.Acquire(ctx, request("k"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := b.Acquire(ctx, txlock.Request{Keys: []string{"k"}, TryOnce: true}); !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("TryOnce on a held key (other process): %v, want ErrLockBusy", err)
	}
	if _, err := a.Acquire(ctx, txlock.Request{Keys: []string{"k"}, TryOnce: true}); !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("TryOnce on a held key (same process): %v, want ErrLockBusy", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("TryOnce took %v", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Acquire(cctx, request("k")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
	if _, err := b.Acquire(cctx, request("free")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context, free key: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.Acquire(tctx, request("k")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past deadline: %v", err)
	}
	if _, err := a.Acquire(tctx, request("k")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("local wait past deadline: %v", err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Through Run: WithLockWait(0) is ErrLockBusy at once.
	db := counterDB(t)
	lease, err = a.Acquire(ctx, request("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(ctx)
	err = txlock.Run(ctx, db, []string{"k"}, increment, txlock.WithLocker(b), txlock.WithLockWait(0))
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("Run with a busy key: %v", err)
	}
	err = txlock.Run(ctx, db, []string{"k"}, increment, txlock.WithLocker(b), txlock.WithLockWait(30*time.Millisecond))
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("Run with a busy key and a short wait: %v", err)
	}
}
