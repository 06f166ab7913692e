// Package txlocktest helps test code that calls txlock.Run, without a lock
// server and without waiting for a real fault:
//
//   - ConflictOn makes chosen attempts fail at COMMIT with a serialization
//     failure, so a test proves that the body is safe to run again;
//   - LoseLeaseOn makes chosen attempts lose their lease while the body
//     runs;
//   - UnknownCommitOn makes the outcome of chosen COMMITs unknown, as when
//     the connection breaks while COMMIT is in flight, with the data stored
//     or not;
//   - Locker is an in-memory txlock.Locker that records what it was asked
//     for, and can be made unavailable or made to lose a lease at any
//     moment.
//
// The options work with any database and any Locker; give them to the Run
// under test as you give it its other options. They are meant for tests:
// nothing in them is useful in production.
package txlocktest

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/seam"
)

// ConflictOn makes the COMMIT of each listed attempt (1 is the first) fail
// as a serialization failure (SQLSTATE 40001) would: COMMIT is not sent,
// the transaction is rolled back, and Run runs the whole transaction
// again, after its backoff, within its attempt limit. A body whose side
// effects are safe to repeat (or registered with txlock.AfterCommit) gives
// the same result with ConflictOn(1) as without it.
func ConflictOn(attempts ...int) txlock.Option {
	return option(faults{attempts: attempts, commit: func(n int, _ func() error) error {
		return &ConflictError{Attempt: n}
	}})
}

// ConflictError is the error ConflictOn puts in place of COMMIT's. Its
// SQLState is 40001, so Run, and sqladapter.Classify, take it for a
// serialization failure.
type ConflictError struct {
	Attempt int
}

// Error says which attempt the conflict was forced on.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("txlocktest: forced serialization failure (SQLSTATE 40001) at COMMIT of attempt %d", e.Attempt)
}

// SQLState returns "40001", serialization_failure.
func (e *ConflictError) SQLState() string { return "40001" }

// LoseLeaseOn makes each listed attempt lose a lease as its body starts,
// as a memcached lock that expired or was evicted would: the body's
// context is cancelled, with a cause wrapping txlock.ErrLockLost, COMMIT
// is never sent, and Run runs the transaction again. It shows what a body
// does when its context ends under it.
func LoseLeaseOn(attempts ...int) txlock.Option {
	return option(faults{attempts: attempts, body: func(n int) error {
		return fmt.Errorf("%w: txlocktest: lease lost on attempt %d", txlock.ErrLockLost, n)
	}})
}

// UnknownCommitOn makes the COMMIT of each listed attempt fail as if the
// connection broke while COMMIT was in flight. With committed set, COMMIT
// is sent first, so the transaction is stored; otherwise it is rolled
// back. Run then does what it does with an unknown outcome: on PostgreSQL,
// with a recorded transaction id (txlock.WithCommitCheck), it looks the
// transaction up and succeeds or runs it again; otherwise it returns an
// error wrapping txlock.ErrAmbiguousCommit, which the code under test must
// handle, for example by reading back what it wrote.
func UnknownCommitOn(committed bool, attempts ...int) txlock.Option {
	return option(faults{attempts: attempts, commit: func(n int, commit func() error) error {
		if committed {
			if err := commit(); err != nil {
				return err
			}
		}
		return fmt.Errorf("txlocktest: connection lost while COMMIT of attempt %d was in flight: %w", n, io.ErrUnexpectedEOF)
	}})
}

// faults implements seam.Faults for the listed attempts.
type faults struct {
	attempts []int
	body     func(n int) error
	commit   func(n int, commit func() error) error
}

func (f faults) BodyStarted(_ context.Context, n int) error {
	if f.body == nil || !slices.Contains(f.attempts, n) {
		return nil
	}
	return f.body(n)
}

func (f faults) Commit(_ context.Context, n int, commit func() error) error {
	if f.commit == nil || !slices.Contains(f.attempts, n) {
		return commit()
	}
	return f.commit(n, commit)
}

func option(f faults) txlock.Option {
	return seam.Option(f).(txlock.Option)
}
