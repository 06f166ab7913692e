package txlock

import (
	"context"
	"database/sql"
)

// Locker is a backend for named locks: the in-process [LocalLocker],
// memcachelock, advisorylock, or your own.
//
// In every attempt Run asks each Locker for its [Traits], then calls
// Acquire once with every key of the run, at the stage the traits name,
// and again from [Lock] for keys the body adds. It calls Verify on every
// lease that can be lost just before COMMIT, and Release on every lease
// after COMMIT or ROLLBACK, on every path, including errors, panics and
// cancellation.
//
// An implementation must be safe for concurrent use.
type Locker interface {
	// Traits says when Run must call Acquire in an attempt and what its
	// leases promise, for a transaction begun with opts (nil for the
	// driver's defaults). It must be cheap: Run calls it once per attempt.
	Traits(opts *sql.TxOptions) Traits

	// Acquire takes the locks named by req.Keys and returns a Lease that
	// holds them. It must hold nothing when it returns an error.
	//
	// ctx ends when the lock wait runs out or the caller gives up; Acquire
	// then returns an error wrapping ctx.Err(), and Run reports ErrLockBusy
	// or the caller's cancellation as appropriate. With req.TryOnce it must
	// not wait at all, and returns an error wrapping ErrLockBusy if a lock
	// is taken. A lock service that cannot be reached is waited out until
	// ctx ends, then reported as an error wrapping ErrLockUnavailable.
	Acquire(ctx context.Context, req Request) (Lease, error)
}

// Stage is the point of an attempt at which Run acquires a Locker's locks.
type Stage int

const (
	// BeforeBegin locks are taken while the attempt holds no database
	// connection, so that a waiter does not take one from the pool:
	// memcachelock and LocalLocker.
	BeforeBegin Stage = iota
	// OnConn locks are taken on the connection that will run the
	// transaction, before BEGIN, so that the transaction's snapshot is
	// taken after the lock is held (advisorylock at REPEATABLE READ and
	// SERIALIZABLE, with Postgres session-level locks). Request.Conn runs
	// statements on that connection.
	OnConn
	// InTx locks are taken inside the transaction and end with it
	// (advisorylock at READ COMMITTED). Request.Conn runs statements in
	// the transaction.
	InTx
)

// String returns the stage's name.
func (s Stage) String() string {
	switch s {
	case BeforeBegin:
		return "before BEGIN"
	case OnConn:
		return "on the connection"
	case InTx:
		return "in the transaction"
	}
	return "Stage(?)"
}

// Traits describes a Locker to Run.
type Traits struct {
	// Stage is when Run acquires the locks. Lockers are taken in the
	// order given to WithLocker, so a Locker listed after one of a later
	// stage is taken at that later stage; Request.Stage tells it which.
	Stage Stage

	// Stable promises that a lease stays held until it is released: the
	// Locker never calls Request.Lost, and Lease.Verify always succeeds.
	// Run then skips Verify, and when every Locker of a run is Stable and
	// the caller's context cannot be cancelled it gives the body that
	// context as it is (some drivers, pgx among them, pay for every
	// cancellable context). A Stable Locker at stage OnConn or InTx holds
	// its locks in the database itself: Run then treats every other
	// Locker of the run as an optimisation (see Request.Guarded).
	Stable bool
}

// Request is what Run asks of a Locker.
type Request struct {
	// Keys are the lock names: not empty, deduplicated and sorted, none of
	// them empty. Any byte may appear in a key and keys can be of any
	// length; a Locker that cannot store a key as it is must map it
	// injectively enough (a cryptographic hash) and never pass it raw into
	// a protocol or a query.
	Keys []string

	// Stage is the stage at which this Acquire runs. It is the Locker's
	// own Traits.Stage, or a later one when the Locker was listed after a
	// Locker of a later stage, or InTx for keys added by Lock.
	Stage Stage

	// Conn runs statements for lockers that work in the database: on the
	// attempt's connection before BEGIN at stage OnConn, in the
	// transaction at stage InTx. It is nil at stage BeforeBegin. It must
	// not be kept after Release returns.
	Conn Querier

	// TxOptions are the options of the attempt's transaction (nil for the
	// driver's defaults).
	TxOptions *sql.TxOptions

	// TryOnce says not to wait: a lock held by someone else is ErrLockBusy
	// at once.
	TryOnce bool

	// Guarded reports that another Locker of this run holds its locks in
	// the database (a Stable Locker at stage OnConn or InTx), so that
	// mutual exclusion does not rest on this one. A Locker whose service
	// cannot be reached may then carry on without its lock, after calling
	// Degraded, instead of waiting the outage out; Run ignores losses it
	// reports and does not call its Verify.
	Guarded bool

	// Queued reports that an earlier Locker of this run has leases that
	// can expire (memcachelock): writers queue there, so this Locker's
	// locks are normally free when asked for. When one is not, its holder
	// has outlived its lease there (it was paused or cut off), or that
	// Locker's service is down and writers come straight here. A Locker
	// that would wait in its server's queue should then poll instead: a
	// lock granted in a queue to a waiter that has itself been paused
	// stays held for as long as that pause, and such holds chain.
	Queued bool

	// Lost tells Run that a lease has been lost while the attempt runs:
	// Run cancels the body's context with cause, rolls back and retries
	// (unless the run is Guarded). cause should wrap ErrLockLost. Lost may
	// be called from any goroutine, more than once, and after the attempt
	// has ended; only the first call during the attempt has an effect.
	Lost func(cause error)

	// Degraded tells Run that the Locker carries on without (some of) its
	// locks, and why: its service is unreachable and the run is Guarded,
	// or the Locker was configured to fail open. Run reports it to the
	// observers (see Event.Degraded). It may be called from any goroutine.
	Degraded func(cause error)
}

// Lease is the locks one Acquire took.
type Lease interface {
	// Verify checks, just before COMMIT, that the locks are still held by
	// this lease. An error wrapping ErrLockLost (the lock is gone) or
	// ErrLockUnavailable (the service cannot tell) makes Run roll back and
	// retry; any other error makes Run roll back and return it. It must be
	// cheap: it runs on every commit. Run does not call it for Stable
	// lockers, nor for any Locker of a Guarded run.
	Verify(ctx context.Context) error

	// Release gives the locks back. Run calls it exactly once, after the
	// transaction has committed or rolled back, with a context that is not
	// cancelled by the caller's cancellation but has a deadline that grows
	// with the number of keys. Release must only ever free locks this lease
	// still owns. An OnConn lease that cannot confirm its release must
	// return an error: Run then closes the connection instead of putting
	// it back in the pool, which ends the session and its locks.
	Release(ctx context.Context) error
}

// Checker is implemented by Lockers that can tell, before the first Run,
// whether they are usable: configured correctly and their service
// reachable. memcachelock and advisorylock implement it; see Check.
type Checker interface {
	Check(ctx context.Context) error
}

// Querier runs one statement that returns at most one row, on a database
// connection or in a transaction. Lockers that work in the database run
// their statements through it (see Request.Conn).
type Querier interface {
	QueryRow(ctx context.Context, query string, args ...any) Row
}

// Row is the result of Querier.QueryRow: *sql.Row and pgx.Row satisfy it.
// Scan reports sql.ErrNoRows (or the driver's equivalent) when there was
// no row, and the statement's error when it failed.
type Row interface {
	Scan(dest ...any) error
}
