package txlock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/goleak"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/memcachelock"
	"github.com/txlock/txlock/retry"
)

// TestBadAndHostileInput feeds the public API bad and hostile input, one
// row each: nil and typed nil, empty, duplicate, oversized and hostile
// keys and options; cancelled and expired contexts; bodies that panic,
// commit themselves or outlive their Run; broken databases and lock
// servers; very many keys. Every row must get its documented answer and
// leave nothing behind: no goroutine (goleak), no connection in use, no
// lock held (the row's LocalLocker is empty, and the keys can be taken at
// once afterwards).
func TestBadAndHostileInput(t *testing.T) {
	for _, r := range hostileRows() {
		t.Run(r.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			h := newHostileEnv(t)
			panicked, err := h.call(r.run)
			switch {
			case r.panics && panicked == nil:
				t.Fatalf("no panic; err = %v", err)
			case !r.panics && panicked != nil:
				t.Fatalf("panic: %v", panicked)
			case r.want == nil && !r.panics && err != nil:
				t.Fatalf("err = %v, want nil", err)
			case r.want != nil && !errors.Is(err, r.want):
				t.Fatalf("err = %v, want %v", err, r.want)
			}
			if r.check != nil {
				r.check(t, h, err)
			}
			h.close(t)
			goleak.VerifyNone(t, ignore)
		})
	}
	if n := len(hostileRows()); n < 50 {
		t.Errorf("%d rows, want at least 50", n)
	}
}

type hostileRow struct {
	name   string
	run    func(h *hostileEnv) error
	want   error // nil: success (unless panics)
	panics bool
	check  func(t *testing.T, h *hostileEnv, err error)
}

// hostileEnv is one row's world: an SQLite database of its own with a
// table t, and a LocalLocker of its own.
type hostileEnv struct {
	ctx   context.Context
	db    *sql.DB
	local *txlock.LocalLocker
	opts  []txlock.Option // the row's locker, quick retries
	keys  []string        // keys the row took, to check they are free again
}

var hostileSeq struct {
	sync.Mutex
	n int
}

func newHostileEnv(t *testing.T) *hostileEnv {
	hostileSeq.Lock()
	hostileSeq.n++
	name := fmt.Sprintf("file:hostile%d?mode=memory&cache=shared", hostileSeq.n)
	hostileSeq.Unlock()
	db, err := sql.Open("sqlite", name)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(2)
	if _, err := db.Exec(`CREATE TABLE t (v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	local := txlock.NewLocalLocker()
	return &hostileEnv{ctx: context.Background(), db: db, local: local,
		opts: []txlock.Option{txlock.WithLocker(local), txlock.WithBackoff(retry.Constant(0))}}
}

// call runs f, turning a panic into a value.
func (h *hostileEnv) call(f func(h *hostileEnv) error) (panicked any, err error) {
	defer func() { panicked = recover() }()
	return nil, f(h)
}

// close checks that the row left no connection in use and no lock held.
func (h *hostileEnv) close(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.db.Stats().InUse != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := h.db.Stats().InUse; n != 0 {
		t.Errorf("%d connections still in use", n)
	}
	for h.local.Len() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := h.local.Len(); n != 0 {
		t.Errorf("%d keys still held or waited for", n)
	}
	if len(h.keys) > 0 {
		err := txlock.Run(context.Background(), h.db, h.keys, nop, txlock.WithLocker(h.local), txlock.WithLockWait(0))
		if err != nil {
			t.Errorf("the row's keys are not free afterwards: %v", err)
		}
	}
	h.db.Close()
}

// run is txlock.Run on the row's database with its locker and opts.
func (h *hostileEnv) run(ctx context.Context, keys []string, fn func(context.Context, *sql.Tx) error, opts ...txlock.Option) error {
	if !slices.Contains(keys, "") {
		h.keys = append(h.keys, keys...)
	}
	return txlock.Run(ctx, h.db, keys, fn, append(h.opts[:len(h.opts):len(h.opts)], opts...)...)
}

func nop(context.Context, *sql.Tx) error { return nil }

func write(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO t VALUES ('x')`)
	return err
}

func rowsIn(t *testing.T, h *hostileEnv) int {
	t.Helper()
	var n int
	if err := h.db.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func wantRows(n int) func(t *testing.T, h *hostileEnv, err error) {
	return func(t *testing.T, h *hostileEnv, err error) {
		if got := rowsIn(t, h); got != n {
			t.Errorf("%d rows committed, want %d", got, n)
		}
	}
}

// nilBeginner returns neither a transaction nor an error.
type nilBeginner struct{}

func (nilBeginner) BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error) { return nil, nil }

// badLocker misbehaves as told.
type badLocker struct {
	nilLease  bool
	panics    bool
	busy      bool
	releaseEr error
}

func (*badLocker) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.BeforeBegin}
}

func (l *badLocker) Acquire(context.Context, txlock.Request) (txlock.Lease, error) {
	switch {
	case l.panics:
		panic("locker panics")
	case l.busy:
		return nil, fmt.Errorf("%w: test", txlock.ErrLockBusy)
	case l.nilLease:
		return nil, nil
	}
	return badLease{l}, nil
}

type badLease struct{ l *badLocker }

func (badLease) Verify(context.Context) error    { return nil }
func (b badLease) Release(context.Context) error { return b.l.releaseEr }

func hostileRows() []hostileRow {
	bigKey := strings.Repeat("k", 1<<20)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	cancel2()
	errCause := errors.New("client went away")
	caused, cancel3 := context.WithCancelCause(context.Background())
	cancel3(errCause)
	manyKeys := make([]string, 100_000)
	for i := range manyKeys {
		manyKeys[i] = "k" + strconv.Itoa(i)
	}
	rows := []hostileRow{
		// Run's arguments.
		{name: "nil context", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(noCtx, h.db, []string{"k"}, nop)
		}},
		{name: "nil database", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, nil, []string{"k"}, nop)
		}},
		{name: "typed nil *sql.DB", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, (*sql.DB)(nil), []string{"k"}, nop)
		}},
		{name: "typed nil *sql.Conn", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, (*sql.Conn)(nil), []string{"k"}, nop)
		}},
		{name: "Beginner returning (nil, nil)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, nilBeginner{}, []string{"k"}, nop, h.opts...)
		}},
		{name: "nil body", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, nil)
		}},
		{name: "empty key", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{""}, nop)
		}},
		{name: "empty key among good ones", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"a", "", "b"}, nop)
		}},
		{name: "nil keys: no lock, commits", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, nil, write)
		}},
		{name: "empty keys slice", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{}, write)
		}},
		{name: "duplicate keys", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k", "k", "k"}, write)
		}},
		{name: "1 MiB key", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{bigKey}, write)
		}},
		{name: "NUL, CRLF and a protocol command in a key", run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"\x00", "a\r\nflush_all\r\n", "delete k"}, write)
		}},
		{name: "invalid UTF-8 and SQL in keys", run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"\xff\xfe", "'; DROP TABLE t; --"}, write)
		}, check: wantRows(1)},
		{name: "100,000 keys in the in-process locker", run: func(h *hostileEnv) error {
			return h.run(h.ctx, manyKeys, write)
		}, check: wantRows(1)},

		// Contexts.
		{name: "cancelled context", want: context.Canceled, check: wantRows(0), run: func(h *hostileEnv) error {
			return h.run(cancelled, []string{"k"}, write)
		}},
		{name: "expired context", want: context.DeadlineExceeded, check: wantRows(0), run: func(h *hostileEnv) error {
			return h.run(expired, []string{"k"}, write)
		}},
		{name: "context cancelled with a cause", want: errCause, run: func(h *hostileEnv) error {
			return h.run(caused, []string{"k"}, write)
		}},
		{name: "context cancelled during the body", want: context.Canceled, check: wantRows(0), run: func(h *hostileEnv) error {
			ctx, cancel := context.WithCancel(h.ctx)
			defer cancel()
			return h.run(ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				if err := write(ctx, tx); err != nil {
					return err
				}
				cancel()
				return ctx.Err()
			})
		}},
		{name: "context cancelled while waiting for a lock", want: context.DeadlineExceeded, run: func(h *hostileEnv) error {
			release := h.hold("k")
			defer release()
			ctx, cancel := context.WithTimeout(h.ctx, 50*time.Millisecond)
			defer cancel()
			return h.run(ctx, []string{"k"}, write)
		}},
		{name: "nested Run", want: txlock.ErrNestedRun, run: func(h *hostileEnv) error {
			var inner error
			err := h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				inner = txlock.Run(ctx, h.db, []string{"b"}, nop)
				return nil
			})
			return errors.Join(err, inner)
		}},

		// Options.
		{name: "WithMaxAttempts(0)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, nop, txlock.WithMaxAttempts(0))
		}},
		{name: "WithMaxAttempts(-1)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, nop, txlock.WithMaxAttempts(-1))
		}},
		{name: "negative lock wait", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, nop, txlock.WithLockWait(-time.Second))
		}},
		{name: "WithLocker with no locker", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker())
		}},
		{name: "WithLocker(nil)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(nil))
		}},
		{name: "WithLocker(typed nil *LocalLocker)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker((*txlock.LocalLocker)(nil)))
		}},
		{name: "the same locker twice", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(h.local, h.local))
		}},
		{name: "WithClassifier(nil)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, nop, txlock.WithClassifier(nil))
		}},
		{name: "WithCommitCheck of an unknown mode", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, nop, txlock.WithCommitCheck(99))
		}},
		{name: "a nil Option is ignored", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, write, nil)
		}},
		{name: "WithBackoff(nil) means no delay", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, write, txlock.WithBackoff(nil))
		}},
		{name: "WithTxOptions(nil) means the driver's default", check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, write, txlock.WithTxOptions(nil))
		}},
		{name: "Check with a nil context", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Check(noCtx)
		}},
		{name: "Check with a bad option", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Check(h.ctx, txlock.WithMaxAttempts(0))
		}},

		// Bodies.
		{name: "body panics: released, re-panicked", panics: true, check: wantRows(0), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				_ = write(ctx, tx)
				panic("boom")
			})
		}},
		{name: "body panics with nil", panics: true, check: wantRows(0), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, func(context.Context, *sql.Tx) error {
				panic(nil) //nolint:govet // on purpose: a *runtime.PanicNilError
			})
		}},
		{name: "body calls runtime.Goexit", run: func(h *hostileEnv) error {
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = h.run(h.ctx, []string{"k"}, func(context.Context, *sql.Tx) error {
					runtime.Goexit()
					return nil
				})
			}()
			<-done
			return nil
		}, check: wantRows(0)},
		{name: "body commits the transaction itself", want: sql.ErrTxDone, run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				return tx.Commit()
			})
		}},
		{name: "body rolls the transaction back itself", want: sql.ErrTxDone, check: wantRows(0), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				_ = write(ctx, tx)
				return tx.Rollback()
			})
		}},
		{name: "body's own error is not retried", want: errCause, check: wantRows(0), run: func(h *hostileEnv) error {
			calls := 0
			err := h.run(h.ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				calls++
				_ = write(ctx, tx)
				return errCause
			})
			if calls != 1 {
				return fmt.Errorf("body ran %d times", calls)
			}
			return err
		}},
		{name: "body's goroutine outlives the Run: Lock and AfterCommit refuse", want: txlock.ErrNotInRun, run: func(h *hostileEnv) error {
			var kept context.Context
			if err := h.run(h.ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				kept = ctx
				return nil
			}); err != nil {
				return err
			}
			if txlock.Attempt(kept) != 0 {
				return errors.New("Attempt of a finished body is not 0")
			}
			return errors.Join(txlock.Lock(kept, "late"), txlock.AfterCommit(kept, func() {}))
		}},
		{name: "Lock from a goroutine of the body that is still running", run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				errc := make(chan error, 1)
				go func() { errc <- txlock.Lock(ctx, "b") }()
				return <-errc
			})
		}},
		{name: "two goroutines of a body Lock the same key at once", run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				errc := make(chan error, 2)
				for range 2 {
					go func() { errc <- txlock.Lock(ctx, "order:42") }()
				}
				return errors.Join(<-errc, <-errc)
			}, txlock.WithLockWait(300*time.Millisecond))
		}},
		{name: "Lock outside Run", want: txlock.ErrNotInRun, run: func(h *hostileEnv) error {
			return txlock.Lock(h.ctx, "k")
		}},
		{name: "Lock with a nil context", want: txlock.ErrNotInRun, run: func(h *hostileEnv) error {
			return txlock.Lock(noCtx, "k")
		}},
		{name: "Lock with an empty key", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			var lerr error
			err := h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				lerr = txlock.Lock(ctx, "")
				return nil
			})
			return errors.Join(err, lerr)
		}},
		{name: "Lock with no keys", run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				return txlock.Lock(ctx)
			})
		}},
		{name: "Lock of a 1 MiB key held elsewhere: short error", want: txlock.ErrLockBusy, run: func(h *hostileEnv) error {
			release := h.hold(bigKey)
			defer release()
			return h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				return txlock.Lock(ctx, bigKey)
			}, txlock.WithLockWait(0))
		}, check: shortError},
		{name: "busy 1 MiB key: the error quotes 64 bytes of it", want: txlock.ErrLockBusy, run: func(h *hostileEnv) error {
			release := h.hold(bigKey)
			defer release()
			return h.run(h.ctx, []string{bigKey}, nop, txlock.WithLockWait(0))
		}, check: shortError},
		{name: "AfterCommit with a nil function", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			var aerr error
			err := h.run(h.ctx, []string{"a"}, func(ctx context.Context, tx *sql.Tx) error {
				aerr = txlock.AfterCommit(ctx, nil)
				return nil
			})
			return errors.Join(err, aerr)
		}},
		{name: "AfterCommit outside Run", want: txlock.ErrNotInRun, run: func(h *hostileEnv) error {
			return txlock.AfterCommit(h.ctx, func() {})
		}},
		{name: "AfterCommit with a nil context", want: txlock.ErrNotInRun, run: func(h *hostileEnv) error {
			return txlock.AfterCommit(noCtx, func() {})
		}},
		{name: "Attempt outside Run and of nil", run: func(h *hostileEnv) error {
			if txlock.Attempt(h.ctx) != 0 || txlock.Attempt(noCtx) != 0 {
				return errors.New("Attempt outside Run is not 0")
			}
			return nil
		}},
		{name: "an after-commit callback panics: committed, released, re-panicked", panics: true, check: wantRows(1), run: func(h *hostileEnv) error {
			return h.run(h.ctx, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
				if err := write(ctx, tx); err != nil {
					return err
				}
				return txlock.AfterCommit(ctx, func() { panic("callback") })
			})
		}},

		// Broken databases and lockers.
		{name: "database that cannot be reached", want: txlock.ErrTooManyAttempts, run: func(h *hostileEnv) error {
			db, err := sql.Open("pgx", "postgres://postgres@127.0.0.1:1/none?connect_timeout=1")
			if err != nil {
				return err
			}
			defer db.Close()
			return txlock.Run(h.ctx, db, []string{"k"}, nop, append(h.opts, txlock.WithMaxAttempts(2))...)
		}},
		{name: "closed database: final, not retried", run: func(h *hostileEnv) error {
			db, err := sql.Open("sqlite", ":memory:")
			if err != nil {
				return err
			}
			db.Close()
			err = txlock.Run(h.ctx, db, []string{"k"}, nop, h.opts...)
			if !strings.Contains(fmt.Sprint(err), "database is closed") || errors.Is(err, txlock.ErrTooManyAttempts) {
				return fmt.Errorf("err = %v, want database/sql's \"database is closed\" at once", err)
			}
			return nil
		}},
		{name: "a Locker returning (nil, nil)", run: func(h *hostileEnv) error {
			err := txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(&badLocker{nilLease: true}))
			if err == nil || !strings.Contains(err.Error(), "nil Lease") {
				return fmt.Errorf("err = %v, want one about the nil Lease", err)
			}
			return nil
		}},
		{name: "a Locker that panics", panics: true, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(h.local, &badLocker{panics: true}))
		}},
		{name: "a Locker that says busy", want: txlock.ErrLockBusy, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(h.local, &badLocker{busy: true}))
		}},
		{name: "a Lease whose release fails: committed, reported", check: wantRows(1), run: func(h *hostileEnv) error {
			var released error
			err := txlock.Run(h.ctx, h.db, []string{"k"}, write, txlock.WithLocker(&badLocker{releaseEr: errCause}),
				txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
					released = e.ReleaseErr
				}}))
			if !errors.Is(released, errCause) {
				return fmt.Errorf("Event.ReleaseErr = %v", released)
			}
			return err
		}},
		{name: "memcachelock with a nil client", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			l := memcachelock.New(nil)
			return errors.Join(l.Check(h.ctx), txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(l)))
		}},
		{name: "memcachelock with a bad TTL and prefix", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			l := memcachelock.New(memcache.New("127.0.0.1:1"), memcachelock.WithTTL(-time.Second), memcachelock.WithPrefix("a b"))
			return errors.Join(txlock.Check(h.ctx, txlock.WithLocker(l)), txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(l)))
		}},
		{name: "memcached unreachable, no wait", want: txlock.ErrLockUnavailable, run: func(h *hostileEnv) error {
			l := memcachelock.New(memcache.New("127.0.0.1:1"))
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(l), txlock.WithLockWait(0))
		}},
		{name: "memcached unreachable past a short wait", want: txlock.ErrLockUnavailable, run: func(h *hostileEnv) error {
			l := memcachelock.New(memcache.New("127.0.0.1:1"))
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(l), txlock.WithLockWait(100*time.Millisecond))
		}},
		{name: "memcachelock: more keys than allowed", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			l := memcachelock.New(memcache.New("127.0.0.1:1"))
			return txlock.Run(h.ctx, h.db, manyKeys, nop, txlock.WithLocker(l))
		}},
		{name: "advisory locks on SQLite", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, []string{"k"}, nop, txlock.WithLocker(advisorylock.New()))
		}},
		{name: "advisorylock: more keys than allowed", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Run(h.ctx, h.db, manyKeys, nop, txlock.WithLocker(advisorylock.New()))
		}},
		{name: "advisorylock.WithMaxKeys(0)", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			return txlock.Check(h.ctx, txlock.WithLocker(advisorylock.New(advisorylock.WithMaxKeys(0))))
		}},
		{name: "nil *LocalLocker used directly", want: txlock.ErrInvalid, run: func(h *hostileEnv) error {
			_, err := (*txlock.LocalLocker)(nil).Acquire(h.ctx, txlock.Request{Keys: []string{"k"}})
			return err
		}},

		// retry, on its own.
		{name: "retry.Do with a nil context", run: func(h *hostileEnv) error {
			if retry.Do(noCtx, 1, nil, func(context.Context, int) error { return nil }) == nil {
				return errors.New("no error")
			}
			return nil
		}},
		{name: "retry.Do with no attempts", run: func(h *hostileEnv) error {
			if retry.Do(h.ctx, 0, nil, func(context.Context, int) error { return nil }) == nil {
				return errors.New("no error")
			}
			return nil
		}},
	}
	return rows
}

// hold takes key in the row's locker until release is called.
func (h *hostileEnv) hold(key string) (release func()) {
	lease, err := h.local.Acquire(h.ctx, txlock.Request{Keys: []string{key}, TryOnce: true})
	if err != nil {
		panic(err)
	}
	var once sync.Once
	return func() { once.Do(func() { _ = lease.Release(context.Background()) }) }
}

func shortError(t *testing.T, _ *hostileEnv, err error) {
	if n := len(fmt.Sprint(err)); n > 300 {
		t.Errorf("error of %d bytes for a 1 MiB key", n)
	}
}

// noCtx is a nil context, passed on purpose where the API must refuse one.
var noCtx context.Context
