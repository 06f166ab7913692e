package memcachelock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
)

const (
	// stealAfter is how long a waiter lets a key handed to another process
	// sit unclaimed (handed to the same process for that long) before it takes
	// the key itself: the process it was handed to stopped waiting or
	// died. The target polls every few hundred microseconds.
	stealAfter = 25 * time.Millisecond
	// maxLocalStreak bounds local handoffs even when no other process was
	// seen waiting, so a process looks at the queue in memcached from time
	// to time.
	maxLocalStreak = 256
	// casRetries bounds the read-CAS loops that race with waiters
	// appending to the lock's value.
	casRetries = 8
	// casFresh is how long Release trusts the CAS ID Verify read.
	casFresh = time.Second
)

var errLost = fmt.Errorf("%w: the lock expired, was evicted or is held by someone else", txlock.ErrLockLost)

// hold is one memcached lock owned by this process under a random owner
// token. It outlives a single lease when the key is handed on between Runs
// of this process, and a refresher keeps its lease alive as long as it
// lives.
type hold struct {
	l     *Locker
	mk    string
	token string

	mu        sync.Mutex
	cas       uint64    // CAS ID from the last read, 0 when unknown
	casAt     time.Time // when cas was read
	queue     []string  // other processes waiting, from the last read
	lostErr   error
	onLost    func(error)
	lastWrite time.Time // when the lease was last set: add or refresh

	stop chan struct{}
	done chan struct{}
}

func (l *Locker) newHold(mk, token string, queue []string, written time.Time) *hold {
	h := &hold{l: l, mk: mk, token: token, queue: queue, lastWrite: written,
		stop: make(chan struct{}), done: make(chan struct{})}
	l.live.Add(1)
	go h.refresher()
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

// canHandOff reports whether the lock may go to the next Run of this
// process directly: it is not lost, and this process has not passed it on
// too many times in a row while other processes queue for it.
func (h *hold) canHandOff(streak, limit int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lostErr != nil {
		return false
	}
	if len(h.queue) > 0 {
		return streak < limit
	}
	return streak < maxLocalStreak
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
	h.cas, h.casAt, h.queue = it.CasID, time.Now(), without(v.queue, h.l.proc)
	return nil
}

func (h *hold) refresher() {
	defer close(h.done)
	defer h.l.live.Add(-1)
	t := time.NewTimer(h.l.refreshEvery())
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		err := h.refresh()
		switch {
		case errors.Is(err, errRefreshLater):
			// memcached did not answer in time: try again soon
			// rather than a whole interval later, when the lease
			// may already have run out.
			t.Reset(refreshRetry)
			continue
		case err != nil:
			h.markLost(err)
			return
		}
		t.Reset(h.l.refreshEvery())
	}
}

// refresh extends the lease if, and only if, the lock is still this
// hold's: read, compare the token, CAS the same value with a new expiry.
// It never recreates a lock that is gone. It returns nil when the lease was
// extended, errRefreshLater when it could not tell, and another error when
// the lock is lost.
func (h *hold) refresh() error {
	l := h.l
	for range casRetries {
		start := time.Now()
		it, err := h.l.get(h.mk)
		if err == nil {
			v, ok := h.ours(it)
			if !ok {
				return errLost
			}
			err = l.cas(&memcache.Item{Key: h.mk, Value: it.Value, Expiration: h.l.expiration(), CasID: it.CasID})
			if err == nil {
				h.mu.Lock()
				h.cas, h.queue, h.lastWrite = 0, without(v.queue, h.l.proc), start
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
		// Unreachable: the lease may still be alive; the next tick tries
		// again, and Verify decides before COMMIT. Once a whole TTL has
		// passed since the last write the lock is gone for sure, unless
		// we were told to carry on without it.
		h.mu.Lock()
		expired := time.Since(h.lastWrite) >= h.l.cfg.ttl
		h.mu.Unlock()
		if expired && !h.l.cfg.failOpen {
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

// refreshRetry is how soon the refresher tries again after errRefreshLater.
const refreshRetry = 100 * time.Millisecond

// release stops the refresher and gives the lock back if it is still this
// hold's, by CAS: to the first process in the lock's queue (appending this
// process at the end if it has Runs waiting too), or to expired when nobody
// waits. An unchanged lock is released with one CAS, using the CAS ID of
// Verify's read.
func (h *hold) release(ctx context.Context, localWaiters bool) error {
	close(h.stop)
	<-h.done
	h.mu.Lock()
	cas, queue, lost := h.cas, h.queue, h.lostErr
	if time.Since(h.casAt) > casFresh {
		// A CAS ID is only proof of ownership while memcached cannot
		// have restarted and counted back up to it: after a long pause
		// (a stopped process) read the owner token again.
		cas = 0
	}
	h.mu.Unlock()
	if lost != nil {
		return nil
	}
	l := h.l
	for range casRetries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if cas == 0 {
			it, err := h.l.get(h.mk)
			if errors.Is(err, memcache.ErrCacheMiss) {
				return nil
			}
			if err != nil {
				return unavailable("release", err)
			}
			v, ok := h.ours(it)
			if !ok {
				return nil // lost: the key is someone else's now
			}
			cas, queue = it.CasID, without(v.queue, h.l.proc)
		}
		item := &memcache.Item{Key: h.mk, CasID: cas, Value: []byte("-"), Expiration: -1} // negative: expired at once
		if len(queue) > 0 {
			next := queue
			if localWaiters {
				next = append(slices.Clip(next), h.l.proc)
			}
			item.Value = lockValue{state: stateHandoff, owner: next[0], queue: next[1:]}.bytes()
			item.Expiration = h.l.expiration()
		}
		err := l.cas(item)
		switch {
		case err == nil, errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCacheMiss):
			return nil
		case errors.Is(err, memcache.ErrCASConflict):
			cas = 0
		default:
			return unavailable("release", err)
		}
	}
	return fmt.Errorf("memcachelock: release: the lock kept changing; it expires with its TTL")
}

// take gets the key from memcached for the local head: add, and if the key
// is held, join its queue and poll until the key is free or handed to this
// process.
func (l *Locker) take(ctx context.Context, mk, name string, try bool) (*hold, error) {
	token := randomID(16)
	mine := lockValue{state: stateHeld, owner: token}.bytes()
	add := func() (*hold, error) {
		start := time.Now()
		err := l.add(&memcache.Item{Key: mk, Value: mine, Expiration: l.expiration()})
		switch {
		case err == nil:
			return l.newHold(mk, token, nil, start), nil
		case errors.Is(err, memcache.ErrNotStored):
			return nil, nil
		}
		// The add may have been applied and only its answer lost: undo it
		// if so, rather than leave a lock nobody releases until its TTL.
		l.expireIfOurs(mk, token)
		return nil, unavailable("add", err)
	}
	waitErr := func() error {
		return fmt.Errorf("memcachelock: waiting for key %s: %w", describe(name), ctx.Err())
	}

	if ctx.Err() != nil {
		return nil, waitErr()
	}
	if h, err := add(); h != nil || err != nil {
		return h, err
	}
	if try {
		return nil, fmt.Errorf("%w: memcachelock: key %s", txlock.ErrLockBusy, describe(name))
	}

	var (
		owner      string
		ownerSince time.Time
		timer      = time.NewTimer(time.Hour)
	)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			return nil, waitErr()
		}
		it, err := l.get(mk)
		if errors.Is(err, memcache.ErrCacheMiss) {
			if h, err := add(); h != nil || err != nil {
				return h, err
			}
			continue // someone else added it first
		}
		if err != nil {
			return nil, unavailable("poll", err)
		}
		now := time.Now()
		v, ok := parseValue(it.Value)
		if ok && v.state == stateHeld && v.owner == token {
			// An add of ours was applied though its answer was lost.
			return l.newHold(mk, token, without(v.queue, l.proc), now.Add(-l.cfg.ttl/2)), nil
		}
		if !ok {
			// Not a lock value: someone else's data under our key. It
			// blocks the key until it expires.
			if !sleep(ctx, timer, maxPoll) {
				return nil, waitErr()
			}
			continue
		}
		if v.owner != owner {
			owner, ownerSince = v.owner, now
		}
		// The steal clock runs from when this handoff target was first
		// seen, not from the last change of the item: waiters joining
		// the queue change the item, and must not keep a key handed to
		// a dead process stuck until its TTL.
		if v.state == stateHandoff && (v.owner == l.proc || now.Sub(ownerSince) > stealAfter) {
			// Handed to us, or to a process that does not come for it.
			claimed := lockValue{state: stateHeld, owner: token, queue: without(v.queue, l.proc)}
			start := time.Now()
			err := l.cas(&memcache.Item{Key: mk, Value: claimed.bytes(), Expiration: l.expiration(), CasID: it.CasID})
			switch {
			case err == nil:
				return l.newHold(mk, token, claimed.queue, start), nil
			case errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCacheMiss):
				continue
			default:
				return nil, unavailable("claim", err)
			}
		}
		pos := slices.Index(v.queue, l.proc)
		if pos < 0 && v.owner != l.proc {
			// Join the queue. append keeps the holder's expiry.
			err := l.append(&memcache.Item{Key: mk, Value: []byte(" " + l.proc)})
			if errors.Is(err, memcache.ErrNotStored) {
				continue // gone meanwhile: try add
			}
			if err != nil {
				return nil, unavailable("queue", err)
			}
			pos = len(v.queue)
		}
		if v.state == stateHandoff {
			pos++ // the process it was handed to goes first
		}
		if !sleep(ctx, timer, pollInterval(pos, now.Sub(ownerSince))) {
			return nil, waitErr()
		}
	}
}

const (
	minPoll = 200 * time.Microsecond
	maxPoll = 5 * time.Millisecond
)

// pollInterval is how long a waiter sleeps between two reads of a held key.
// The first process in the queue polls a fraction of the time the current
// holder has had the key, from 200 µs (a few loopback round trips) up to
// 2 ms, so a short hold is noticed at once and a long one costs few reads;
// later ones poll less often, as their turn is at least one hold away. A
// ±25% jitter keeps the waiters of several processes from polling in step.
// No waiter can get ahead by polling faster: a held key goes to the head
// of the queue, not to whoever reads first.
func pollInterval(pos int, held time.Duration) time.Duration {
	var d time.Duration
	if pos <= 0 {
		d = min(max(held/4, minPoll), 2*time.Millisecond)
	} else {
		d = min(max(held/2, time.Millisecond), maxPoll)
	}
	return d*3/4 + rand.N(d/2+1)
}

func sleep(ctx context.Context, t *time.Timer, d time.Duration) bool {
	t.Reset(d)
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// expireIfOurs expires mk if it holds token, best-effort: it cleans up an
// add whose reply was lost.
func (l *Locker) expireIfOurs(mk, token string) {
	it, err := l.get(mk)
	if err != nil {
		return
	}
	if v, ok := parseValue(it.Value); ok && v.state == stateHeld && v.owner == token {
		_ = l.cas(&memcache.Item{Key: mk, Value: []byte("-"), Expiration: -1, CasID: it.CasID})
	}
}

// withdraw passes the key on if it was handed to this process, which has
// stopped waiting for it, so the next process need not wait stealAfter.
// Best-effort. A mark in a held lock's queue is left: only the owner may
// rewrite its expiry, and the next holder's handoff skips it after
// stealAfter.
func (l *Locker) withdraw(ctx context.Context, mk string) {
	for range casRetries {
		if ctx.Err() != nil {
			return
		}
		it, err := l.get(mk)
		if err != nil {
			return
		}
		v, ok := parseValue(it.Value)
		if !ok || v.state != stateHandoff || v.owner != l.proc {
			return
		}
		item := &memcache.Item{Key: mk, CasID: it.CasID, Value: []byte("-"), Expiration: -1}
		if q := without(v.queue, l.proc); len(q) > 0 {
			item.Value = lockValue{state: stateHandoff, owner: q[0], queue: q[1:]}.bytes()
			item.Expiration = l.expiration()
		}
		if err := l.cas(item); !errors.Is(err, memcache.ErrCASConflict) {
			return
		}
	}
}
