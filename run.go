package txlock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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
//  1. takes the locks of every Locker that works outside the database
//     (memcached, in-process), waiting at most the lock wait, while no
//     database connection is held;
//  2. takes the locks that live on a database connection (advisory locks
//     at REPEATABLE READ and SERIALIZABLE), then begins a transaction on
//     that connection, or on any connection, with the WithTxOptions
//     options;
//  3. takes the locks that live inside the transaction (advisory locks at
//     READ COMMITTED);
//  4. calls fn with the transaction and a context that carries the attempt
//     (see Lock, Attempt, AfterCommit) and that is cancelled if a lock is
//     lost while fn runs;
//  5. verifies every lock that could have been lost is still held, then
//     commits, checking COMMIT's result;
//  6. rolls back if it did not commit, and releases the locks, on every
//     path.
//
// On success the AfterCommit callbacks run, in the order registered, and Run
// returns nil.
//
// When an attempt fails with a conflict (serialization failure, deadlock,
// unique violation, a lost lock, a connection lost before COMMIT; the
// package documentation lists every case), Run sleeps the backoff, after
// rollback and release, then runs the whole transaction again: new BEGIN,
// new snapshot, new locks. It never retries an error of fn's own, a busy
// lock (ErrLockBusy), a lock service still unreachable when the lock wait
// is spent (ErrLockUnavailable) or a COMMIT whose outcome is unknown and
// cannot be looked up (ErrAmbiguousCommit; see CommitCheck). After the last
// attempt it returns an error wrapping ErrTooManyAttempts and the last
// attempt's error. If ctx ends, Run stops at once and returns an error
// wrapping the context's cause and, if there was one, the last attempt's
// error.
//
// If fn panics, Run rolls back, releases the locks and lets the panic go
// on.
//
// Keys are deduplicated and sorted before they are taken, so two runs over
// the same keys in any order cannot deadlock each other. Any non-empty
// string is a key. A nil or empty keys slice means no locks: Run then only
// retries, which with SERIALIZABLE is a complete concurrency control of its
// own.
//
// Run checks its arguments before touching the database: a nil or typed-nil
// db, a nil fn or ctx, an empty key, or a bad option is an error wrapping
// ErrInvalid; an already-done ctx returns its error; a ctx from inside
// another Run's body is ErrNestedRun.
func Run(ctx context.Context, db Beginner, keys []string, fn func(ctx context.Context, tx *sql.Tx) error, opts ...Option) error {
	if ctx != nil && isNil(db) {
		return invalid("nil database")
	}
	if fn == nil {
		return invalid("nil function")
	}
	return RunTx(ctx, sqlDatabase{db}, keys, func(ctx context.Context, tx Tx) error {
		st, ok := tx.(*sqlTx)
		if !ok {
			return errNotSQLTx
		}
		return fn(ctx, st.tx)
	}, opts...)
}

// RunTx is Run for a Database of any kind: it is how txlockpgx runs pgx
// transactions through the same attempts, lockers and retry decisions as
// Run. fn receives the transaction as db began it. Everything Run
// documents holds for RunTx.
func RunTx(ctx context.Context, db Database, keys []string, fn func(ctx context.Context, tx Tx) error, opts ...Option) error {
	switch {
	case ctx == nil:
		return invalid("nil context")
	case isNil(db):
		return invalid("nil database")
	case fn == nil:
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
	if a := attemptFrom(ctx); a != nil && a.inBody() {
		return ErrNestedRun
	}
	if ctx.Err() != nil {
		return fmt.Errorf("txlock: %w", context.Cause(ctx))
	}
	r := &run{cfg: cfg, db: db, keys: sorted, fn: fn}
	return r.do(ctx)
}

// run is one call of Run: its configuration and its attempts.
type run struct {
	cfg  *config
	db   Database
	keys []string
	fn   func(context.Context, Tx) error
	info RunInfo
	obs  observers
}

// do makes attempts until one commits, one fails for good, the attempts
// run out, or ctx ends.
func (r *run) do(ctx context.Context) (err error) {
	r.obs = r.cfg.observers
	res := RunResult{Panicked: true} // until Run returns normally
	if len(r.obs) > 0 {
		r.info = RunInfo{Keys: len(r.keys), Lockers: r.cfg.lockers, TxOptions: r.cfg.txOptions,
			MaxAttempts: r.cfg.maxAttempts, LockWait: r.cfg.lockWait, System: systemOf(r.db)}
		start := time.Now()
		ctx = r.obs.runStart(ctx, r.info)
		defer func() {
			res.Err, res.Duration = err, time.Since(start)
			r.obs.runDone(ctx, r.info, res)
		}()
	}
	for n := 1; ; n++ {
		res.Attempts = n
		v, err := r.attempt(ctx, n)
		switch {
		case err == nil:
			res.Panicked = false
			return nil
		case v == again && n >= r.cfg.maxAttempts:
			res.Panicked = false
			return fmt.Errorf("%w (%d): %w", ErrTooManyAttempts, n, err)
		case v == again:
			if serr := retry.Sleep(ctx, r.cfg.backoff.Delay(n)); serr != nil {
				res.Panicked = false
				return stopped(ctx, err)
			}
			continue
		}
		res.Panicked = false
		if ctx.Err() != nil && !errors.Is(err, ErrAmbiguousCommit) {
			return stopped(ctx, err)
		}
		return err
	}
}

// attempt runs attempt n and returns its error (nil when it committed)
// and what the error means.
func (r *run) attempt(ctx context.Context, n int) (v verdict, err error) {
	if len(r.obs) > 0 {
		ctx = r.obs.attemptStart(ctx, r.info, n)
	}
	a := newAttempt(r, ctx, n)
	succeeded, returned := false, false
	var reason string
	defer func() {
		releaseErr := a.end()
		if len(r.obs) > 0 {
			r.obs.attemptDone(ctx, r.info, a.event(err, v, reason, releaseErr, !returned))
		}
		// The body's context stays alive for the callbacks, which may
		// have captured it; a panic in one still cancels it.
		defer a.cancel(nil)
		if succeeded {
			// After release, so slow callbacks do not hold the keys;
			// never after a failed COMMIT, nor while a panic or
			// runtime.Goexit unwinds through here.
			for _, f := range a.after {
				f()
			}
		}
	}()

	ph, err := a.steps(r.fn)
	if err != nil {
		v, reason = decide(err, ph, a.lostCause(), ctx.Err() != nil, r.cfg.classify)
		if v == ambiguous {
			v, reason, err = a.lookUp(err)
		}
		if isFault(v, reason, err) {
			noteFault()
		}
	}
	succeeded, returned = err == nil, true
	return v, err
}

// steps runs the attempt's steps in order and returns the first error and
// the phase it came from.
func (a *attempt) steps(fn func(context.Context, Tx) error) (phase, error) {
	if err := a.lockBeforeBegin(); err != nil {
		return phaseLock, err
	}
	if err := a.holdConn(); err != nil {
		return phaseBegin, err
	}
	if err := a.lockOnConn(); err != nil {
		return phaseLock, err
	}
	if err := a.begin(); err != nil {
		return phaseBegin, err
	}
	if err := a.lockInTx(); err != nil {
		return phaseLock, err
	}
	if err := a.runBody(fn); err != nil {
		return phaseBody, err
	}
	if err := a.recordTxID(); err != nil {
		return phaseBody, err
	}
	if err := a.verify(); err != nil {
		return phaseVerify, err
	}
	return phaseCommit, a.commit()
}

// event describes the finished attempt to observers.
func (a *attempt) event(err error, v verdict, reason string, releaseErr error, panicked bool) Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	ev := Event{
		Attempt:    a.n,
		Err:        err,
		Retry:      err != nil && v == again && a.n < a.cfg.maxAttempts,
		Reason:     reason,
		LockWait:   a.lockWait,
		Duration:   time.Since(a.start),
		LeaseLost:  a.lossSeen,
		Degraded:   a.degraded,
		Commit:     a.outcome,
		ReleaseErr: releaseErr,
		Panicked:   panicked,
	}
	if code, ok := sqladapter.SQLState(err); ok {
		ev.SQLState = code
	}
	return ev
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
