package txlock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// attempt is one try of a run: its locks, its connection, its transaction
// and its body. The body's context carries it, for Lock, Attempt and
// AfterCommit.
//
// Its steps, in order (see run): lockBeforeBegin, holdConn, lockOnConn,
// begin, lockInTx, runBody, recordTxID, verify, commit; then end, which
// rolls back what did not commit, releases every lease and gives the
// connection back. The run then calls the AfterCommit callbacks of an
// attempt that committed.
type attempt struct {
	cfg  *config
	db   Database
	keys []string
	n    int

	parent context.Context // the run's, plus observers: the transaction lives on it
	ctx    context.Context // the body's: parent, this attempt, cancelled when a lease is lost
	cancel context.CancelCauseFunc

	stages  []Stage // each locker's stage in this attempt
	stable  []bool  // each locker's leases cannot be lost
	dbHeld  []bool  // each locker's locks are held by the database
	guarded bool    // some locker's locks are held by the database
	// Room for the three slices above in the common case of a few
	// lockers, so that an attempt does not allocate them.
	stagesBuf [fewLockers]Stage
	stableBuf [fewLockers]bool
	dbHeldBuf [fewLockers]bool

	conn     Conn
	discard  bool // close conn rather than return it to the pool
	tx       Tx
	record   bool  // record the transaction id before COMMIT (see CommitCheck)
	txid     int64 // recorded before COMMIT when recorded is set; 0: wrote nothing
	recorded bool
	txDone   bool // COMMIT was sent, or the rollback done: nothing left to end
	start    time.Time

	locking sync.Mutex // held by a Lock call for its whole duration

	mu       sync.Mutex // guards what follows: lockers report from their goroutines, bodies call Lock and AfterCommit from theirs
	state    attemptState
	added    map[string]struct{} // keys taken by Lock, beyond the run's own
	leases   []heldLease
	after    []func()
	lostErr  error // the lease loss that stops this attempt from committing
	lossSeen error // the first loss reported, even one a guard made harmless
	degraded error
	lockWait time.Duration
	outcome  CommitOutcome
}

// fewLockers is how many lockers an attempt plans without allocating.
const fewLockers = 4

type attemptState int

const (
	stateLocking attemptState = iota // before the body: Lock and AfterCommit refuse
	stateBody                        // the body runs: Lock and AfterCommit work
	stateAfter                       // the body returned: Lock and AfterCommit refuse
	stateDone                        // released: losses reported now are ignored
)

type heldLease struct {
	lease  Lease
	locker int
	stage  Stage
}

type attemptKey struct{}

func attemptFrom(ctx context.Context) *attempt {
	a, _ := ctx.Value(attemptKey{}).(*attempt)
	return a
}

func newAttempt(r *run, parent context.Context, n int) *attempt {
	a := &attempt{cfg: r.cfg, db: r.db, keys: r.keys, n: n, parent: parent, start: time.Now()}
	stable := a.plan()
	// The body's context is cancelled when a lease is lost. When none can
	// be (and txlocktest injects no loss) and the caller's context cannot
	// end, it is left uncancellable: drivers such as pgx watch every
	// cancellable context, which costs.
	if stable && parent.Done() == nil && len(r.cfg.faults) == 0 {
		a.ctx, a.cancel = parent, func(error) {}
	} else {
		a.ctx, a.cancel = context.WithCancelCause(parent)
	}
	a.ctx = context.WithValue(a.ctx, attemptKey{}, a)
	return a
}

// plan gives each locker its stage in this attempt: its own, or a later
// one when it comes after a locker of a later stage (lockers are taken in
// the order given).
// It reports whether every locker's leases are Stable.
func (a *attempt) plan() (allStable bool) {
	ls := a.cfg.lockers
	if len(ls) <= fewLockers {
		a.stages, a.stable, a.dbHeld = a.stagesBuf[:len(ls)], a.stableBuf[:len(ls)], a.dbHeldBuf[:len(ls)]
	} else {
		a.stages = make([]Stage, len(ls))
		a.stable = make([]bool, len(ls))
		a.dbHeld = make([]bool, len(ls))
	}
	stage := BeforeBegin
	allStable = true
	for i, l := range ls {
		t := l.Traits(a.cfg.txOptions)
		stage = max(stage, t.Stage)
		a.stages[i] = stage
		a.stable[i] = t.Stable
		a.dbHeld[i] = t.Stable && t.Stage >= OnConn
		a.guarded = a.guarded || a.dbHeld[i]
		allStable = allStable && t.Stable
	}
	return allStable
}

// span returns the lockers of stage s: [from, to), empty when none.
// Stages never decrease along the list, so they are contiguous.
func (a *attempt) span(s Stage) (from, to int) {
	for from < len(a.stages) && a.stages[from] < s {
		from++
	}
	to = from
	for to < len(a.stages) && a.stages[to] == s {
		to++
	}
	return from, to
}

// waitUntil is when the attempt's lock wait ends, for all its stages.
func (a *attempt) waitUntil() time.Time {
	if a.cfg.lockWait == 0 {
		return time.Time{}
	}
	return a.start.Add(a.cfg.lockWait)
}

// lockBeforeBegin takes the locks of the lockers that work without a
// database connection.
func (a *attempt) lockBeforeBegin() error {
	from, to := a.span(BeforeBegin)
	return a.acquire(a.ctx, from, to, BeforeBegin, nil, a.keys, a.waitUntil())
}

// holdConn reserves the connection the transaction will run on, if a
// locker takes its locks on it before BEGIN. A database that cannot
// reserve one gets those lockers inside the transaction instead.
func (a *attempt) holdConn() error {
	// Whether to record the transaction id is decided here, before the
	// attempt holds a connection: finding out whether the database can be
	// asked may take a connection of the pool once (see Database.Postgres).
	a.record = shouldRecord(a.parent, a.cfg.commitCheck, a.db)
	from, to := a.span(OnConn)
	if from == to {
		return nil
	}
	c, err := a.db.Conn(a.parent)
	if err != nil {
		return fmt.Errorf("txlock: connection: %w", err)
	}
	if c == nil {
		for i := from; i < to; i++ {
			a.stages[i] = InTx
		}
		return nil
	}
	a.conn = c
	return nil
}

// lockOnConn takes the locks that live on the connection, before BEGIN,
// so that the transaction's snapshot comes after them.
func (a *attempt) lockOnConn() error {
	if a.conn == nil {
		return nil
	}
	from, to := a.span(OnConn)
	err := a.acquire(a.ctx, from, to, OnConn, a.conn, a.keys, a.waitUntil())
	if err != nil && !errors.Is(err, ErrLockBusy) {
		// The locker may not have been able to give back what it took
		// before it failed: end the session rather than pool it.
		a.discard = true
	}
	return err
}

// begin starts the transaction, on the run's context rather than the
// body's: a lost lease cancels the body's statements, but the rollback
// stays Run's, and a lease lost while COMMIT is in flight cannot turn a
// clean commit into an unknown one.
func (a *attempt) begin() error {
	if err := a.cause(); err != nil {
		return err
	}
	var tx Tx
	var err error
	if a.conn != nil {
		tx, err = a.conn.BeginTx(a.parent, a.cfg.txOptions)
	} else {
		tx, err = a.db.BeginTx(a.parent, a.cfg.txOptions)
	}
	if err != nil {
		return fmt.Errorf("txlock: begin: %w", err)
	}
	a.mu.Lock()
	a.tx = tx
	a.mu.Unlock()
	return a.cause()
}

// lockInTx takes the locks that live inside the transaction.
func (a *attempt) lockInTx() error {
	from, to := a.span(InTx)
	return a.acquire(a.ctx, from, to, InTx, a.tx, a.keys, a.waitUntil())
}

// runBody calls the body with the transaction and the body's context.
func (a *attempt) runBody(fn func(context.Context, Tx) error) error {
	a.setState(stateBody)
	for _, f := range a.cfg.faults {
		if err := f.BodyStarted(a.ctx, a.n); err != nil {
			a.lose(err, false)
		}
	}
	err := fn(a.ctx, a.tx)
	a.setState(stateAfter)
	return err
}

// verify checks, just before COMMIT, every lease that could have been
// lost and that the run relies on, then takes a last look at the context:
// COMMIT is not sent for a caller who has gone, so that a context error
// from COMMIT itself means a COMMIT interrupted in flight.
func (a *attempt) verify() error {
	if !a.anyToVerify() {
		return a.cause()
	}
	a.mu.Lock()
	leases := append([]heldLease(nil), a.leases...)
	a.mu.Unlock()
	for _, h := range leases {
		if !a.mustVerify(h.locker) {
			continue
		}
		if err := h.lease.Verify(a.ctx); err != nil {
			if cause := a.cause(); cause != nil {
				return cause
			}
			return fmt.Errorf("txlock: verify before commit: %w", err)
		}
	}
	return a.cause()
}

// anyToVerify reports whether some locker's leases must be verified.
func (a *attempt) anyToVerify() bool {
	for i := range a.stable {
		if a.mustVerify(i) {
			return true
		}
	}
	return false
}

// mustVerify: a Stable lease cannot be lost, and in a guarded run a lock
// outside the database guards nothing the database does not.
func (a *attempt) mustVerify(i int) bool {
	return !a.stable[i] && !a.guarded
}

// recordTxID asks the transaction's id before COMMIT when an unknown
// outcome should be looked up (see CommitCheck).
func (a *attempt) recordTxID() error {
	if !a.record {
		return nil
	}
	id, err := recordTxID(a.parent, a.tx)
	if err != nil {
		return fmt.Errorf("txlock: record transaction id: %w", err)
	}
	a.txid, a.recorded = id, true
	return nil
}

// commit sends COMMIT and checks its result. Faults injected by txlocktest
// (see internal/seam) wrap it; when one does not send COMMIT, the
// transaction is rolled back at once, before its error is looked at.
func (a *attempt) commit() error {
	var err error
	if len(a.cfg.faults) == 0 {
		a.txDone = true
		err = a.tx.Commit(a.parent)
	} else {
		err = a.commitThroughFaults()
	}
	if !a.txDone {
		a.rollback()
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrTxDone) {
		if cause := a.cause(); cause != nil {
			// COMMIT was not sent: the context ended first.
			return fmt.Errorf("txlock: commit: %w (%w)", cause, err)
		}
		return fmt.Errorf("txlock: commit: %w (did the body commit or roll back the transaction itself?)", err)
	}
	return fmt.Errorf("txlock: commit: %w", err)
}

// commitThroughFaults sends COMMIT through the injected faults, each
// wrapping those given before it.
func (a *attempt) commitThroughFaults() error {
	send := func() error {
		a.txDone = true
		return a.tx.Commit(a.parent)
	}
	for _, f := range a.cfg.faults {
		next := send
		send = func() error { return f.Commit(a.parent, a.n, next) }
	}
	return send()
}

// lookUp settles an ambiguous COMMIT when the transaction id was recorded:
// committed is success, aborted a retry, anything else ErrAmbiguousCommit.
func (a *attempt) lookUp(err error) (verdict, string, error) {
	a.noteCommit(CommitUnknown)
	if !a.recorded {
		return final, "", fmt.Errorf("%w: %w", ErrAmbiguousCommit, err)
	}
	if a.txid == 0 {
		// No id before COMMIT: the body wrote nothing then, but COMMIT
		// may still have done work that assigns one (NOTIFY, deferred
		// triggers), under an id nobody recorded.
		return final, "", fmt.Errorf("%w: %w (the transaction had no id before COMMIT to look up)", ErrAmbiguousCommit, err)
	}
	out := lookupCommit(a.parent, a.db, a.txid)
	a.noteCommit(out)
	switch out {
	case CommitFoundCommitted:
		return final, "", nil
	case CommitFoundAborted:
		if a.parent.Err() != nil {
			return final, "", err
		}
		return again, "commit_aborted", err
	}
	return final, "", fmt.Errorf("%w: %w (transaction %d could not be looked up)", ErrAmbiguousCommit, err, a.txid)
}

func (a *attempt) noteCommit(c CommitOutcome) { a.outcome = c }

// end rolls back a transaction that did not commit, releases every lease
// (last taken first), gives the connection back after the last lease that
// lives on it, and returns the first release error.
func (a *attempt) end() error {
	a.rollback()
	a.mu.Lock()
	a.state = stateDone
	leases := a.leases
	a.leases = nil
	a.mu.Unlock()
	var ctx context.Context = context.Background()
	if len(leases) > 0 {
		d := a.detached(len(a.keys) * len(leases))
		defer d.stop()
		ctx = d
	}
	var first error
	note := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	closeConn := func() {
		if a.conn != nil {
			note(a.conn.Close(a.discard))
			a.conn = nil
		}
	}
	for i := len(leases) - 1; i >= 0; i-- {
		h := leases[i]
		if h.stage == BeforeBegin {
			closeConn()
		}
		if err := h.lease.Release(ctx); err != nil {
			note(err)
			if h.stage == OnConn {
				a.discard = true
			}
		}
	}
	closeConn()
	return first
}

// rollback rolls back a transaction that did not end, on a context
// detached from the caller's.
func (a *attempt) rollback() {
	if a.tx == nil || a.txDone {
		return
	}
	a.txDone = true
	ctx := a.detached(0)
	_ = a.tx.Rollback(ctx)
	ctx.stop()
}

// releaseBudget bounds the release of an attempt's leases, which runs on
// a context detached from the caller's: long enough for each key's
// round trip even when there are very many.
func releaseBudget(keys int) time.Duration {
	return 5*time.Second + time.Duration(keys)*time.Millisecond
}

// detached is a context for cleanup that outlives the caller's
// cancellation, bounded by releaseBudget.
func (a *attempt) detached(keys int) *lazyDeadline {
	return withLazyDeadline(context.WithoutCancel(a.parent), time.Now().Add(releaseBudget(keys)), nil)
}

func (a *attempt) setState(s attemptState) {
	a.mu.Lock()
	a.state = s
	a.mu.Unlock()
}

// cause is why the attempt must not go on: a lease lost (recorded even
// when the body's context is not cancellable) or the caller's context.
func (a *attempt) cause() error {
	a.mu.Lock()
	lost := a.lostErr
	a.mu.Unlock()
	if lost != nil {
		return lost
	}
	return context.Cause(a.ctx)
}

func (a *attempt) lostCause() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lostErr
}

// leaseLost is Request.Lost for locker i.
func (a *attempt) leaseLost(i int, cause error) {
	// In a guarded run a lock outside the database guards nothing the
	// database does not: its loss is noted, not acted on.
	a.lose(cause, a.guarded && !a.dbHeld[i])
}

// lose records a lease lost during the attempt and, unless harmless,
// stops the attempt: the body's context is cancelled with the cause, and
// the attempt is rolled back and run again.
func (a *attempt) lose(cause error, harmless bool) {
	if cause == nil {
		cause = ErrLockLost
	} else if !errors.Is(cause, ErrLockLost) {
		cause = fmt.Errorf("%w: %w", ErrLockLost, cause)
	}
	a.mu.Lock()
	if a.state == stateDone {
		a.mu.Unlock()
		return
	}
	if a.lossSeen == nil {
		a.lossSeen = cause
	}
	first := !harmless && a.lostErr == nil
	if first {
		a.lostErr = cause
	}
	a.mu.Unlock()
	noteFault()
	if first {
		a.cancel(cause)
	}
}

// lockerDegraded is Request.Degraded.
func (a *attempt) lockerDegraded(cause error) {
	if cause == nil {
		return
	}
	a.mu.Lock()
	if a.degraded == nil && a.state != stateDone {
		a.degraded = cause
	}
	a.mu.Unlock()
	noteFault()
}

var errWaitExpired = errors.New("txlock: lock wait expired")

// acquire takes keys in lockers [from, to) at stage st, with conn for the
// lockers that work in the database, all within one wait deadline, and
// adds the leases to the attempt. On error (or a Locker's panic) it gives
// back what it took and returns the error as Run reports it. If the attempt ended while it waited
// (a body that called Lock from a goroutine it did not wait for), it gives
// the locks back and returns ErrNotInRun.
func (a *attempt) acquire(ctx context.Context, from, to int, st Stage, conn Querier, keys []string, waitUntil time.Time) error {
	if from >= to || len(keys) == 0 {
		return nil
	}
	began := time.Now()
	defer func() {
		a.mu.Lock()
		a.lockWait += time.Since(began)
		a.mu.Unlock()
	}()
	taken, err := a.takeWithin(ctx, from, to, st, conn, keys, waitUntil)
	if err != nil {
		return err
	}
	a.mu.Lock()
	if a.state >= stateAfter {
		a.mu.Unlock()
		a.giveBack(taken, len(keys))
		return ErrNotInRun
	}
	a.leases = append(a.leases, taken...)
	a.mu.Unlock()
	return nil
}

// takeWithin takes keys in lockers [from, to) within the lock wait, which
// ends at waitUntil, and returns the error as Run reports it.
func (a *attempt) takeWithin(ctx context.Context, from, to int, st Stage, conn Querier, keys []string, waitUntil time.Time) ([]heldLease, error) {
	tryOnce := a.cfg.lockWait == 0
	wctx := ctx
	if !tryOnce {
		// Lazy: a key that is free is taken without a timer.
		d := withLazyDeadline(ctx, waitUntil, errWaitExpired)
		defer d.stop()
		wctx = d
	}
	taken, err := a.take(wctx, from, to, st, conn, keys, tryOnce)
	if err != nil {
		return nil, a.acquireError(wctx, keys, err)
	}
	return taken, nil
}

// take calls Acquire on lockers [from, to) in order. If one fails, or
// panics, it gives back what the others took.
func (a *attempt) take(wctx context.Context, from, to int, st Stage, conn Querier, keys []string, tryOnce bool) ([]heldLease, error) {
	taken := make([]heldLease, 0, to-from)
	done := false
	defer func() {
		if !done {
			a.giveBack(taken, len(keys))
		}
	}()
	for i := from; i < to; i++ {
		l := a.cfg.lockers[i]
		lease, err := l.Acquire(wctx, Request{
			Keys:      keys,
			Stage:     st,
			Conn:      conn,
			TxOptions: a.cfg.txOptions,
			TryOnce:   tryOnce,
			Guarded:   a.guarded,
			Queued:    a.queuedBefore(i),
			Lost:      func(cause error) { a.leaseLost(i, cause) },
			Degraded:  a.lockerDegraded,
		})
		if err == nil && isNil(lease) {
			err = fmt.Errorf("txlock: %T.Acquire returned a nil Lease and no error", l)
		}
		if err != nil {
			return nil, err
		}
		taken = append(taken, heldLease{lease: lease, locker: i, stage: st})
	}
	done = true
	return taken, nil
}

// queuedBefore reports whether a locker listed before locker i has leases
// that can expire (see Request.Queued).
func (a *attempt) queuedBefore(i int) bool {
	for j := range i {
		if !a.stable[j] {
			return true
		}
	}
	return false
}

// giveBack releases leases an acquire took before it failed. A lease on
// the connection that cannot confirm its release costs the connection.
func (a *attempt) giveBack(taken []heldLease, keys int) {
	ctx := a.detached(keys * len(taken))
	defer ctx.stop()
	for i := len(taken) - 1; i >= 0; i-- {
		if err := taken[i].lease.Release(ctx); err != nil && taken[i].stage == OnConn {
			a.discard = true
		}
	}
}

// acquireError turns a locker's error into what Run reports: the caller's
// cancellation, a lost lease, the locker's own verdict, or ErrLockBusy
// when the lock wait ran out.
func (a *attempt) acquireError(wctx context.Context, keys []string, err error) error {
	switch {
	case a.parent.Err() != nil:
		return fmt.Errorf("txlock: waiting for locks: %w", err)
	case a.lostCause() != nil:
		return a.lostCause()
	case errors.Is(err, ErrLockBusy), errors.Is(err, ErrLockUnavailable):
		return err
	case wctx.Err() != nil && (isContextErr(err) || errors.Is(err, errWaitExpired)):
		return fmt.Errorf("%w: %s after waiting %v", ErrLockBusy, describeKeys(keys), a.cfg.lockWait)
	}
	return err
}
