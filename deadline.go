package txlock

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// lazyDeadline is a context that ends at a deadline, like
// context.WithDeadlineCause, but starts no timer until somebody waits for
// it on Done or derives a context from it. Run bounds each lock wait and
// each release with a deadline, and most of them never wait: a free key is
// taken, a lease released, in one round trip or none. A runtime timer for
// each would cost more than that work: adding one may wake an idle thread
// of the Go scheduler. Err, Deadline and Value work without the timer.
type lazyDeadline struct {
	parent   context.Context
	deadline time.Time
	cause    error

	once    sync.Once
	real    atomic.Pointer[context.Context] // set by materialize
	cancel  context.CancelFunc              // set with real
	stopped atomic.Bool                     // stopped before real was needed
}

// withLazyDeadline returns a context that ends at d, or with parent, with
// cause as context.Cause. Its stop method releases its resources.
func withLazyDeadline(parent context.Context, d time.Time, cause error) *lazyDeadline {
	return &lazyDeadline{parent: parent, deadline: d, cause: cause}
}

// materialize makes the real context, timer and all, once. It returns nil
// when the context was stopped before it was ever needed.
func (c *lazyDeadline) materialize() context.Context {
	c.once.Do(func() {
		ctx, cancel := context.WithDeadlineCause(c.parent, c.deadline, c.cause)
		c.cancel = cancel
		c.real.Store(&ctx)
	})
	if r := c.real.Load(); r != nil {
		return *r
	}
	return nil
}

// stop ends the context and releases its timer, if it made one.
func (c *lazyDeadline) stop() {
	c.once.Do(func() { c.stopped.Store(true) }) // never needed: no timer to stop
	if c.cancel != nil {
		c.cancel()
	}
}

func (c *lazyDeadline) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *lazyDeadline) Done() <-chan struct{} {
	if r := c.materialize(); r != nil {
		return r.Done()
	}
	return closedChan
}

func (c *lazyDeadline) Err() error {
	if r := c.real.Load(); r != nil {
		return (*r).Err()
	}
	if c.stopped.Load() {
		return context.Canceled
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		if r := c.materialize(); r != nil {
			return r.Err()
		}
		return context.Canceled
	}
	return nil
}

func (c *lazyDeadline) Value(key any) any {
	if r := c.real.Load(); r != nil {
		return (*r).Value(key)
	}
	if !c.stopped.Load() && !time.Now().Before(c.deadline) {
		// Past the deadline, context.Cause must find the cause.
		if r := c.materialize(); r != nil {
			return r.Value(key)
		}
	}
	return c.parent.Value(key)
}

// closedChan is the Done of a lazyDeadline stopped before it was needed.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()
