package memcachelock

import (
	"sync"
	"time"
)

// schedule runs the refreshers of a Locker's holds on one timer, which
// runs while the Locker has holds and stops when it has none. A timer per
// hold would cost a runtime timer for every acquire, and adding one can wake
// an idle scheduler thread: more CPU than the rest of the acquire's
// bookkeeping. Each sweep starts the refreshes that are due; a hold is
// refreshed at most one sweep interval after its due time.
type schedule struct {
	mu    sync.Mutex
	holds map[*hold]struct{}
	timer *time.Timer
	armed bool
}

// sweepEvery is the interval between two sweeps: a small part of the
// refresh interval, and no longer than refreshRetry, so that a refresh that
// must be tried again soon is.
func (l *Locker) sweepEvery() time.Duration {
	return max(min(refreshRetry, l.refreshEvery()/4), time.Millisecond)
}

// scheduleHold puts h on the schedule, arming the timer if it is not running.
func (l *Locker) scheduleHold(h *hold) {
	s := &l.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds == nil {
		s.holds = make(map[*hold]struct{})
	}
	s.holds[h] = struct{}{}
	if s.armed {
		return
	}
	s.armed = true
	if s.timer == nil {
		s.timer = time.AfterFunc(l.sweepEvery(), l.sweep)
	} else {
		s.timer.Reset(l.sweepEvery())
	}
}

// unscheduleHold takes h off the schedule. A refresh of h already started
// is waited for by hold.stop.
func (l *Locker) unscheduleHold(h *hold) {
	s := &l.sched
	s.mu.Lock()
	delete(s.holds, h)
	s.mu.Unlock()
}

// sweep starts the refreshes that are due, each in its own goroutine
// (hold.tick bounds how many run at once), and re-arms the timer while
// holds remain.
func (l *Locker) sweep() {
	s := &l.sched
	now := time.Now()
	var due []*hold
	s.mu.Lock()
	for h := range s.holds {
		if h.takeDue(now) {
			due = append(due, h)
		}
	}
	if len(s.holds) > 0 {
		s.timer.Reset(l.sweepEvery())
	} else {
		s.armed = false
	}
	s.mu.Unlock()
	for _, h := range due {
		go h.tick()
	}
}
