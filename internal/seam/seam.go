// Package seam lets the txlocktest package make Run meet faults on purpose
// (a conflict at COMMIT, a lost lease, an unknown COMMIT outcome) without
// widening txlock's public API. Package txlock sets Option when it is
// initialised; nothing else in the module uses this package.
package seam

import "context"

// Faults are consulted by Run at fixed points of every attempt.
type Faults interface {
	// BodyStarted is called as the body of attempt n starts. A non-nil
	// error is reported as a lease lost while the body runs: the body's
	// context is cancelled with it as the cause, and the attempt is rolled
	// back and run again.
	BodyStarted(ctx context.Context, attempt int) error

	// Commit is called in place of COMMIT for attempt n; commit sends the
	// real one. What Commit returns is taken as COMMIT's result. If it
	// does not call commit, the transaction is rolled back.
	Commit(ctx context.Context, attempt int, commit func() error) error
}

// Option makes a txlock.Option (returned as any) that adds f to a run's
// faults. It is set by package txlock.
var Option func(f Faults) any
