package memcachelock

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
)

// A hold is one memcached lock owned by this process under an owner token.
// It outlives a single lease when the key is handed from one Run of the
// process to the next, and its refresher keeps the lease alive as long as
// it lives: every refreshEvery (run by the Locker's schedule, refresh.go),
// read the item, check the token, and CAS the same value with a new
// expiry. It never recreates a lock that is gone.

var errLost = fmt.Errorf("%w: the lock expired, was evicted or flushed, or memcached restarted", txlock.ErrLockLost)

const (
	// refreshRetry is how soon the refresher tries again when memcached
	// did not answer, rather than a whole interval later, when the lease
	// may already have run out.
	refreshRetry = 100 * time.Millisecond
	// maxRefreshes bounds the refreshes of one Locker in flight at once.
	maxRefreshes = 16
	// casRetries bounds the read-CAS loops that race with waiters
	// appending to the lock's value.
	casRetries = 8
	// casFresh is how long a CAS ID read by Verify is trusted at release:
	// memcached counts CAS IDs from 1 again after a restart, so an old one
	// could match a new holder's item.
	casFresh = time.Second
)

type hold struct {
	l     *Locker
	mk    string
	token string

	streak int // local hand-offs of this hold in a row; only its local holder touches it

	mu        sync.Mutex
	cas       uint64    // CAS ID from the last read, 0 when unknown
	casAt     time.Time // when cas was read
	queue     []waiter  // other processes waiting, from the last read
	queueRead bool      // queue was read during the current local holder's Run
	lostErr   error
	onLost    func(error)
	lastWrite time.Time // when the lease was last set: add, claim or refresh
	due       time.Time // when the refresher should run next; zero while it runs
	stopped   bool

	ticking sync.Mutex // held while a refresh runs, so stop can wait for it
}

// newHold starts a hold written at written, with the waiters read then.
func (l *Locker) newHold(mk, token string, queue []waiter, written time.Time) *hold {
	h := &hold{l: l, mk: mk, token: token, queue: queue, queueRead: true, lastWrite: written,
		due: time.Now().Add(l.refreshEvery())}
	l.live.Add(1)
	l.scheduleHold(h)
	return h
}

// expiration is the TTL in memcached's whole seconds, rounded up.
func (l *Locker) expiration() int32 {
	return int32((l.cfg.ttl + time.Second - 1) / time.Second)
}

// refreshEvery is a third of the TTL, and at most half of the TTL less the
// second memcached's clock may cut off.
func (l *Locker) refreshEvery() time.Duration {
	return min(l.cfg.ttl/3, (l.cfg.ttl-time.Second)/2)
}

// attach sets who is told when the lock is lost: the lease that holds it
// now, or nobody between two leases. A loss seen in between is reported at
// once.
func (h *hold) attach(f func(error)) {
	h.mu.Lock()
	h.onLost = f
	err := h.lostErr
	h.mu.Unlock()
	if f != nil && err != nil {
		f(err)
	}
}

func (h *hold) markLost(err error) {
	h.mu.Lock()
	if h.lostErr == nil {
		h.lostErr = err
	}
	f := h.onLost
	h.mu.Unlock()
	if f != nil {
		f(err)
	}
}

// ours parses an item read from memcached and reports whether it is this
// hold's lock.
func (h *hold) ours(it *memcache.Item) (lockValue, bool) {
	if it == nil {
		return lockValue{}, false
	}
	v, ok := parseValue(it.Value)
	return v, ok && v.state == stateHeld && v.owner == h.token
}

// observe records a read of the lock (Verify's): the CAS ID and the queue,
// or the loss.
func (h *hold) observe(it *memcache.Item) error {
	v, ok := h.ours(it)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lostErr != nil {
		return h.lostErr
	}
	if !ok {
		h.lostErr = errLost
		return errLost
	}
	h.cas, h.casAt, h.queue, h.queueRead = it.CasID, time.Now(), v.queue, true
	return nil
}

// takeDue reports whether the refresher is due at now and, if so, marks
// it running, so that the next sweep does not start it again.
func (h *hold) takeDue(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped || h.due.IsZero() || now.Before(h.due) {
		return false
	}
	h.due = time.Time{}
	return true
}

// tick is the refresher: the Locker's schedule starts it when it is due.
func (h *hold) tick() {
	h.ticking.Lock()
	defer h.ticking.Unlock()
	if h.isStopped() {
		return
	}
	// Holds taken together come due together: bound the refreshes in
	// flight, so that a run over many keys does not open a connection
	// for each at once.
	h.l.refresh <- struct{}{}
	defer func() { <-h.l.refresh }()
	if h.isStopped() {
		return
	}
	next := h.l.refreshEvery()
	switch err := h.refresh(); {
	case errors.Is(err, errRefreshLater):
		next = refreshRetry
	case err != nil:
		h.markLost(err)
		return
	}
	h.mu.Lock()
	if !h.stopped {
		h.due = time.Now().Add(next)
	}
	h.mu.Unlock()
}

func (h *hold) isStopped() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopped
}

// stop ends the refresher and waits for a refresh in progress.
func (h *hold) stop() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.stopped = true
	h.mu.Unlock()
	h.l.unscheduleHold(h)
	h.ticking.Lock()
	//lint:ignore SA2001 an empty critical section: it waits for a tick in progress to end
	h.ticking.Unlock()
	h.l.live.Add(-1)
}

// refresh extends the lease if, and only if, the lock is still this
// hold's. It returns nil when the lease was extended, errRefreshLater when
// it could not tell, and another error when the lock is lost.
func (h *hold) refresh() error {
	for range casRetries {
		start := time.Now()
		it, err := h.l.get(h.mk)
		if err == nil {
			v, ok := h.ours(it)
			if !ok {
				return errLost
			}
			err = h.l.cas(&memcache.Item{Key: h.mk, Value: it.Value, Expiration: h.l.expiration(), CasID: it.CasID})
			if err == nil {
				h.mu.Lock()
				h.cas, h.queue, h.queueRead, h.lastWrite = 0, v.queue, true, start
				h.mu.Unlock()
				return nil
			}
		}
		switch {
		case errors.Is(err, memcache.ErrCASConflict):
			continue // a waiter appended itself: read again
		case errors.Is(err, memcache.ErrCacheMiss), errors.Is(err, memcache.ErrNotStored):
			return errLost
		}
		// Unreachable: the lease may still be alive; try again soon, and
		// Verify decides before COMMIT. Once a whole TTL has passed since
		// the last write the lock is gone for sure.
		h.mu.Lock()
		expired := time.Since(h.lastWrite) >= h.l.cfg.ttl
		h.mu.Unlock()
		if expired {
			return fmt.Errorf("%w: %w", errLost, unavailable("refresh", err))
		}
		return errRefreshLater
	}
	return errRefreshLater
}

// errRefreshLater tells the refresher that the lease could not be
// extended this time (memcached unreachable, or the item kept changing) but
// is not known to be lost.
var errRefreshLater = errors.New("memcachelock: refresh postponed")

// canHandOff reports whether the lock may go to the next Run of this
// process directly: it is not lost, and this process has not passed it on
// too many times in a row while other processes may queue for it. Other
// processes are taken to be waiting unless the queue was read empty during
// the current Run (by Verify, a refresh, or the add or claim that took the
// key): a Run whose lease is not verified (a guarded run) learns nothing of
// new waiters, and must not keep the key from them.
func (h *hold) canHandOff(limit int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lostErr != nil {
		return false
	}
	if !h.queueRead || len(live(h.queue, h.l.proc, time.Now())) > 0 {
		return h.streak < limit
	}
	return h.streak < maxLocalStreak
}

// handedOn records a local hand-off: the next Run has not read the queue.
func (h *hold) handedOn() {
	h.mu.Lock()
	h.queueRead = false
	h.mu.Unlock()
}

// maxLocalStreak bounds local hand-offs even when no other process was
// seen waiting, so a process looks at the queue in memcached from time to
// time.
const maxLocalStreak = 256
