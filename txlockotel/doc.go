// Package txlockotel reports txlock Runs to OpenTelemetry: a span per Run
// and per attempt, and metrics about attempts, retries, lock waits, lost
// leases, unknown COMMITs and unreachable lock services.
//
// It lives in a module of its own (github.com/txlock/txlock/txlockotel),
// so that txlock itself depends on no OpenTelemetry package. It is built
// on txlock.WithObserver and needs nothing else from txlock.
//
// # Setup
//
// Build the option once, at startup, and give it to every Run:
//
//	traced := txlockotel.New(
//		txlockotel.WithTracerProvider(tp), // default: otel.GetTracerProvider()
//		txlockotel.WithMeterProvider(mp),  // default: otel.GetMeterProvider()
//	)
//	err := txlock.Run(ctx, db, keys, fn, traced)
//
// NewObserver returns the same observer as a txlock.Observer, for callers
// who combine observers themselves.
//
// # Spans
//
// Run starts a span named "txlock.Run" (kind INTERNAL), a child of the span
// in the caller's context, and each attempt a span named "txlock.attempt"
// (kind INTERNAL), a child of the Run span. The attempt span's context is
// the one Run begins the transaction, takes the locks and calls the body
// on, so every span made for the attempt's statements is its child: with
// otelsql (github.com/XSAM/otelsql) wrapping the *sql.DB given to Run, or
// otelpgx (github.com/exaring/otelpgx) as the tracer of the pgx pool given
// to txlockpgx, the spans of BEGIN, of the body's statements (run with
// the body's ctx), of advisorylock's statements, of COMMIT, of ROLLBACK and
// of the lookup of an unknown COMMIT all hang under the attempt that ran
// them, and the attempts under their Run:
//
//	POST /names                (the caller's span)
//	└── txlock.Run
//	    ├── txlock.attempt     txlock.attempt.number=1, error.type=serialization_failure
//	    │   ├── BEGIN
//	    │   ├── SELECT ...
//	    │   └── COMMIT
//	    └── txlock.attempt     txlock.attempt.number=2, txlock.verdict=committed
//	        ├── BEGIN
//	        ├── SELECT ...
//	        └── COMMIT
//
// Nothing else is needed for that: txlockotel and otelsql or otelpgx meet
// only through the context.
// The backoff between attempts is the gap between two attempt spans.
//
// # Attributes
//
// Following the stable database semantic conventions (semconv v1.43.0):
//
//   - db.system.name: the database, as txlock tells it from the driver
//     (RunInfo.System: "postgresql", "sqlite", ...); left out when txlock
//     cannot tell.
//   - db.response.status_code: the SQLSTATE of the database error that
//     ended the attempt or the Run, when there is one.
//   - error.type, on failures only: for an attempt that failed with an
//     error Run retries (also the last one, which attempts ran out for) the
//     reason txlock gives (Event.Reason: "serialization_failure", "deadlock",
//     "unique_violation", "connection_lost", "lock_lost",
//     "lock_unavailable", "commit_aborted", "database_busy", "retryable");
//     for a final error "txlock.too_many_attempts",
//     "txlock.ambiguous_commit", "txlock.lock_busy",
//     "txlock.lock_unavailable", "txlock.lock_lost", "txlock.nested_run",
//     "txlock.not_in_run", "txlock.invalid", "timeout" (the context's
//     deadline), "canceled" (the context was cancelled), "panic" (the body
//     panicked), the value of an ErrorType() string method of an error in
//     the chain, the SQLSTATE of a database error, or "_OTHER".
//
// And txlock's own, in the txlock namespace:
//
//   - txlock.key.count (int, both spans): the number of distinct keys.
//   - txlock.attempt.number (int, attempt span): 1 first.
//   - txlock.attempt.count (int, Run span): the attempts made.
//   - txlock.verdict (string): "committed", "retry" (the attempt failed and
//     Run tries again) or "failed"; a Run is "committed" or "failed".
//   - txlock.lock.wait.duration (float, seconds, attempt span): how long the
//     attempt waited for its locks.
//   - txlock.commit.outcome (string, attempt span): set when the outcome of
//     COMMIT was unknown, to what Run then learned: "found_committed",
//     "found_aborted" or "unknown" (txlock.CommitOutcome.String).
//   - txlock.lock.degraded (bool, attempt span): true when a Locker carried
//     on without its lock (Event.Degraded); absent otherwise.
//   - txlock.lock.lease_lost (bool, attempt span): true when a lease was
//     lost during the attempt, whether or not that failed it; absent
//     otherwise.
//
// A failed attempt or Run gets span status Error, described by its
// error.type value.
//
// # Metrics
//
// Every instrument's name begins with "txlock."; each carries
// db.system.name when it is known.
//
//   - txlock.run.duration (histogram, s): how long Run took, backoff
//     included; error.type when it failed.
//   - txlock.run.attempts (histogram, {attempt}): attempts per Run;
//     error.type when it failed.
//   - txlock.retries (counter, {retry}): attempts Run ran again, by
//     error.type (the reason).
//   - txlock.lock.wait.duration (histogram, s): how long each attempt that
//     took locks waited for them.
//   - txlock.lock.lost_leases (counter, {lease}): attempts during which a
//     lease was lost, by txlock.verdict.
//   - txlock.ambiguous_commits (counter, {commit}): COMMITs whose outcome
//     was unknown, by txlock.commit.resolution: "resolved_committed" (looked
//     up: committed, Run succeeded), "resolved_aborted" (looked up: aborted,
//     Run retried) or "unresolved" (Run returned txlock.ErrAmbiguousCommit).
//   - txlock.lock.unavailable (counter, {attempt}): attempts that met an
//     unreachable lock service, by txlock.verdict and txlock.lock.degraded
//     (true when the attempt carried on without the lock, false when it
//     failed with txlock.ErrLockUnavailable).
//
// # What is never recorded
//
// Key values are never recorded: they can be personal data (a user name,
// an e-mail address), and txlock does not pass them to observers
// (txlock.RunInfo has only their number), so there is no option to record
// them. Error messages are never recorded either, neither as the span
// status description nor as exception events, because txlock's messages
// quote keys (txlock.ErrLockBusy names the busy key) and a body's error
// can carry anything; error.type and db.response.status_code say what
// failed. Statement text is left to otelsql or otelpgx and their own
// options.
package txlockotel
