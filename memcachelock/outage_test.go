package memcachelock

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
)

// dialCounter counts the connections a client dials.
type dialCounter struct{ n atomic.Int64 }

func (d *dialCounter) client(addr string) *memcache.Client {
	c := memcache.New(addr)
	c.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		d.n.Add(1)
		var nd net.Dialer
		return nd.DialContext(ctx, network, address)
	}
	return c
}

// TestRestartShorterThanTheLockWaitIsWaitedOut: memcached is down for
// 300 ms while eight Runs want their locks. Every Run succeeds once it is
// back; while it is down the waiters hold no database connection, and they
// do not all dial it: one probe at a time, with backoff.
func TestRestartShorterThanTheLockWaitIsWaitedOut(t *testing.T) {
	t.Parallel()
	m := testenv.StartMemcached(t)
	var dials dialCounter
	l := newLocker(t, dials.client(m.Addr()))
	db := counterDB(t)

	m.Kill()
	down := dials.n.Load()
	const runs = 8
	errs := make(chan error, runs)
	for range runs {
		go func() {
			errs <- txlock.Run(context.Background(), db, []string{"k"}, increment,
				txlock.WithLocker(l), txlock.WithLockWait(5*time.Second))
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if n := db.Stats().InUse; n != 0 {
		t.Errorf("%d database connections in use while waiting for memcached, want 0", n)
	}
	dialedWhileDown := dials.n.Load() - down
	m.Start()
	for range runs {
		if err := <-errs; err != nil {
			t.Errorf("Run across a 300 ms restart: %v", err)
		}
	}
	if got := count(t, db); got != runs {
		t.Errorf("counter = %d, want %d", got, runs)
	}
	// Eight waiters polling every few hundred microseconds would dial
	// thousands of times in 300 ms; probes back off from 10 ms.
	if dialedWhileDown > 20 {
		t.Errorf("%d dials while memcached was down, want a few probes", dialedWhileDown)
	}
	t.Logf("dials while down: %d", dialedWhileDown)
}

// TestStillDownWhenTheWaitIsSpent: only a memcached still down when the
// lock wait ends is an error, and the error says so.
func TestStillDownWhenTheWaitIsSpent(t *testing.T) {
	t.Parallel()
	m, c := startMemcached(t)
	l := newLocker(t, c)
	db := counterDB(t)
	m.Kill()
	start := time.Now()
	err := txlock.Run(context.Background(), db, []string{"k"}, increment,
		txlock.WithLocker(l), txlock.WithLockWait(300*time.Millisecond))
	took := time.Since(start)
	if !errors.Is(err, txlock.ErrLockUnavailable) || !strings.Contains(err.Error(), "down") {
		t.Fatalf("Run = %v, want ErrLockUnavailable saying memcached is down", err)
	}
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("gave up after %v, want about the lock wait (300 ms)", took)
	}
	if count(t, db) != 0 {
		t.Error("committed without the lock")
	}
	// With a lock wait of 0, at once.
	start = time.Now()
	err = txlock.Run(context.Background(), db, []string{"k"}, increment, txlock.WithLocker(l), txlock.WithLockWait(0))
	if !errors.Is(err, txlock.ErrLockUnavailable) {
		t.Fatalf("Run with wait 0 = %v, want ErrLockUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("wait 0 took %v", d)
	}
}

// TestLeaseUnverifiableDuringRestartIsRetried: memcached dies while the
// body runs and is back 300 ms later. The first attempt cannot verify its
// lease before COMMIT: it rolls back, and the next attempt, after waiting
// for memcached, commits. Exactly one attempt's write is stored.
func TestLeaseUnverifiableDuringRestartIsRetried(t *testing.T) {
	t.Parallel()
	m, c := startMemcached(t)
	l := newLocker(t, c)
	db := counterDB(t)
	var restarted sync.WaitGroup
	restarted.Add(1)
	err := txlock.Run(context.Background(), db, []string{"k"}, insert(func() {
		m.Kill()
		go func() {
			defer restarted.Done()
			time.Sleep(300 * time.Millisecond)
			m.Start()
		}()
	}), txlock.WithLocker(l), txlock.WithLockWait(5*time.Second))
	restarted.Wait()
	if err != nil {
		t.Fatalf("Run across a restart during the body: %v", err)
	}
	got := attemptsCommitted(t, db)
	if len(got) != 1 || got[0] < 2 {
		t.Fatalf("committed attempts %v, want one, not the first", got)
	}
}

// TestGuardedRunGoesOnWithoutMemcached: with advisory locks in the run,
// an unreachable memcached does not stop writes. Runs go on under the
// database lock alone, correctly (a read-then-write counter at READ
// COMMITTED), report it in Event.Degraded and log a warning; once
// memcached is back, Runs queue in it again.
func TestGuardedRunGoesOnWithoutMemcached(t *testing.T) {
	t.Parallel()
	m, c := startMemcached(t)
	var logs syncBuffer
	l := newLocker(t, c, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	adv := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	db := counterDB(t)
	var degraded atomic.Int32
	opts := []txlock.Option{txlock.WithLocker(l, adv), txlock.WithLockWait(5 * time.Second),
		txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
			if e.Degraded != nil {
				degraded.Add(1)
			}
		}})}

	m.Kill()
	const runs = 12
	var wg sync.WaitGroup
	for range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := txlock.Run(context.Background(), db, []string{"k"}, increment, opts...); err != nil {
				t.Errorf("guarded Run with memcached down: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := count(t, db); got != runs {
		t.Fatalf("counter = %d, want %d: the advisory lock did not guard the run", got, runs)
	}
	if degraded.Load() == 0 {
		t.Error("no Event.Degraded while memcached was down")
	}
	if s := logs.String(); !strings.Contains(s, "memcached unavailable") || strings.Contains(s, `"k"`) {
		t.Errorf("want one warning without the key, got %q", s)
	}

	m.Start()
	degraded.Store(0)
	mk := memKey(DefaultPrefix, "k")
	// The health probe runs after a backoff: within a second the Runs
	// take the memcached lock again.
	deadline := time.Now().Add(3 * time.Second)
	for {
		var inMemcached bool
		err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
			_, err := c.Get(mk)
			inMemcached = err == nil
			return increment(ctx, tx)
		}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if inMemcached {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Runs did not go back to memcached after it returned")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOutOfMemoryIsUnavailability: a memcached that cannot store (-M, full)
// answers SERVER_ERROR out of memory. That is an unusable lock service, not
// a busy key.
func TestOutOfMemoryIsUnavailability(t *testing.T) {
	t.Parallel()
	m := testenv.StartMemcached(t, "-M", "-m", "2")
	c := client(nil, m.Addr())
	fillMemcached(t, c)
	l := newLocker(t, c)
	db := counterDB(t)
	err := txlock.Run(context.Background(), db, []string{"k"}, increment, txlock.WithLocker(l),
		txlock.WithLockWait(200*time.Millisecond))
	if !errors.Is(err, txlock.ErrLockUnavailable) || errors.Is(err, txlock.ErrLockBusy) ||
		!strings.Contains(err.Error(), "out of memory") {
		t.Fatalf("Run on a full memcached = %v, want ErrLockUnavailable saying out of memory", err)
	}
}

// fillMemcached stores values of falling sizes until memcached refuses
// each size, so that no slab class has room left.
func fillMemcached(t *testing.T, c *memcache.Client) {
	t.Helper()
	n := 0
	for _, size := range []int{100_000, 10_000, 1000, 100, 30, 1} {
		v := make([]byte, size)
		for {
			n++
			err := c.Set(&memcache.Item{Key: fmt.Sprintf("fill%d", n), Value: v})
			if err == nil {
				continue
			}
			if !strings.Contains(err.Error(), "out of memory") {
				t.Fatalf("filling memcached: %v", err)
			}
			break
		}
	}
}

// TestBusyIsNotAnOutage: a key held by another Locker, asked for without
// waiting, is ErrLockBusy, never ErrLockUnavailable: a Locker that may carry
// on without memcached (fail-open, or a run guarded by advisory locks) must
// not take a busy key for an outage and go ahead without the lock.
func TestBusyIsNotAnOutage(t *testing.T) {
	m, c := startMemcached(t)
	ctx := context.Background()
	holder := newLocker(t, client(nil, m.Addr()))
	held, err := holder.Acquire(ctx, txlock.Request{Keys: []string{"k"}, TryOnce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(ctx)
	for _, tc := range []struct {
		name string
		l    *Locker
		req  txlock.Request
	}{
		{"plain", newLocker(t, c), txlock.Request{Keys: []string{"k"}, TryOnce: true}},
		{"fail-open", newLocker(t, c, WithFailOpen(slog.New(slog.DiscardHandler))), txlock.Request{Keys: []string{"k"}, TryOnce: true}},
		{"guarded", newLocker(t, c, WithLogger(slog.New(slog.DiscardHandler))), txlock.Request{Keys: []string{"k"}, TryOnce: true, Guarded: true}},
	} {
		var degraded error
		tc.req.Degraded = func(err error) { degraded = err }
		lease, err := tc.l.Acquire(ctx, tc.req)
		if err == nil {
			_ = lease.Release(ctx)
		}
		if !errors.Is(err, txlock.ErrLockBusy) || errors.Is(err, txlock.ErrLockUnavailable) || degraded != nil {
			t.Errorf("%s: Acquire of a held key = %v (degraded: %v), want ErrLockBusy alone", tc.name, err, degraded)
		}
	}
}

// cutProxy forwards TCP to addr and, once armed, swallows the answer to the
// next command that contains cut and closes the client's connection: the
// command was applied, its answer lost.
type cutProxy struct {
	l     net.Listener
	addr  string
	cut   []byte
	armed atomic.Bool
}

func startCutProxy(t *testing.T, addr, cut string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, addr: addr, cut: []byte(cut)}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.addr)
	if err != nil {
		return
	}
	defer server.Close()
	var swallow atomic.Bool
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := server.Read(buf)
			if n > 0 && swallow.Load() {
				client.Close()
				return
			}
			if n > 0 {
				if _, err := client.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				client.Close()
				return
			}
		}
	}()
	buf := make([]byte, 4096)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if bytes.Contains(buf[:n], p.cut) && p.armed.CompareAndSwap(true, false) {
				swallow.Store(true)
			}
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestLostAddAnswerIsOurs: an add applied whose answer was lost (the
// connection broke after memcached stored it) leaves an item with this
// Locker's own token. Asked for without waiting, the Locker recognises it
// as its own instead of reporting the key busy and leaving the lock behind
// for a whole lease.
func TestLostAddAnswerIsOurs(t *testing.T) {
	m := testenv.StartMemcached(t)
	p := startCutProxy(t, m.Addr(), "add ")
	l := newLocker(t, memcache.New(p.l.Addr().String()))
	ctx := context.Background()
	p.armed.Store(true)
	lease, err := l.Acquire(ctx, txlock.Request{Keys: []string{"k"}, TryOnce: true})
	if err != nil {
		t.Fatalf("TryOnce Acquire whose add answer was lost: %v", err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := client(nil, m.Addr()).Get(memKey(DefaultPrefix, "k")); err == nil {
		t.Fatal("the lock is still in memcached after its release")
	}
}
