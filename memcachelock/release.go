package memcachelock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// Release and hand-off: how a key leaves a Run. Within the process it goes
// to the next Run that waits for it, as it is, with no round trip, while
// the hand-off policy allows; otherwise the memcached lock is given back
// by CAS, only while it still carries this hold's token: to the first
// process whose wait has not ended, or to expired when none waits.

// handOffLocal passes h to the next Run of this process that waits for
// mk, when the hand-off policy allows, and reports whether it did. Then no
// round trip is needed.
func (l *Locker) handOffLocal(mk string, h *hold) bool {
	if h == nil || !h.canHandOff(l.cfg.handoffLimit) {
		return false
	}
	h.streak++
	h.handedOn()
	if l.local.HandOff(mk, h) {
		return true
	}
	h.streak--
	return false
}

// unlock gives up this process's place at the head of the key's local
// queue: to the next local Run directly when it can (one may have arrived
// since Release looked), otherwise by releasing the lock in memcached and
// letting the next local Run, if any, take it from there.
func (l *Locker) unlock(ctx context.Context, mk string, h *hold) error {
	if l.handOffLocal(mk, h) {
		return nil
	}
	var err error
	if h != nil {
		err = h.release(ctx, l.local.Waiters(mk) > 0)
	}
	l.local.Unlock(mk)
	return err
}

// release stops the refresher and gives the lock back if it is still this
// hold's. An unchanged lock is released with one CAS, using the CAS ID of
// Verify's read when it is fresh. localWaiters puts this process at the
// end of the queue, for its next Run.
func (h *hold) release(ctx context.Context, localWaiters bool) error {
	h.stop()
	h.mu.Lock()
	cas, queue, lost := h.cas, h.queue, h.lostErr
	if time.Since(h.casAt) > casFresh {
		cas = 0 // read the owner token again: see casFresh
	}
	h.mu.Unlock()
	if lost != nil {
		return nil // nothing to give back
	}
	l := h.l
	for range casRetries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if cas == 0 {
			it, err := l.get(h.mk)
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
			cas, queue = it.CasID, v.queue
		}
		err := l.cas(l.handOn(h.mk, cas, queue, localWaiters))
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

// handOn is the CAS that passes a key on: to the first waiter of queue
// whose wait has not ended (and not soon to end), until its deadline or
// claimWindow, whichever is sooner; or, with nobody waiting, to expired.
// With self, this process joins the end of the queue.
func (l *Locker) handOn(mk string, cas uint64, queue []waiter, self bool) *memcache.Item {
	now := time.Now()
	q := live(queue, l.proc, now.Add(minClaimTime))
	if self {
		q = append(q, waiter{proc: l.proc, deadline: now.Add(l.cfg.ttl).UnixMilli()})
	}
	if len(q) == 0 {
		return &memcache.Item{Key: mk, CasID: cas, Value: expiredValue, Expiration: -1}
	}
	until := min(now.Add(claimWindow).UnixMilli(), q[0].deadline)
	v := lockValue{state: stateHandoff, owner: q[0].proc, until: until, queue: q[1:]}
	return &memcache.Item{Key: mk, CasID: cas, Value: v.bytes(), Expiration: l.expiration()}
}

// minClaimTime is the least wait a waiter must have left to be handed the
// key: it needs a poll or two to claim it.
const minClaimTime = 5 * time.Millisecond
