package txlock

import "errors"

var (
	// ErrLockBusy means a lock was held by someone else for longer than the
	// lock wait allowed (at once, with WithLockWait(0)). Run returns it
	// without retrying: the caller asked not to wait longer.
	ErrLockBusy = errors.New("txlock: lock busy")

	// ErrAmbiguousCommit means COMMIT was sent but its outcome is unknown,
	// typically because the connection broke while it was in flight. The
	// transaction may or may not have committed. Run never retries it; the
	// caller must find out, for example by reading back what it wrote. The
	// driver's error stays in the chain for errors.As.
	ErrAmbiguousCommit = errors.New("txlock: commit outcome unknown")

	// ErrTooManyAttempts means every allowed attempt failed with a
	// retryable error. The error Run returns wraps it and the last attempt's
	// error, so errors.As still finds the driver's error.
	ErrTooManyAttempts = errors.New("txlock: too many attempts")

	// ErrNotInRun is returned by Lock and AfterCommit when their context does
	// not come from a running transaction body, or comes from one that has
	// already ended.
	ErrNotInRun = errors.New("txlock: not inside a Run transaction body")

	// ErrNestedRun is returned by Run when its context comes from inside
	// another Run's body. A second Run would start a second, unrelated
	// transaction on another connection: its writes would commit even if
	// the outer one rolls back, and it could wait on locks the outer one
	// holds. Use the outer tx, or Lock, instead.
	ErrNestedRun = errors.New("txlock: Run called from inside another Run's body")

	// ErrLockLost means a lock was taken away while its transaction ran:
	// its lease expired, it was evicted, or the lock server restarted. Run
	// rolls the attempt back and retries it; a Locker reports a loss by
	// calling Request.Lost or by returning an error wrapping ErrLockLost
	// from Lease.Verify.
	ErrLockLost = errors.New("txlock: lock lost")

	// ErrLockUnavailable means the lock service could not be reached:
	// returned by Run when it was still unreachable when the lock wait was
	// spent. Lockers wrap it around the transport error, which stays in the
	// chain. A lease that cannot be verified before COMMIT for this reason
	// makes Run roll back and retry instead.
	ErrLockUnavailable = errors.New("txlock: lock service unavailable")

	// ErrInvalid is wrapped by every error about bad arguments: a nil
	// database, body or context, an empty key, a bad option.
	ErrInvalid = errors.New("txlock: invalid argument")
)
