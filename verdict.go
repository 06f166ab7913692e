package txlock

import (
	"context"
	"database/sql"
	"errors"

	"github.com/txlock/txlock/sqladapter"
)

// phase is where in an attempt an error came from.
type phase int

const (
	phaseLock   phase = iota // acquiring locks, at any stage
	phaseBegin               // reserving a connection, or BEGIN
	phaseBody                // the body, and Run's own statements before COMMIT
	phaseVerify              // Lease.Verify and the last look at the context, just before COMMIT
	phaseCommit              // COMMIT
)

// verdict is what an attempt's error means for the run.
type verdict int

const (
	final     verdict = iota // return the error
	again                    // run the whole transaction again
	ambiguous                // COMMIT may have happened: look it up, else ErrAmbiguousCommit
)

// classifier sorts the database's errors; see WithClassifier.
type classifier = func(error, sqladapter.Phase) sqladapter.Class

// decide is the one place that says what an attempt's error means. Its
// cases are the rows of the package documentation's "What is retried"
// section, numbered alike. err is the attempt's error, ph the phase it came
// from, lost the lease loss that stopped the attempt (nil if none),
// callerDone whether the caller's context has ended, and classify the
// run's classifier of database errors. Nothing else decides whether to
// retry: the Run loop only applies the limits (attempts, backoff) to a
// retry verdict, and the lookup of an ambiguous COMMIT (attempt.lookUp)
// turns it into success, a retry (row 5) or ErrAmbiguousCommit (row 10).
//
// reason names the cause of a retry for observers (see Event.Reason).
func decide(err error, ph phase, lost error, callerDone bool, classify classifier) (v verdict, reason string) {
	if ph == phaseCommit {
		return decideCommit(err, callerDone, classify)
	}
	switch {
	// 6. The caller gave up: stop, keeping the last error.
	case callerDone:
		return final, ""

	// 1. A lease was lost while the attempt ran: whatever the body's
	//    statements made of the cancellation, run it again under new
	//    locks. COMMIT was not sent.
	case lost != nil, errors.Is(err, ErrLockLost):
		return again, "lock_lost"

	// 2. A lease that cannot be verified because its service is down:
	//    never commit under it; the next attempt waits the outage out.
	case ph == phaseVerify && errors.Is(err, ErrLockUnavailable):
		return again, "lock_unavailable"

	// 7. txlock's own final answers: the caller's limits and mistakes,
	//    and a lock service still down when the lock wait was spent.
	case errors.Is(err, ErrLockBusy), errors.Is(err, ErrLockUnavailable),
		errors.Is(err, ErrInvalid), errors.Is(err, ErrNestedRun), errors.Is(err, ErrNotInRun):
		return final, ""
	}

	// 3. and 8. The database's errors, by the run's classifier. Before
	//    COMMIT nothing was committed, so a connection lost under a
	//    statement (Ambiguous) is safe to run again too.
	switch classify(err, sqladapter.InTx) {
	case sqladapter.Retryable:
		return again, retryReason(err)
	case sqladapter.Ambiguous:
		return again, "connection_lost"
	}
	return final, ""
}

// decideCommit is decide for COMMIT's own error.
func decideCommit(err error, callerDone bool, classify classifier) (verdict, string) {
	switch {
	// 9. database/sql did not send COMMIT: the transaction had already
	//    ended (the body committed or rolled it back itself, or
	//    database/sql rolled it back when the context ended).
	case errors.Is(err, sql.ErrTxDone):
		return final, ""

	// 10. The driver gave up on a COMMIT in flight because its context
	//     ended (Run checks the context just before COMMIT, so this is
	//     not a COMMIT left unsent): the outcome is unknown.
	case isContextErr(err):
		return ambiguous, ""
	}
	switch classify(err, sqladapter.AtCommit) {
	// 4. The database refused the COMMIT (a serialization failure at
	//    COMMIT, a deferred unique constraint): nothing was committed.
	case sqladapter.Retryable:
		if callerDone {
			return final, "" // 6.
		}
		return again, retryReason(err)
	// 10. The connection broke while COMMIT was in flight.
	case sqladapter.Ambiguous:
		return ambiguous, ""
	}
	// 8. Any other answer of the database: not committed, and final.
	return final, ""
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// retryReason names a retryable database error for observers.
func retryReason(err error) string {
	if r := sqladapter.Reason(err); r != "" {
		return r
	}
	return "retryable"
}

// isFault reports whether an attempt's failure is a sign of bad weather
// (see CommitCheckAuto): a lost connection, a lock service that could not
// be reached, a lost lease, an unknown COMMIT.
func isFault(v verdict, reason string, err error) bool {
	switch {
	case v == ambiguous:
		return true
	case reason == "connection_lost", reason == "lock_lost", reason == "lock_unavailable", reason == "commit_aborted":
		return true
	}
	return errors.Is(err, ErrLockUnavailable)
}
