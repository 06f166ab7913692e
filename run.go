package txlock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/txlock/txlock/retry"
	"github.com/txlock/txlock/sqladapter"
)

// Beginner starts a transaction. *sql.DB and *sql.Conn satisfy it.
type Beginner = sqladapter.Beginner

// Run runs fn inside a database transaction while the named locks are held,
// and runs all of it again when the database reports a conflict.
//
// Each attempt:
//
//  1. takes the locks of every Locker that acts outside the database
//     (memcached, in-process), waiting at most the lock wait, while no
//     database connection is held;
//  2. begins a transaction on db with the WithTxOptions options;
//  3. takes the locks of the lockers that act inside it (advisory locks);
//  4. calls fn with the transaction and a context that carries the attempt
//     (see Lock, Attempt, AfterCommit) and that is cancelled if a lock is
//     lost while fn runs;
//  5. verifies every lock is still held, then commits, checking COMMIT's
//     result;
//  6. releases the locks, after the commit or the rollback, on every path.
//
// On success the AfterCommit callbacks run, in the order registered, and Run
// returns nil.
//
// When an attempt fails with a conflict (serialization failure, deadlock,
// unique violation, a lost lock or a broken connection before COMMIT; see
// sqladapter.Classify and WithClassifier), Run sleeps the backoff, after
// rollback and release, then runs the whole transaction again: new BEGIN,
// new snapshot, new locks. It never retries an error of fn's own, a busy
// lock (ErrLockBusy), an unreachable lock service (ErrLockUnavailable) or a
// COMMIT whose outcome is unknown (ErrAmbiguousCommit). After the last
// attempt it returns an error wrapping ErrTooManyAttempts and the last
// attempt's error. If ctx ends, Run stops at once and returns an error
// wrapping the context's cause and, if there was one, the last attempt's
// error.
//
// If fn panics, Run rolls back, releases the locks and panics again with
// the same value.
//
// Keys are deduplicated and sorted before they are taken, so two runs over
// the same keys in any order cannot deadlock each other. Any non-empty
// string is a key. Empty or nil keys mean no locks: Run then only retries.
//
// Run checks its arguments before touching the database: a nil or typed-nil
// db, a nil fn or ctx, an empty key, or a bad option is an error wrapping
// ErrInvalid; an already-done ctx returns its error; a ctx from inside
// another Run's body is ErrNestedRun.
func Run(ctx context.Context, db Beginner, keys []string, fn func(ctx context.Context, tx *sql.Tx) error, opts ...Option) error {
	if ctx == nil {
		return invalid("nil context")
	}
	if isNil(db) {
		return invalid("nil database")
	}
	if fn == nil {
		return invalid("nil function")
	}
	sorted, err := normalizeKeys(keys)
	if err != nil {
		return err
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return err
	}
	if st := stateFrom(ctx); st != nil && !st.isClosed() {
		return ErrNestedRun
	}
	if ctx.Err() != nil {
		return fmt.Errorf("txlock: %w", context.Cause(ctx))
	}

	r := &runner{cfg: cfg, db: db, keys: sorted, fn: fn}
	var last error
	for attempt := 1; ; attempt++ {
		ev := r.attempt(ctx, attempt)
		if ev.Err == nil {
			r.observe(ev)
			return nil
		}
		ev.Retry = ev.retryable && attempt < cfg.maxAttempts && ctx.Err() == nil
		r.observe(ev)
		if ctx.Err() != nil && !errors.Is(ev.Err, ErrAmbiguousCommit) {
			return stopped(ctx, ev.Err)
		}
		if !ev.retryable {
			return ev.Err
		}
		last = ev.Err
		if attempt >= cfg.maxAttempts {
			return fmt.Errorf("%w (%d): %w", ErrTooManyAttempts, attempt, last)
		}
		if err := retry.Sleep(ctx, cfg.backoff.Delay(attempt)); err != nil {
			return stopped(ctx, last)
		}
	}
}

// stopped reports the context's end, keeping the last attempt's error in
// the chain unless it is only the context's error again.
func stopped(ctx context.Context, last error) error {
	cause := context.Cause(ctx)
	if last == nil || errors.Is(last, cause) {
		return fmt.Errorf("txlock: %w", cause)
	}
	return fmt.Errorf("txlock: %w (last error: %w)", cause, last)
}

func normalizeKeys(keys []string) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	for i, k := range keys {
		if k == "" {
			return nil, invalid("key %d is empty", i)
		}
	}
	out := slices.Clone(keys)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// isNil reports whether v is nil or an interface holding a nil pointer,
// map, slice, channel or function, so a typed-nil *sql.DB is caught before
// it can panic inside database/sql.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

type runner struct {
	cfg  *config
	db   Beginner
	keys []string
	fn   func(context.Context, *sql.Tx) error
}

type attemptResult struct {
	Event
	retryable bool
}

func (r *runner) observe(ev attemptResult) {
	if r.cfg.observer != nil {
		r.cfg.observer(ev.Event)
	}
}

// attempt runs one attempt. Its deferred calls are the cleanup guarantee:
// they roll back, then release, whether the attempt returns or panics.
func (r *runner) attempt(parent context.Context, n int) (res attemptResult) {
	start := time.Now()
	res.Attempt = n
	// The body's context is cancelled when a lease is lost. When no
	// locker can lose one and the caller's context cannot end, it is left
	// uncancellable: drivers such as pgx watch every cancellable context
	// with a goroutine per statement, which costs several percent.
	var actx context.Context
	var cancel context.CancelCauseFunc
	if parent.Done() == nil && r.cfg.stable {
		actx, cancel = parent, func(error) {}
	} else {
		actx, cancel = context.WithCancelCause(parent)
	}
	st := &state{runner: r, attempt: n, cancel: cancel, held: make(map[string]struct{}, len(r.keys))}
	actx = context.WithValue(actx, stateKey{}, st)
	st.ctx = actx

	succeeded := false // set by the one return that follows a good COMMIT
	defer func() {
		res.ReleaseErr = st.releaseAll(parent)
		res.Duration = time.Since(start)
		// The body's context stays alive for the callbacks, which may
		// have captured it; a panic in one still cancels it.
		defer cancel(nil)
		// Only after a COMMIT that succeeded: not after an error, and not
		// while a panic or runtime.Goexit unwinds through here.
		if succeeded {
			// Callbacks run after release, so slow ones do not
			// extend how long the keys are held.
			for _, f := range st.after {
				f()
			}
		}
	}()
	var tx *sql.Tx
	defer func() {
		if tx != nil && !st.committed {
			_ = tx.Rollback()
		}
	}()

	fail := func(err error, retryable bool) attemptResult {
		res.Err, res.retryable = err, retryable
		return res
	}

	// Lockers before the first InTx one act before BEGIN.
	split := slices.IndexFunc(r.cfg.lockers, Locker.InTx)
	if split < 0 {
		split = len(r.cfg.lockers)
	}
	// One wait budget for all of the attempt's locks, both sides of BEGIN.
	waitUntil := time.Time{}
	if r.cfg.lockWait > 0 {
		waitUntil = start.Add(r.cfg.lockWait)
	}
	waitStart := time.Now()
	if err := st.acquire(actx, r.cfg.lockers[:split], r.keys, nil, waitUntil); err != nil {
		return fail(r.classify(parent, st, err, sqladapter.InTx))
	}
	res.LockWait = time.Since(waitStart)

	// The transaction lives on the caller's context, not the attempt's: a
	// lost lease cancels the body's statements (they run on actx), but the
	// rollback stays ours and synchronous, and a lease lost while COMMIT is
	// in flight cannot turn a clean commit into an unknown one.
	if cause := context.Cause(actx); cause != nil {
		return fail(cause, st.lostRetryable(parent, cause))
	}
	var err error
	tx, err = r.db.BeginTx(parent, r.cfg.txOptions)
	if err != nil {
		tx = nil
		return fail(r.classify(parent, st, fmt.Errorf("txlock: begin: %w", err), sqladapter.InTx))
	}
	if cause := context.Cause(actx); cause != nil {
		return fail(cause, st.lostRetryable(parent, cause))
	}
	st.mu.Lock()
	st.tx = tx
	st.mu.Unlock()

	waitStart = time.Now()
	if err := st.acquire(actx, r.cfg.lockers[split:], r.keys, tx, waitUntil); err != nil {
		// An advisory lock wait can end in a deadlock (40P01) or a
		// broken connection: the same classification as a statement.
		return fail(r.classify(parent, st, err, sqladapter.InTx))
	}
	res.LockWait += time.Since(waitStart)

	st.setPhase(phaseBody)
	if err := r.fn(actx, tx); err != nil {
		st.setPhase(phaseDone)
		return fail(r.classify(parent, st, err, sqladapter.InTx))
	}
	st.setPhase(phaseDone)

	if err := st.verifyAll(actx); err != nil {
		return fail(err, st.lostRetryable(parent, err))
	}
	if cause := st.cause(); cause != nil {
		return fail(cause, st.lostRetryable(parent, cause))
	}
	st.committed = true // from here on, never roll back: COMMIT decides
	if err := tx.Commit(); err != nil {
		if errors.Is(err, sql.ErrTxDone) {
			// database/sql rolled back because the context ended
			// before COMMIT was sent.
			cause := st.cause()
			if cause == nil {
				// The body ended the transaction itself.
				return fail(fmt.Errorf("txlock: commit: %w (did the body commit or roll back the tx?)", err), false)
			}
			return fail(fmt.Errorf("txlock: commit: %w", cause), st.lostRetryable(parent, cause))
		}
		return fail(r.classify(parent, st, fmt.Errorf("txlock: commit: %w", err), sqladapter.AtCommit))
	}
	succeeded = true
	return res
}

// classify decides what an attempt's error means for the run: give up, or
// try again.
func (r *runner) classify(parent context.Context, st *state, err error, phase sqladapter.Phase) (error, bool) {
	if phase == sqladapter.InTx {
		// A lost lease cancels the body's context; the statement that
		// saw it failed with a context error.
		if cause := context.Cause(st.ctx); errors.Is(cause, ErrLockLost) && parent.Err() == nil {
			if errors.Is(err, ErrLockLost) {
				return err, true
			}
			return fmt.Errorf("%w (body failed: %v)", cause, err), true
		}
		if parent.Err() != nil {
			return err, false
		}
		if errors.Is(err, ErrLockLost) {
			return err, true
		}
	}
	// Our own verdicts come first: an unreachable lock server wraps a
	// network error that the driver classifier would call retryable.
	for _, final := range []error{ErrLockBusy, ErrLockUnavailable, ErrInvalid, ErrNestedRun, ErrNotInRun} {
		if errors.Is(err, final) {
			return err, false
		}
	}
	if phase == sqladapter.AtCommit {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			// The context ended around COMMIT. database/sql may have
			// refused to send it, or the driver may have given up on a
			// COMMIT already sent; the error does not reliably say
			// which, so the only honest answer is "unknown".
			return fmt.Errorf("%w: %w", ErrAmbiguousCommit, err), false
		}
	}
	switch r.cfg.classify(err, phase) {
	case sqladapter.Retryable:
		return err, true
	case sqladapter.Ambiguous:
		return fmt.Errorf("%w: %w", ErrAmbiguousCommit, err), false
	}
	return err, false
}
