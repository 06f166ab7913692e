package advisorylock_test

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/memcachelock"
)

// advisoryLocks lists the advisory locks on ids, held or waited for, by
// any session, as Postgres shows them: classid is the id's high 32 bits,
// objid its low 32 bits.
func advisoryLocks(t *testing.T, db *sql.DB, ids []int64) (granted, waiting []int64) {
	t.Helper()
	rows, err := db.Query(`SELECT (classid::bigint << 32) | objid::bigint, granted FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var g bool
		if err := rows.Scan(&id, &g); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(ids, id) {
			continue
		}
		if g {
			granted = append(granted, id)
		} else {
			waiting = append(waiting, id)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(granted)
	return granted, waiting
}

// sortedIDs returns the ids of keys in namespace ns, ascending, and the key
// of each.
func sortedIDs(ns string, keys ...string) ([]int64, map[int64]string) {
	byID := map[int64]string{}
	ids := make([]int64, 0, len(keys))
	for _, k := range keys {
		id := advisorylock.ID(ns, k)
		byID[id] = k
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, byID
}

// TestLocksAreTakenInAscendingIDOrder checks, on the server itself, what
// deadlock freedom rests on: with the middle id held elsewhere, a waiter
// holds exactly the ids below it and waits for that one, having taken
// nothing above it; and a TryOnce that meets it takes nothing past it.
func TestLocksAreTakenInAscendingIDOrder(t *testing.T) {
	db := testenv.Postgres(t)
	ns := t.Name()
	l := advisorylock.New(advisorylock.WithNamespace(ns))
	keys := []string{"a", "b", "c", "d", "e"}
	ids, byID := sortedIDs(ns, keys...)
	release := holdInOtherTx(t, db, l, byID[ids[2]])

	// TryOnce: busy at ids[2], holding ids[0] and ids[1] only.
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Acquire(context.Background(), txlock.Request{Keys: keys, Stage: txlock.InTx, Conn: inTx{tx}, TryOnce: true})
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("TryOnce: err = %v, want ErrLockBusy", err)
	}
	granted, _ := advisoryLocks(t, db, ids)
	if want := []int64{ids[0], ids[1], ids[2]}; !slices.Equal(granted, want) {
		t.Errorf("after a busy TryOnce, granted %v, want %v (ids[2] by the other tx; nothing past it)", granted, want)
	}
	_ = tx.Rollback()

	// Waiting: holds ids[0] and ids[1], waits for ids[2], has not
	// touched ids[3] and ids[4].
	tx, err = db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	done := make(chan error, 1)
	go func() {
		_, err := l.Acquire(context.Background(), txlock.Request{Keys: keys, Stage: txlock.InTx, Conn: inTx{tx}})
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		granted, waiting := advisoryLocks(t, db, ids)
		if len(waiting) == 1 {
			if waiting[0] != ids[2] {
				t.Errorf("waiting for %d, want %d (the lowest busy id)", waiting[0], ids[2])
			}
			if want := []int64{ids[0], ids[1], ids[2]}; !slices.Equal(granted, want) {
				t.Errorf("while waiting, granted %v, want %v", granted, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the waiter never showed up in pg_locks (granted %v)", granted)
		}
		time.Sleep(10 * time.Millisecond)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if granted, _ := advisoryLocks(t, db, ids); !slices.Equal(granted, ids) {
		t.Errorf("after the wait, granted %v, want all of %v", granted, ids)
	}
}

// TestNoDeadlockInAnyKeyOrder: transactions lock overlapping key sets given
// in every order, straight through Acquire (not Run, which would sort them
// first). Without the sort by id, Postgres would report deadlocks (40P01).
func TestNoDeadlockInAnyKeyOrder(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	keys := []string{"k0", "k1", "k2", "k3", "k4", "k5"}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 40 {
				ks := slices.Clone(keys)
				r.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
				ks = ks[:2+r.IntN(len(ks)-1)]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				tx, err := db.BeginTx(ctx, nil)
				if err == nil {
					_, err = l.Acquire(ctx, txlock.Request{Keys: ks, Stage: txlock.InTx, Conn: inTx{tx}})
					_ = tx.Rollback()
				}
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestDuplicateIDsAreTakenOnce: keys with the same id (equal keys here; a
// hash collision behaves the same) are one lock, taken once.
func TestDuplicateIDsAreTakenOnce(t *testing.T) {
	tx, mock := mockTx(t)
	mock.ExpectQuery(`^SELECT CASE WHEN pg_try_advisory_xact_lock\(\$1\)`).
		WithArgs(advisorylock.ID("", "k")).
		WillReturnRows(tryRows(0, "read committed"))
	if _, err := advisorylock.New().Acquire(context.Background(), txlock.Request{Keys: []string{"k", "k"}, Stage: txlock.InTx, Conn: inTx{tx}}); err != nil {
		t.Fatal(err)
	}
}

// TestWaitRestoresTheSessionsLockTimeout: the wait sets lock_timeout for
// itself only; a value the transaction had set is back for the body.
func TestWaitRestoresTheSessionsLockTimeout(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	release := holdInOtherTx(t, db, l, "k")
	time.AfterFunc(100*time.Millisecond, release)
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SET LOCAL lock_timeout = '7s'`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.Acquire(ctx, txlock.Request{Keys: []string{"k"}, Stage: txlock.InTx, Conn: inTx{tx}}); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := tx.QueryRow(`SHOW lock_timeout`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "7s" {
		t.Errorf("lock_timeout after the wait = %q, want the transaction's own 7s", got)
	}
}

// TestWhichLockerHoldsConnections shows why the lockers combine: five Runs
// queue on one key while the first holds it. With advisory locks alone every
// waiter holds a database connection; with memcached in front, waiters
// queue before BEGIN and only the holder has one, while the advisory lock
// still guards the transaction.
func TestWhichLockerHoldsConnections(t *testing.T) {
	mcd := testenv.StartMemcached(t)
	for _, tc := range []struct {
		name    string
		lockers func() []txlock.Locker
		inUse   int
	}{
		{"advisory", func() []txlock.Locker { return []txlock.Locker{advisorylock.New()} }, 5},
		{"memcached+advisory", func() []txlock.Locker {
			return []txlock.Locker{memcachelock.New(memcache.New(mcd.Addr())), advisorylock.New()}
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := testenv.Postgres(t)
			opt := txlock.WithLocker(tc.lockers()...)
			hold := make(chan struct{})
			var wg sync.WaitGroup
			for range 5 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := txlock.Run(context.Background(), db, []string{"hot"}, func(ctx context.Context, tx *sql.Tx) error {
						<-hold
						return nil
					}, opt)
					if err != nil {
						t.Error(err)
					}
				}()
			}
			deadline := time.Now().Add(5 * time.Second)
			for db.Stats().InUse < tc.inUse && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond) // would more show up?
			if got := db.Stats().InUse; got != tc.inUse {
				t.Errorf("%d connections in use with 1 holder and 4 waiters, want %d", got, tc.inUse)
			}
			close(hold)
			wg.Wait()
		})
	}
}
