package txlock

import (
	"context"
	"database/sql"
	"time"
)

// Observer watches Runs, for logs, traces and metrics. Every field is
// optional. The functions are called on the goroutine that called Run and
// must not block; they are called even when the body panics, before the
// panic goes on. Key values are never passed to an Observer: they can be
// personal data.
type Observer struct {
	// RunStart is called once Run has checked its arguments. The context
	// it returns (nil means ctx) is the parent of everything the run
	// does, so a tracer can start a span here.
	RunStart func(ctx context.Context, info RunInfo) context.Context

	// AttemptStart is called before each attempt takes its locks. The
	// context it returns (nil means ctx) is the parent of the attempt's
	// lock waits, its transaction and its body.
	AttemptStart func(ctx context.Context, info RunInfo, attempt int) context.Context

	// AttemptDone is called after each attempt, once its transaction has
	// ended and its locks are released, with the context AttemptStart
	// returned.
	AttemptDone func(ctx context.Context, info RunInfo, ev Event)

	// RunDone is called when Run returns, with the context RunStart
	// returned and the error Run returns.
	RunDone func(ctx context.Context, info RunInfo, res RunResult)
}

// RunInfo describes a Run to its observers.
type RunInfo struct {
	// Keys is the number of distinct keys given to Run.
	Keys int
	// Lockers are the lockers of the run, in order.
	Lockers []Locker
	// TxOptions are the options of every attempt's transaction.
	TxOptions *sql.TxOptions
	// MaxAttempts and LockWait are the run's limits.
	MaxAttempts int
	LockWait    time.Duration
	// System names the database as OpenTelemetry's db.system.name does
	// ("postgresql", "sqlite", "mysql", ...), told from the driver, or ""
	// when it cannot be told. See Database.
	System string
}

// RunResult is what a Run came to.
type RunResult struct {
	// Err is what Run returns.
	Err error
	// Attempts is the number of attempts made.
	Attempts int
	// Duration is the time Run took, backoff included.
	Duration time.Duration
	// Panicked reports that the body panicked (or called runtime.Goexit).
	Panicked bool
}

// Event describes one finished attempt.
type Event struct {
	// Attempt is the attempt number, 1 first.
	Attempt int
	// Err is the attempt's error, nil when it committed.
	Err error
	// Retry reports whether Run will make another attempt.
	Retry bool
	// Reason says why the attempt failed in a way that is retried, in
	// snake case: "serialization_failure", "deadlock", "unique_violation",
	// "connection_lost", "lock_lost", "lock_unavailable", "commit_aborted",
	// "database_busy" or "retryable". It is "" when Err is nil or final.
	Reason string
	// SQLState is the SQLSTATE code of the database error in Err, if any.
	SQLState string
	// LockWait is how long the attempt waited for its locks.
	LockWait time.Duration
	// Duration is how long the attempt took, lock wait included.
	Duration time.Duration
	// LeaseLost is the first loss of a lease a Locker reported during the
	// attempt, whether it made the attempt fail or was only noted because
	// a lock held in the database guarded the run.
	LeaseLost error
	// Degraded is the first reason a Locker gave for carrying on without
	// its lock (see Request.Degraded).
	Degraded error
	// Commit is what Run learned about a COMMIT whose outcome was unknown.
	Commit CommitOutcome
	// ReleaseErr is the first error a Lease.Release returned, if any. It
	// does not change the outcome: the transaction had already ended.
	ReleaseErr error
	// Panicked reports that the body panicked (or called runtime.Goexit).
	Panicked bool
}

// CommitOutcome is what Run learned about a COMMIT whose outcome was
// unknown; see CommitCheck.
type CommitOutcome int

const (
	// CommitKnown means COMMIT answered, or was never sent.
	CommitKnown CommitOutcome = iota
	// CommitFoundCommitted means COMMIT failed but the transaction turned
	// out to be committed: Run succeeded.
	CommitFoundCommitted
	// CommitFoundAborted means COMMIT failed and the transaction turned
	// out not to be committed: Run retried it.
	CommitFoundAborted
	// CommitUnknown means the outcome could not be found out: Run returned
	// ErrAmbiguousCommit.
	CommitUnknown
)

// String returns the outcome in snake case, as metrics label it.
func (c CommitOutcome) String() string {
	switch c {
	case CommitKnown:
		return "known"
	case CommitFoundCommitted:
		return "found_committed"
	case CommitFoundAborted:
		return "found_aborted"
	case CommitUnknown:
		return "unknown"
	}
	return "CommitOutcome(?)"
}

// observers calls every Observer's hooks in order.
type observers []Observer

func (os observers) runStart(ctx context.Context, info RunInfo) context.Context {
	for _, o := range os {
		if o.RunStart != nil {
			if c := o.RunStart(ctx, info); c != nil {
				ctx = c
			}
		}
	}
	return ctx
}

func (os observers) attemptStart(ctx context.Context, info RunInfo, n int) context.Context {
	for _, o := range os {
		if o.AttemptStart != nil {
			if c := o.AttemptStart(ctx, info, n); c != nil {
				ctx = c
			}
		}
	}
	return ctx
}

func (os observers) attemptDone(ctx context.Context, info RunInfo, ev Event) {
	for _, o := range os {
		if o.AttemptDone != nil {
			o.AttemptDone(ctx, info, ev)
		}
	}
}

func (os observers) runDone(ctx context.Context, info RunInfo, res RunResult) {
	for _, o := range os {
		if o.RunDone != nil {
			o.RunDone(ctx, info, res)
		}
	}
}
