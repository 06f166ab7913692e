package txlock

import (
	"context"
	"database/sql"
)

// Locker is a backend for named locks: the in-process [LocalLocker],
// memcachelock, advisorylock, or your own.
//
// Run calls Acquire once per attempt and locker, with every key of the run,
// and again from [Lock] for keys added by the body. It calls Verify on every
// lease just before COMMIT and Release on every lease after COMMIT or
// ROLLBACK, on every path, including errors, panics and cancellation.
//
// An implementation must be safe for concurrent use.
type Locker interface {
	// InTx reports whether the locks live inside the database transaction,
	// as Postgres advisory locks do. Run acquires lockers in the order
	// given to WithLocker and starts the transaction just before the first
	// locker that reports true, so lockers that report false and come
	// first (memcached, in-process) are acquired while no database
	// connection is held.
	InTx() bool

	// Acquire takes the locks named by req.Keys and returns a Lease that
	// holds them. It must hold nothing when it returns an error.
	//
	// ctx ends when the lock wait runs out or the caller gives up; Acquire
	// then returns ctx.Err() (or an error wrapping it), and Run reports
	// ErrLockBusy or the caller's cancellation as appropriate. With
	// req.TryOnce it must not wait at all, and returns an error wrapping
	// ErrLockBusy if a lock is taken. An unreachable lock service is an
	// error wrapping ErrLockUnavailable.
	Acquire(ctx context.Context, req Request) (Lease, error)
}

// Request is what Run asks of a Locker.
type Request struct {
	// Keys are the lock names: not empty, deduplicated and sorted, none of
	// them empty. Any byte may appear in a key and keys can be of any
	// length; a Locker that cannot store a key as it is must map it
	// injectively enough (a cryptographic hash) and never pass it raw into
	// a protocol or a query.
	Keys []string

	// Tx is the attempt's transaction. It is nil when the Locker is
	// acquired before BEGIN, and set for an InTx Locker and for keys added
	// by Lock from inside the body.
	Tx *sql.Tx

	// TryOnce says not to wait: a lock held by someone else is ErrLockBusy
	// at once.
	TryOnce bool

	// Lost tells Run that a lease has been lost while the attempt runs:
	// Run cancels the body's context with cause, rolls back and retries.
	// cause should wrap ErrLockLost. Lost may be called from any goroutine,
	// more than once, and after the attempt has ended; only the first call
	// during the attempt has an effect.
	Lost func(cause error)
}

// Lease is the locks one Acquire took.
type Lease interface {
	// Verify checks, just before COMMIT, that the locks are still held by
	// this lease. An error wrapping ErrLockLost makes Run roll back and
	// retry; any other error makes Run roll back and return it. It must be
	// cheap: it runs on every commit.
	Verify(ctx context.Context) error

	// Release gives the locks back. Run calls it exactly once, after the
	// transaction has committed or rolled back, with a context that is not
	// cancelled by the caller's cancellation but has a deadline. Release
	// must only ever free locks this lease still owns.
	Release(ctx context.Context) error
}

// Stable is an optional interface of a Locker whose leases stay held until
// they are released: it never calls Request.Lost. LocalLocker and
// advisorylock implement it. When every locker of a Run is Stable and the
// caller's context can never be cancelled, Run gives the body that context
// as it is, rather than a cancellable one; some drivers (pgx) pay for every
// cancellable context they are given. A Locker that cannot promise this
// must not implement Stable.
type Stable interface {
	LeasesCannotBeLost() bool
}
