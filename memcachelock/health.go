package memcachelock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/txlock/txlock"
)

// health is what a Locker knows of memcached's availability, shared by all
// its Runs. While memcached is down, one caller at a time probes it, after a
// backoff with jitter that grows with each failed probe; the others wait for
// that probe's outcome instead of all dialing, or, when they may carry on
// without the lock, do so at once.
type health struct {
	mu      sync.Mutex
	down    bool
	lastErr error     // the failure that marked it down
	fails   int       // failed probes in a row
	next    time.Time // when the next probe may start
	probing bool      // a probe is in flight
	changed chan struct{}
}

// Probe backoff: from probeBase, doubling, to probeMax, each jittered
// between half and all of it: one dial per Locker every 100 ms at most
// while memcached is down, and a restart is noticed within 100 ms of its
// end.
const (
	probeBase = 10 * time.Millisecond
	probeMax  = 100 * time.Millisecond
)

// errDown is returned by enter to a caller that may not wait.
var errDown = errors.New("memcached is down")

// enter is called before the calls of one step of the acquire protocol. It
// returns probe=false and nil when memcached is up. When it is down: if a
// probe is due and none is in flight the caller becomes the prober
// (probe=true); otherwise a caller that may not wait gets an error wrapping
// errDown and the last failure, and one that may waits for the next probe
// or for ctx to end (then an error wrapping the last failure).
func (h *health) enter(ctx context.Context, wait bool) (probe bool, err error) {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		h.mu.Lock()
		if !h.down {
			h.mu.Unlock()
			return false, nil
		}
		now := time.Now()
		if !h.probing && !now.Before(h.next) {
			h.probing = true
			h.mu.Unlock()
			return true, nil
		}
		last := h.lastErr
		if !wait {
			h.mu.Unlock()
			return false, fmt.Errorf("%w: %w", errDown, last)
		}
		ch, d := h.changed, h.next.Sub(now)
		if h.probing {
			d = probeMax
		}
		h.mu.Unlock()
		if t == nil {
			t = time.NewTimer(d)
		} else {
			t.Reset(d)
		}
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return false, fmt.Errorf("%w (still down when the wait ended: %w)", last, ctx.Err())
		}
	}
}

// exit reports the outcome of the calls made after enter: err is the first
// error that says memcached could not be used (nil if none).
func (h *health) exit(probe bool, err error) {
	failed := unreachable(err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if probe {
		h.probing = false
	}
	switch {
	case failed:
		if !h.down {
			h.down, h.fails = true, 0
		}
		h.fails++
		h.lastErr = err
		d := min(probeBase<<min(h.fails-1, 16), probeMax)
		h.next = time.Now().Add(d/2 + rand.N(d/2+1))
	case h.down:
		h.down, h.fails, h.lastErr = false, 0, nil
	default:
		return // up and still up: nobody to wake
	}
	if h.changed != nil {
		close(h.changed)
	}
	h.changed = make(chan struct{})
}

// isDown reports whether memcached is known to be down, and why.
func (h *health) isDown() (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.down, h.lastErr
}

// downError is the error of a call refused because memcached is down.
func downError(op string, err error) error {
	return fmt.Errorf("%w: memcachelock: %s: memcached is down: %w", txlock.ErrLockUnavailable, op, err)
}
