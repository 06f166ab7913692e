package memcachelock

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// TestGivenUpWaiterIsNotHandedTheKey: a waiter that gives up (its lock wait
// is spent) must not be handed the key afterwards. Were it handed the key
// when the holder released, the key would stay with a Locker that no longer
// wants it until the lease ran out: ErrLockBusy for everyone for 30 s.
func TestGivenUpWaiterIsNotHandedTheKey(t *testing.T) {
	m, c := startMemcached(t)
	db := counterDB(t)
	a := newLocker(t, c)
	b := newLocker(t, client(nil, m.Addr()))
	holding, release := make(chan struct{}), make(chan struct{})
	holderDone := make(chan error, 1)
	go func() {
		holderDone <- txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
			close(holding)
			<-release
			return nil
		}, txlock.WithLocker(a))
	}()
	<-holding
	err := txlock.Run(context.Background(), db, []string{"k"}, increment,
		txlock.WithLocker(b), txlock.WithLockWait(200*time.Millisecond))
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("waiter: %v, want ErrLockBusy after its wait", err)
	}
	close(release)
	if err := <-holderDone; err != nil {
		t.Fatal(err)
	}
	// The key is free at once, for a caller that does not wait.
	deadline := time.Now().Add(time.Second)
	for {
		err := txlock.Run(context.Background(), db, []string{"k"}, increment, txlock.WithLocker(a), txlock.WithLockWait(0))
		if err == nil {
			break
		}
		if !errors.Is(err, txlock.ErrLockBusy) || time.Now().After(deadline) {
			t.Fatalf("after the holder released and the waiter gave up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPrefixesNeverShareALock: "app" + "2:x" and "app2" + ":x" spell the
// same bytes; they must be different locks.
func TestPrefixesNeverShareALock(t *testing.T) {
	_, c := startMemcached(t)
	ctx := context.Background()
	app, app2 := newLocker(t, c, WithPrefix("app")), newLocker(t, c, WithPrefix("app2"))
	if memKey("app", "2:x") == memKey("app2", ":x") {
		t.Fatalf("memKey(app, 2:x) == memKey(app2, :x) == %q", memKey("app", "2:x"))
	}
	l1, err := app.Acquire(ctx, txlock.Request{Keys: []string{"2:x"}, TryOnce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Release(ctx)
	l2, err := app2.Acquire(ctx, txlock.Request{Keys: []string{":x"}, TryOnce: true})
	if err != nil {
		t.Fatalf("prefix app2, key :x is busy while app holds 2:x: %v", err)
	}
	defer l2.Release(ctx)
	// A prefix with ":" is refused rather than silently ambiguous.
	if err := New(c, WithPrefix("app:2")).Check(ctx); !errors.Is(err, txlock.ErrInvalid) {
		t.Errorf("WithPrefix(\"app:2\"): %v, want ErrInvalid", err)
	}
}

// TestManyKeysAreAllReleased: a Run over as many keys as a Locker allows
// takes them all and gives them all back; none stays in memcached for its
// lease. More keys than that are refused before any is taken.
func TestManyKeysAreAllReleased(t *testing.T) {
	testenv.CheckLeaks(t)
	m, c := startMemcached(t)
	db := counterDB(t)
	l := newLocker(t, c)
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	err := txlock.Run(context.Background(), db, keys, increment, txlock.WithLocker(l))
	if !errors.Is(err, txlock.ErrInvalid) || !strings.Contains(err.Error(), "at most 1000") {
		t.Fatalf("Run over 100,000 keys = %v, want ErrInvalid naming the limit", err)
	}
	if n := currItems(t, m.Addr()); n != 0 {
		t.Fatalf("%d locks taken by a refused Run", n)
	}
	var releaseErr error
	observe := txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
		releaseErr = e.ReleaseErr
	}})
	start := time.Now()
	if err := txlock.Run(context.Background(), db, keys[:DefaultMaxKeys], increment, txlock.WithLocker(l), observe); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d keys: %v", DefaultMaxKeys, time.Since(start))
	if releaseErr != nil {
		t.Errorf("release: %v", releaseErr)
	}
	// A released lock is swapped to an already expired value, which
	// memcached may still count in curr_items until it reclaims it: read
	// each key instead.
	left := 0
	for _, k := range keys[:DefaultMaxKeys] {
		if _, err := c.Get(memKey(DefaultPrefix, k)); err == nil {
			left++
		}
	}
	if left != 0 {
		t.Fatalf("%d locks still in memcached after Run returned", left)
	}
}

// currItems reads memcached's count of items stored.
func currItems(t *testing.T, addr string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "stats\r\n")
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[1] == "curr_items" {
			n, _ := strconv.Atoi(f[2])
			return n
		}
		if f[0] == "END" {
			break
		}
	}
	t.Fatal("no curr_items in stats")
	return 0
}
