package memcachelock

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// lostRecorder is a Request.Lost that remembers its cause.
type lostRecorder struct {
	mu    sync.Mutex
	cause error
}

func (r *lostRecorder) lost(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cause == nil {
		r.cause = err
	}
}

func (r *lostRecorder) get() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cause
}

// assertHeld fails unless lease still holds its key in memcached.
func assertHeld(t *testing.T, what string, lease txlock.Lease) {
	t.Helper()
	if err := lease.Verify(context.Background()); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestReleaseAfterLostLease: an old holder whose lock was evicted, expired
// or taken over must neither release nor extend the new holder's lock.
func TestReleaseAfterLostLease(t *testing.T) {
	t.Parallel()
	m, c := startMemcached(t)
	ctx := context.Background()
	a, b := newLocker(t, c, WithTTL(2*time.Second)), newLocker(t, client(nil, m.Addr()), WithTTL(2*time.Second))
	mk := memKey(DefaultPrefix, "k")

	for _, verifyFirst := range []bool{false, true} {
		var lost lostRecorder
		old, err := a.Acquire(ctx, txlock.Request{Keys: []string{"k"}, Lost: lost.lost})
		if err != nil {
			t.Fatal(err)
		}
		if verifyFirst {
			assertHeld(t, "old holder", old) // caches a CAS ID release would reuse
		}
		if err := c.Delete(mk); err != nil { // evicted
			t.Fatal(err)
		}
		cur, err := b.Acquire(ctx, txlock.Request{Keys: []string{"k"}, TryOnce: true})
		if err != nil {
			t.Fatalf("new holder: %v", err)
		}
		if err := old.Verify(ctx); !errors.Is(err, txlock.ErrLockLost) {
			t.Fatalf("old holder's Verify: %v, want ErrLockLost", err)
		}
		if err := old.Release(ctx); err != nil {
			t.Fatalf("old holder's Release: %v", err)
		}
		assertHeld(t, "new holder after the old one released", cur)
		if err := cur.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// Expired: memcached paused past the TTL, as a paused holder would be.
	var lost lostRecorder
	old, err := a.Acquire(ctx, txlock.Request{Keys: []string{"k"}, Lost: lost.lost})
	if err != nil {
		t.Fatal(err)
	}
	m.Pause()
	time.Sleep(3 * time.Second)
	m.Resume()
	cur, err := b.Acquire(ctx, request("k")) // waits if the old refresher got in first
	if err != nil {
		t.Fatalf("new holder after expiry: %v", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for lost.get() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !errors.Is(lost.get(), txlock.ErrLockLost) {
		t.Fatalf("old holder was not told: %v", lost.get())
	}
	if err := old.Release(ctx); err != nil {
		t.Fatalf("old holder's Release: %v", err)
	}
	assertHeld(t, "new holder after the expired one released", cur)
	if err := cur.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLongTransaction: a body that runs past two TTLs keeps its lock
// through refreshes, and nobody else gets in.
func TestLongTransaction(t *testing.T) {
	t.Parallel()
	m, c := startMemcached(t)
	db := counterDB(t)
	// A 3 s lease: memcached counts expiry in whole seconds, so a lease of
	// 2 s can end barely more than 1 s after a write, too close for a
	// loaded CI machine's scheduling. The body still outlasts two leases.
	holder := newLocker(t, c, WithTTL(3*time.Second))
	other := newLocker(t, client(nil, m.Addr()), WithTTL(3*time.Second))
	stop := make(chan struct{})
	intruded := make(chan error, 1)
	var wg sync.WaitGroup
	started := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-started
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			lease, err := other.Acquire(context.Background(), txlock.Request{Keys: []string{"long"}, TryOnce: true})
			if err == nil {
				_ = lease.Release(context.Background())
				intruded <- errors.New("another holder got the key")
				return
			}
			if !errors.Is(err, txlock.ErrLockBusy) {
				intruded <- err
				return
			}
		}
	}()
	attempts := 0
	err := txlock.Run(context.Background(), db, []string{"long"}, func(ctx context.Context, tx *sql.Tx) error {
		attempts++
		if attempts == 1 {
			close(started)
		}
		select {
		case <-time.After(6500 * time.Millisecond):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		return increment(ctx, tx)
	}, txlock.WithLocker(holder))
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-intruded:
		t.Fatal(err)
	default:
	}
	if attempts != 1 || count(t, db) != 1 {
		t.Fatalf("attempts = %d, counter = %d; want 1 and 1", attempts, count(t, db))
	}
}

// insert is a body that writes a row tagged with its attempt, after calling
// during (the fault) on the first attempt.
func insert(during func()) func(ctx context.Context, tx *sql.Tx) error {
	return func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			during()
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO names (name, attempt) VALUES ('n', $1)`, txlock.Attempt(ctx))
		return err
	}
}

func attemptsCommitted(t *testing.T, db *sql.DB) []int {
	t.Helper()
	rows, err := db.Query(`SELECT attempt FROM names ORDER BY attempt`)
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

func TestMemcachedKilledMidTransaction(t *testing.T) {
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		m, c := startMemcached(t)
		db := counterDB(t)
		l := newLocker(t, c)
		// The lease cannot be verified: the attempt rolls back, and the
		// next one waits for memcached until the lock wait is spent.
		err := txlock.Run(context.Background(), db, []string{"k"}, insert(m.Kill), txlock.WithLocker(l),
			txlock.WithLockWait(300*time.Millisecond))
		if !errors.Is(err, txlock.ErrLockUnavailable) {
			t.Fatalf("Run = %v, want ErrLockUnavailable", err)
		}
		if got := attemptsCommitted(t, db); len(got) != 0 {
			t.Fatalf("committed under a lock that could not be verified: %v", got)
		}
		// Acquire with the server down: waited out until ctx ends.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := l.Acquire(ctx, request("k")); !errors.Is(err, txlock.ErrLockUnavailable) {
			t.Fatalf("Acquire with memcached down: %v", err)
		}
	})
	t.Run("fail-open", func(t *testing.T) {
		t.Parallel()
		m, c := startMemcached(t)
		db := counterDB(t)
		var logs syncBuffer
		l := newLocker(t, c, WithFailOpen(slog.New(slog.NewTextHandler(&logs, nil))))
		if err := txlock.Run(context.Background(), db, []string{"k"}, insert(m.Kill), txlock.WithLocker(l)); err != nil {
			t.Fatalf("fail-open Run: %v", err)
		}
		if got := attemptsCommitted(t, db); len(got) != 1 {
			t.Fatalf("committed attempts %v, want one", got)
		}
		// With the server down from the start, Runs carry on and say so.
		if err := txlock.Run(context.Background(), db, []string{"k"}, increment, txlock.WithLocker(l)); err != nil {
			t.Fatalf("fail-open Run with memcached down: %v", err)
		}
		if s := logs.String(); !strings.Contains(s, "fail-open") {
			t.Fatalf("no warning logged: %q", s)
		}
	})
}

// TestLockLostMidTransaction: memcached restarted or flushed while the body
// runs: Verify sees the lock gone, the attempt rolls back, and the retry
// commits on the new server.
func TestLockLostMidTransaction(t *testing.T) {
	t.Parallel()
	faults := map[string]func(m *testenv.Memcached, c *memcache.Client){
		"restart":   func(m *testenv.Memcached, c *memcache.Client) { m.Restart() },
		"flush_all": func(m *testenv.Memcached, c *memcache.Client) { _ = c.FlushAll() },
	}
	for name, fault := range faults {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m, c := startMemcached(t)
			db := counterDB(t)
			l := newLocker(t, c)
			err := txlock.Run(context.Background(), db, []string{"k"}, insert(func() { fault(m, c) }), txlock.WithLocker(l))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := attemptsCommitted(t, db); len(got) != 1 || got[0] != 2 {
				t.Fatalf("committed attempts %v, want only the second", got)
			}
		})
	}
}

// TestSeveralServers: keys spread over three memcached servers; Run with
// several keys takes, verifies and releases them all.
func TestSeveralServers(t *testing.T) {
	t.Parallel()
	var addrs []string
	for i := 0; i < 3; i++ {
		addrs = append(addrs, testenv.StartMemcached(t).Addr())
	}
	db := counterDB(t)
	var cnt counter
	l := newLocker(t, client(&cnt, addrs...))
	other := newLocker(t, client(nil, addrs...))
	keys := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	err := txlock.Run(context.Background(), db, keys, func(ctx context.Context, tx *sql.Tx) error {
		for _, k := range keys {
			if _, err := other.Acquire(ctx, txlock.Request{Keys: []string{k}, TryOnce: true}); !errors.Is(err, txlock.ErrLockBusy) {
				t.Errorf("key %s not held: %v", k, err)
			}
		}
		return increment(ctx, tx)
	}, txlock.WithLocker(l))
	if err != nil {
		t.Fatal(err)
	}
	lease, err := other.Acquire(context.Background(), txlock.Request{Keys: keys, TryOnce: true})
	if err != nil {
		t.Fatalf("keys not released: %v", err)
	}
	_ = lease.Release(context.Background())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
