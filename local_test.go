package txlock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txlock/txlock"
)

// TestLocalLockerForgetsKeys drives a million distinct keys through a
// LocalLocker, concurrently and with some contention, and checks that its
// table is empty afterwards: an idle locker holds no memory per key seen.
func TestLocalLockerForgetsKeys(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 50_000
	}
	l := txlock.NewLocalLocker()
	workers := runtime.GOMAXPROCS(0) * 2
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				// Neighbours share a key now and then, so waiters and
				// hand-offs are exercised too, not only the fast path.
				keys := []string{fmt.Sprint("key-", i), fmt.Sprint("key-", i/2)}
				lease, err := l.Acquire(context.Background(), txlock.Request{Keys: sorted(keys)})
				if err != nil {
					t.Error(err)
					return
				}
				if err := lease.Release(context.Background()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := l.Len(); got != 0 {
		t.Fatalf("after %d keys the table holds %d entries, want 0", n, got)
	}
}

func sorted(keys []string) []string {
	if keys[0] > keys[1] {
		keys[0], keys[1] = keys[1], keys[0]
	}
	if keys[0] == keys[1] {
		return keys[:1]
	}
	return keys
}

// TestLocalLockerMutualExclusion checks the invariant directly: at most one
// holder of a key at any moment, across many goroutines and Runs.
func TestLocalLockerMutualExclusion(t *testing.T) {
	db, mock := newMock(t)
	db.SetMaxOpenConns(1)
	const runs = 200
	for range runs {
		mock.ExpectBegin()
		mock.ExpectCommit()
	}
	mock.MatchExpectationsInOrder(false)
	l := txlock.NewLocalLocker()
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := txlock.Run(context.Background(), db, []string{"hot"}, func(ctx context.Context, tx *sql.Tx) error {
				n := inside.Add(1)
				for {
					m := maxInside.Load()
					if n <= m || maxInside.CompareAndSwap(m, n) {
						break
					}
				}
				runtime.Gosched()
				inside.Add(-1)
				return nil
			}, txlock.WithLocker(l))
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if m := maxInside.Load(); m != 1 {
		t.Fatalf("%d bodies held the lock at once, want 1", m)
	}
}

// TestLocalLockerFIFO: waiters are served in arrival order.
func TestLocalLockerFIFO(t *testing.T) {
	l := txlock.NewLocalLocker()
	first, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
	if err != nil {
		t.Fatal(err)
	}
	const waiters = 20
	order := make(chan int, waiters)
	var wg sync.WaitGroup
	for i := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lease, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			_ = lease.Release(context.Background())
		}()
		// Wait until waiter i is queued before starting i+1.
		for deadline := time.Now().Add(5 * time.Second); l.Waiters("k") < i+2; {
			if time.Now().After(deadline) {
				t.Fatal("waiter did not queue")
			}
			runtime.Gosched()
		}
	}
	_ = first.Release(context.Background())
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d was served in place %d", got, want)
		}
		want++
	}
}

// TestLocalLockerCancelledWaiterLeavesNoTrace: a waiter that gives up is
// removed at once and does not keep the key's entry alive.
func TestLocalLockerCancelledWaiterLeavesNoTrace(t *testing.T) {
	l := txlock.NewLocalLocker()
	held, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{"k"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = l.Acquire(ctx, txlock.Request{Keys: []string{"j", "k"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if got := l.Waiters("k"); got != 1 {
		t.Fatalf("Waiters(k) = %d, want 1 (the holder)", got)
	}
	_ = held.Release(context.Background())
	if l.Len() != 0 {
		t.Fatalf("Len = %d, want 0", l.Len())
	}
}
