package txlock

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Lock takes more locks from inside a Run body, in every locker of the run,
// and holds them until the transaction ends, like the keys given to Run.
// Keys this attempt already holds are skipped, so locking a key twice is a
// no-op. Each call may wait up to the run's lock wait; calls from several
// goroutines of one body are taken one after another.
//
// Keys taken this way come after the transaction has begun: they may be
// taken out of the global order, and a locker that would otherwise take
// them before BEGIN takes them inside the transaction, so prefer passing
// every key you know in advance to Run. On a retry, keys locked with Lock
// are not taken up front; the body takes them again when it calls Lock
// again. At REPEATABLE READ and SERIALIZABLE the body's snapshot is already
// fixed when Lock waits, so it cannot see what the previous holder
// committed: pass such keys to Run, which takes them before the snapshot.
//
// It returns ErrNotInRun when ctx does not come from a running body,
// ErrLockBusy when the wait ran out, and an error wrapping ErrInvalid for an
// empty key. A lock error does not end the attempt by itself; returning it
// from the body does.
func Lock(ctx context.Context, keys ...string) error {
	if ctx == nil {
		return ErrNotInRun
	}
	a := attemptFrom(ctx)
	if a == nil {
		return ErrNotInRun
	}
	norm, err := normalizeKeys(keys)
	if err != nil {
		return err
	}
	// One Lock at a time per attempt: two for the same key from goroutines
	// of one body would otherwise both find it not held yet, and the
	// second would wait on the first for its whole lock wait.
	a.locking.Lock()
	defer a.locking.Unlock()
	a.mu.Lock()
	if a.state != stateBody {
		a.mu.Unlock()
		return ErrNotInRun
	}
	fresh := norm[:0:0]
	for _, k := range norm {
		if !a.holds(k) {
			fresh = append(fresh, k)
		}
	}
	tx := a.tx
	a.mu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("txlock: %w", context.Cause(ctx))
	}
	var waitUntil time.Time
	if w := a.cfg.lockWait; w > 0 {
		waitUntil = time.Now().Add(w)
	}
	if err := a.acquire(ctx, 0, len(a.cfg.lockers), InTx, tx, fresh, waitUntil); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.added == nil {
		a.added = make(map[string]struct{}, len(fresh))
	}
	for _, k := range fresh {
		a.added[k] = struct{}{}
	}
	return nil
}

// holds reports whether the attempt holds key: one of the run's keys
// (sorted), or one a Lock call took. a.mu must be held.
func (a *attempt) holds(key string) bool {
	if _, found := slices.BinarySearch(a.keys, key); found {
		return true
	}
	_, ok := a.added[key]
	return ok
}

// Attempt returns the number of the current attempt, 1 for the first, when
// ctx comes from a Run body that is running, and 0 otherwise (also for a
// body's context kept after the body returned).
func Attempt(ctx context.Context) int {
	if ctx == nil {
		return 0
	}
	if a := attemptFrom(ctx); a != nil && a.inBody() {
		return a.n
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
	a := attemptFrom(ctx)
	if a == nil {
		return ErrNotInRun
	}
	if f == nil {
		return invalid("AfterCommit: nil function")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != stateBody {
		return ErrNotInRun
	}
	a.after = append(a.after, f)
	return nil
}

// inBody reports whether the attempt's body is running.
func (a *attempt) inBody() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state == stateBody
}
