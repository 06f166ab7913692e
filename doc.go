// Package txlock runs a database/sql transaction while named locks are
// held, releases the locks when the transaction ends, and runs the whole
// transaction again when the database reports a conflict.
//
// It closes the gap between "check" and "write" across processes and
// machines: the double-submitted form, the retried POST, two app servers
// reserving the same name. The classic case is a name that may be active
// only once at a time but is reusable after it expires, which no UNIQUE
// constraint can guard:
//
//	err := txlock.Run(ctx, db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
//		taken, err := repo.NameActive(ctx, tx, name)
//		if err != nil {
//			return err
//		}
//		if taken {
//			return ErrNameTaken
//		}
//		return repo.InsertName(ctx, tx, name, expires)
//	}, txlock.WithLocker(memcachelock.New(mc)))
//
// The body receives a plain *sql.Tx, so existing repository functions run
// unchanged.
//
// # Correctness model: locks for throughput, the transaction for truth
//
// Lockers differ in what they promise:
//
//   - memcachelock keeps locks in memcached with a lease. Its waiters hold
//     no database connection, so a hot key cannot drain the pool. But the
//     lock is soft: it can expire under a paused process, be evicted, or
//     vanish when memcached restarts. Run verifies the lease just before
//     COMMIT and never commits under a lease it knows is lost, but a lease
//     can still be lost in the instant between that check and COMMIT.
//   - advisorylock keeps locks in Postgres itself, inside the transaction:
//     they end exactly when it ends, and they cannot be lost. Each waiter
//     holds a connection.
//   - LocalLocker (the default) keeps locks in this process only.
//
// So no guarantee should rest on a memcached lock alone. The guarantee
// comes from the database: advisory locks, SERIALIZABLE isolation, or a
// constraint, with the retries Run performs. The memcached lock makes the
// common case fast: writers queue instead of conflicting, so almost no
// attempt is wasted. Combine them to get both, memcached to queue writers
// outside the database, then advisory locks as the guarantee:
//
//	txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
//
// # Keys and release
//
// Keys are deduplicated and taken in one global (sorted) order, so two runs over
// the same keys never deadlock each other. Any non-empty string is a key,
// whatever its length or bytes; lockers hash keys where their backend needs it,
// and no key can inject anything into a protocol or a query. Empty or nil keys
// mean no lock at all: Run then only retries, which with SERIALIZABLE is a
// complete concurrency control of its own.
//
// Locks are released after the transaction commits or rolls back, on every path:
// success, error, panic (Run re-panics after the cleanup), context cancellation.
// Release runs on a context detached from the caller's cancellation, with its
// own deadline, so a cancelled request still gives its locks back. Lockers only
// ever release locks they still own.
//
// # Retries
//
// Run retries the whole transaction on serialization failures (40001),
// deadlocks (40P01), unique violations (23505), a lost lock, and a
// connection lost before COMMIT. It sleeps a jittered exponential backoff
// between attempts, after the failed one has rolled back and released its
// locks, never while holding them. It never retries an error the body
// returns on its own account, a busy lock, or a COMMIT whose outcome is
// unknown (ErrAmbiguousCommit). The body must therefore be safe to run more
// than once: keep side effects out of it, or register them with
// AfterCommit. Attempt tells the body which attempt it is in.
//
// By default Run makes at most DefaultMaxAttempts attempts, waits at most
// DefaultLockWait for its locks, and backs off retry.Default (5 ms doubling to
// 1 s, fully jittered). WithMaxAttempts, WithLockWait, WithBackoff and
// WithClassifier change that. WithObserver reports every attempt, for metrics.
//
// # Inside the body
//
// Lock takes more locks that are released with the transaction; Attempt
// returns the attempt number; AfterCommit registers work to do once the
// transaction has committed. All three take the body's context. Calling Run
// with that context is an error (ErrNestedRun), not a second transaction.
//
// # Writing a Locker
//
// A Locker says whether it works inside the transaction (InTx) and takes
// locks with Acquire; the Lease it returns is verified before COMMIT and
// released after the transaction ends. See Locker, Request and Lease.
package txlock
