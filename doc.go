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
//   - advisorylock keeps locks in Postgres itself, where they cannot be
//     lost: at READ COMMITTED transaction-level locks, which end exactly
//     with the transaction; at REPEATABLE READ and SERIALIZABLE
//     session-level locks, taken before BEGIN (so that the snapshot
//     follows the lock) and released right after COMMIT or ROLLBACK. Each
//     waiter holds a connection.
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
// Keys are deduplicated and taken in one global (sorted) order, so two runs
// over the same keys never deadlock each other. Any non-empty string is a
// key, whatever its length or bytes; lockers hash keys where their backend
// needs it, and no key can inject anything into a protocol or a query. An
// empty string is not a key: it is an error wrapping ErrInvalid. A nil or
// empty keys slice takes no lock at all: Run then only retries, which with
// SERIALIZABLE is a complete concurrency control of its own.
//
// Locks are released after the transaction commits or rolls back, on every
// path: success, error, panic (Run re-panics after the cleanup), context
// cancellation. Release runs on a context detached from the caller's
// cancellation, with a deadline that grows with the number of keys, so a
// cancelled request still gives its locks back. Lockers only ever release
// locks they still own.
//
// # What is retried
//
// Run runs the whole transaction again (new BEGIN, new snapshot, new
// locks), after a jittered exponential backoff slept once the failed
// attempt has rolled back and released its locks, never while holding
// them, when the attempt failed because:
//
//  1. a lease was lost while the attempt ran (ErrLockLost): a memcached
//     lock expired, was evicted or flushed, or memcached restarted;
//  2. a lease could not be verified before COMMIT because the lock service
//     did not answer (ErrLockUnavailable at verification);
//  3. before COMMIT, the database reported a conflict (serialization
//     failure 40001, deadlock 40P01, unique violation 23505, which
//     WithClassifier can narrow to chosen constraints; SQLite's BUSY) or
//     the connection was lost (class 08, 57P01–57P03, a broken connection,
//     driver.ErrBadConn): nothing was committed, and the next attempt gets
//     a fresh connection;
//  4. the database refused the COMMIT itself with such a conflict;
//  5. the outcome of COMMIT was unknown, and the database, asked afterwards,
//     said the transaction had aborted (see CommitCheck).
//
// It never retries, and returns the error (wrapping the driver's, for
// errors.As), when:
//
//  6. the caller's context ended: Run stops at once and returns its cause,
//     with the last attempt's error;
//  7. txlock itself says no: ErrLockBusy (the lock wait ran out),
//     ErrLockUnavailable (the lock service was still unreachable when the
//     lock wait was spent), ErrInvalid, ErrNestedRun, ErrNotInRun;
//  8. the body returned an error of its own, or the database any other
//     error: they are the caller's to handle;
//  9. COMMIT was not sent because the transaction had already ended (the
//     body committed or rolled it back itself: sql.ErrTxDone);
//  10. the outcome of COMMIT is unknown (the connection broke while it was
//     in flight) and could not be found out: ErrAmbiguousCommit. When the
//     database says the transaction committed, Run succeeds instead.
//
// After the last allowed attempt Run returns an error wrapping
// ErrTooManyAttempts and the last attempt's error. The body must therefore
// be safe to run more than once: keep side effects out of it, or register
// them with AfterCommit. Attempt tells the body which attempt it is in.
//
// By default Run makes at most DefaultMaxAttempts attempts, waits at most
// DefaultLockWait for its locks in each, and backs off retry.Default (5 ms
// doubling to 1 s, fully jittered). WithMaxAttempts, WithLockWait,
// WithBackoff and WithClassifier change that; WithObserver reports every
// attempt, for logs and metrics.
//
// # When a lock service is down
//
// A lock service that does not answer (memcached restarting, a network
// blip) is waited out within the lock wait and the context, with backoff,
// holding no database connection; only a service still down when the wait
// is spent is ErrLockUnavailable. When a Locker that holds its locks in
// the database (advisorylock) is in the run, the others guard nothing it
// does not, and the run goes on under it alone while they cannot be
// reached (see Request.Guarded and Event.Degraded).
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
// A Locker says, through its Traits, at which stage of an attempt its locks
// are taken (before BEGIN, on the connection, or inside the transaction)
// and whether they can be lost; Acquire takes them, and the Lease it
// returns is verified before COMMIT and released after the transaction
// ends. See Locker, Traits, Request and Lease. A Locker that implements
// Checker can be checked at startup with Check.
package txlock
