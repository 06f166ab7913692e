// Package retry runs an operation again when it fails in a way that may pass:
// a limit on attempts, a backoff between them, and a context that can stop
// it all. It is what txlock.Run uses between attempts, and it stands on its
// own for any other operation.
//
// A [Backoff] is a pure function of the retry number, so nothing is shared
// between two callers and every call of [Do] starts from a fresh state. The
// jitter comes from math/rand/v2, which is safe for concurrent use.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Backoff says how long to wait before a retry. Delay is called with 1
// before the first retry, 2 before the second, and so on. It must be safe
// for concurrent use.
type Backoff interface {
	Delay(retry int) time.Duration
}

// BackoffFunc adapts a function to a Backoff.
type BackoffFunc func(retry int) time.Duration

// Delay returns f(retry).
func (f BackoffFunc) Delay(retry int) time.Duration { return f(retry) }

// Exponential is exponential backoff with full jitter: the delay before
// retry n is uniform in [0, min(Max, Base·2^(n-1))]. Full jitter spreads
// writers that failed together, so they do not collide again in lockstep
// (see "Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
//
// A Base of zero or less means no delay. A Max of zero or less means no cap.
type Exponential struct {
	Base time.Duration
	Max  time.Duration
}

// Delay returns the jittered delay before retry number n.
func (e Exponential) Delay(n int) time.Duration {
	if e.Base <= 0 {
		return 0
	}
	if n < 1 {
		n = 1
	}
	ceiling := e.Base
	for i := 1; i < n; i++ {
		if e.Max > 0 && ceiling >= e.Max {
			break
		}
		if ceiling > time.Duration(1<<62)/2 {
			break // doubling again would overflow
		}
		ceiling *= 2
	}
	if e.Max > 0 && ceiling > e.Max {
		ceiling = e.Max
	}
	return rand.N(ceiling + 1)
}

// Constant waits the same duration before every retry. Zero or less means
// no delay.
type Constant time.Duration

// Delay returns the constant, or 0 if it is negative.
func (c Constant) Delay(int) time.Duration { return max(time.Duration(c), 0) }

// Default is the backoff txlock.Run uses unless told otherwise: 5 ms doubling
// to at most 1 s, fully jittered.
var Default Backoff = Exponential{Base: 5 * time.Millisecond, Max: time.Second}

// Sleep waits for d or until ctx is done, whichever is first. It returns nil
// after a full wait and context.Cause(ctx) otherwise. It does not start a
// timer for a non-positive d, but still reports an already-done context.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// retryableError marks an error as worth another attempt.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// Retryable marks err as worth another attempt for Do. It returns nil for a
// nil err. Do returns a marked error only when the attempts ran out.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &retryableError{err: err}
}

// IsRetryable reports whether err was marked with Retryable. An error Do
// returns is marked only when the attempts ran out.
func IsRetryable(err error) bool {
	var r *retryableError
	return errors.As(err, &r)
}

// Do calls fn until it returns nil, an error not marked [Retryable], or
// maxAttempts attempts have been made, sleeping b.Delay(n) between attempts.
// fn receives the attempt number, 1 first.
//
// Do returns nil on success; fn's error as it is when it is not marked;
// after maxAttempts, the last error, still marked, so that [IsRetryable]
// tells exhaustion from a final error (errors.Is and errors.As see through
// the mark); and an error wrapping both context.Cause(ctx) and the last
// error, unmarked, when ctx ends between attempts. A nil b means no delay. maxAttempts below 1, a nil
// ctx or a nil fn is an error, and fn is not called.
func Do(ctx context.Context, maxAttempts int, b Backoff, fn func(ctx context.Context, attempt int) error) error {
	switch {
	case ctx == nil:
		return errors.New("retry: nil context")
	case fn == nil:
		return errors.New("retry: nil function")
	case maxAttempts < 1:
		return fmt.Errorf("retry: maxAttempts is %d, want at least 1", maxAttempts)
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	for attempt := 1; ; attempt++ {
		err := fn(ctx, attempt)
		var r *retryableError
		if err == nil || !errors.As(err, &r) {
			return err
		}
		last := r.err
		if attempt >= maxAttempts {
			return &retryableError{err: fmt.Errorf("retry: %d attempts, all failed: %w", attempt, last)}
		}
		var d time.Duration
		if b != nil {
			d = b.Delay(attempt)
		}
		if err := Sleep(ctx, d); err != nil {
			return fmt.Errorf("retry: stopped before attempt %d: %w (last error: %w)", attempt+1, err, last)
		}
	}
}
