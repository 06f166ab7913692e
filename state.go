package txlock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"database/sql"
)

type stateKey struct{}

type phase int

const (
	phaseLocking phase = iota // before fn is called
	phaseBody                 // fn is running: Lock and AfterCommit work
	phaseDone                 // fn has returned
)

// state is one attempt, carried by the body's context.
type state struct {
	runner  *runner
	attempt int
	ctx     context.Context
	cancel  context.CancelCauseFunc

	mu        sync.Mutex
	phase     phase
	tx        *sql.Tx
	held      map[string]struct{}
	leases    []Lease
	after     []func()
	lostErr   error // first loss reported through Request.Lost
	committed bool  // only touched by the attempt's own goroutine
}

func stateFrom(ctx context.Context) *state {
	st, _ := ctx.Value(stateKey{}).(*state)
	return st
}

func (st *state) setPhase(p phase) {
	st.mu.Lock()
	st.phase = p
	st.mu.Unlock()
}

func (st *state) isClosed() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.phase == phaseDone
}

// lost is handed to lockers as Request.Lost.
func (st *state) lost(cause error) {
	if cause == nil {
		cause = ErrLockLost
	} else if !errors.Is(cause, ErrLockLost) {
		cause = fmt.Errorf("%w: %w", ErrLockLost, cause)
	}
	st.mu.Lock()
	if st.lostErr == nil {
		st.lostErr = cause
	}
	st.mu.Unlock()
	st.cancel(cause)
}

// cause is why the attempt must not commit: a lost lease (recorded even
// when the body's context is not cancellable) or the caller's context.
func (st *state) cause() error {
	st.mu.Lock()
	lost := st.lostErr
	st.mu.Unlock()
	if lost != nil {
		return lost
	}
	return context.Cause(st.ctx)
}

// acquire takes keys in every locker of ls, in order, with one shared wait
// budget, and adds the leases to the attempt. On error it releases what this
// call took before returning. If the attempt ended while it waited (a body
// that called Lock from a goroutine it did not wait for), it gives the locks
// back and returns ErrNotInRun.
func (st *state) acquire(ctx context.Context, ls []Locker, keys []string, tx *sql.Tx, waitUntil time.Time) error {
	if len(ls) == 0 || len(keys) == 0 {
		return nil
	}
	wait := st.runner.cfg.lockWait
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if wait > 0 {
		wctx, cancel = context.WithDeadlineCause(ctx, waitUntil, errWaitExpired)
	}
	defer cancel()
	taken := make([]Lease, 0, len(ls))
	giveBack := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		for i := len(taken) - 1; i >= 0; i-- {
			_ = taken[i].Release(rctx)
		}
	}
	for _, l := range ls {
		lease, err := l.Acquire(wctx, Request{Keys: keys, Tx: tx, TryOnce: wait == 0, Lost: st.lost})
		if err == nil && isNil(lease) {
			err = fmt.Errorf("txlock: %T.Acquire returned a nil Lease and no error", l)
		}
		if err != nil {
			giveBack()
			return st.acquireError(ctx, wctx, keys, err)
		}
		taken = append(taken, lease)
	}
	st.mu.Lock()
	if st.phase == phaseDone {
		st.mu.Unlock()
		giveBack()
		return ErrNotInRun
	}
	st.leases = append(st.leases, taken...)
	for _, k := range keys {
		st.held[k] = struct{}{}
	}
	st.mu.Unlock()
	return nil
}

var errWaitExpired = errors.New("txlock: lock wait expired")

// acquireError turns a locker's error into what Run reports: the caller's
// cancellation, a lost lock, or ErrLockBusy when the wait ran out.
func (st *state) acquireError(ctx, wctx context.Context, keys []string, err error) error {
	switch {
	case ctx.Err() != nil:
		if cause := context.Cause(ctx); errors.Is(cause, ErrLockLost) {
			return cause
		}
		return fmt.Errorf("txlock: waiting for locks: %w", err)
	case errors.Is(err, ErrLockBusy):
		return err
	case wctx.Err() != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, errWaitExpired)):
		return fmt.Errorf("%w: %s after waiting %v", ErrLockBusy, describeKeys(keys), st.runner.cfg.lockWait)
	}
	return err
}

func describeKeys(keys []string) string {
	const show = 3
	q := make([]string, 0, show)
	for i, k := range keys {
		if i == show {
			return fmt.Sprintf("keys %v and %d more", q, len(keys)-show)
		}
		if len(k) > 64 {
			k = k[:64] + "…"
		}
		q = append(q, fmt.Sprintf("%q", k))
	}
	return fmt.Sprintf("keys %v", q)
}

// lostRetryable reports whether an error ending an attempt is a lost lock
// that another attempt may overcome.
func (st *state) lostRetryable(parent context.Context, err error) bool {
	return parent.Err() == nil && errors.Is(err, ErrLockLost)
}

func (st *state) verifyAll(ctx context.Context) error {
	st.mu.Lock()
	leases := slices.Clone(st.leases)
	st.mu.Unlock()
	for _, l := range leases {
		if err := l.Verify(ctx); err != nil {
			if c := context.Cause(ctx); errors.Is(c, ErrLockLost) {
				return c
			}
			return fmt.Errorf("txlock: verify before commit: %w", err)
		}
	}
	return nil
}

// releaseAll releases every lease, last taken first, on a context that
// survives the caller's cancellation, and returns the first error.
func (st *state) releaseAll(parent context.Context) error {
	st.mu.Lock()
	st.phase = phaseDone
	leases := st.leases
	st.leases = nil
	st.mu.Unlock()
	if len(leases) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), releaseTimeout)
	defer cancel()
	var first error
	for i := len(leases) - 1; i >= 0; i-- {
		if err := leases[i].Release(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Lock takes more locks from inside a Run body, in every locker of the run,
// and holds them until the transaction ends, like the keys given to Run.
// Keys this attempt already holds are skipped, so locking a key twice is a
// no-op. Each call may wait up to the run's lock wait. Keys taken this way come after the transaction has begun, so they
// may be taken out of the global order: prefer passing every key you know
// in advance to Run. On a retry, keys locked with Lock are not taken up
// front; the body takes them again when it calls Lock again. At REPEATABLE
// READ the body's snapshot is already fixed when Lock waits, so it cannot
// see what the previous holder committed: pass such keys to Run, which
// takes them before the snapshot.
//
// It returns ErrNotInRun when ctx does not come from a running body,
// ErrLockBusy when the wait ran out, and an error wrapping ErrInvalid for an
// empty key. A lock error does not end the attempt by itself; returning it
// from the body does.
func Lock(ctx context.Context, keys ...string) error {
	if ctx == nil {
		return ErrNotInRun
	}
	st := stateFrom(ctx)
	if st == nil {
		return ErrNotInRun
	}
	norm, err := normalizeKeys(keys)
	if err != nil {
		return err
	}
	st.mu.Lock()
	if st.phase != phaseBody {
		st.mu.Unlock()
		return ErrNotInRun
	}
	fresh := norm[:0:0]
	for _, k := range norm {
		if _, ok := st.held[k]; !ok {
			fresh = append(fresh, k)
		}
	}
	tx := st.tx
	st.mu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("txlock: %w", context.Cause(ctx))
	}
	var waitUntil time.Time
	if w := st.runner.cfg.lockWait; w > 0 {
		waitUntil = time.Now().Add(w)
	}
	return st.acquire(ctx, st.runner.cfg.lockers, fresh, tx, waitUntil)
}

// Attempt returns the number of the current attempt, 1 for the first, when
// ctx comes from a Run body that is running, and 0 otherwise (also for a
// body's context kept after the body returned).
func Attempt(ctx context.Context) int {
	if ctx == nil {
		return 0
	}
	if st := stateFrom(ctx); st != nil && !st.isClosed() {
		return st.attempt
	}
	return 0
}

// AfterCommit registers f to run once, after this attempt has committed and
// its locks are released, in the order registered, on the goroutine that
// called Run. Callbacks of an attempt that does not commit are dropped, so a
// retried body registers them again. Use it for side effects that must not
// happen unless the data is there: sending mail, publishing an event,
// filling a cache.
//
// It returns ErrNotInRun when ctx does not come from a running body, and an
// error wrapping ErrInvalid for a nil f.
func AfterCommit(ctx context.Context, f func()) error {
	if ctx == nil {
		return ErrNotInRun
	}
	st := stateFrom(ctx)
	if st == nil {
		return ErrNotInRun
	}
	if f == nil {
		return invalid("AfterCommit: nil function")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.phase != phaseBody {
		return ErrNotInRun
	}
	st.after = append(st.after, f)
	return nil
}
