package memcachelock

import (
	"context"
	"slices"
	"sync"

	"github.com/txlock/txlock"
)

// queue is this process's FIFO of Runs waiting for each memcached key of one
// Locker. Its head is the only one that talks to memcached for the key:
// waiters in a process coalesce into one poller, and the rest block on a
// channel until the key (or the right to poll for it) is passed on.
type queue struct {
	mu    sync.Mutex
	slots map[string]*slot
}

// slot exists while a key has a local holder: a Run that holds it, or the
// head that is taking it from memcached.
type slot struct {
	waiters []chan *hold // oldest first; each gets the holder's memcached lock, or nil to take it itself
	streak  int          // local handoffs in a row of the current memcached lock
}

// lock makes the caller the key's local holder. It returns the memcached
// lock handed on by the previous local holder, or nil when the caller must
// take it from memcached itself.
func (q *queue) lock(ctx context.Context, mk string, try bool) (*hold, error) {
	q.mu.Lock()
	if q.slots == nil {
		q.slots = make(map[string]*slot)
	}
	s := q.slots[mk]
	if s == nil {
		q.slots[mk] = &slot{}
		q.mu.Unlock()
		return nil, nil
	}
	if try {
		q.mu.Unlock()
		return nil, txlock.ErrLockBusy
	}
	ch := make(chan *hold, 1)
	s.waiters = append(s.waiters, ch)
	q.mu.Unlock()
	select {
	case h := <-ch:
		return h, nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	if i := slices.Index(s.waiters, ch); i >= 0 {
		s.waiters = slices.Delete(s.waiters, i, i+1)
		q.mu.Unlock()
		return nil, ctx.Err()
	}
	q.mu.Unlock()
	// The key was passed to us as the context ended: take it, so that it
	// is released through the normal path; the caller's next step sees
	// the context.
	return <-ch, nil
}

// waiters reports how many Runs of this process wait behind the key's local
// holder.
func (q *queue) waiters(mk string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if s := q.slots[mk]; s != nil {
		return len(s.waiters)
	}
	return 0
}

// unlock gives up the local holder's place. If h is still good and the
// handoff policy allows it, the next local waiter gets h as it is, with no
// memcached call; otherwise h is released in memcached first (to the next
// waiting process, or to expired) and the next local waiter, if any, must
// take the key from memcached.
func (q *queue) unlock(ctx context.Context, mk string, h *hold, limit int) error {
	q.mu.Lock()
	s := q.slots[mk]
	n := len(s.waiters)
	if n > 0 && h != nil && h.canHandOff(s.streak, limit) {
		ch := s.waiters[0]
		s.waiters = s.waiters[1:]
		s.streak++
		q.mu.Unlock()
		ch <- h
		return nil
	}
	q.mu.Unlock()
	var err error
	if h != nil {
		err = h.release(ctx, n > 0)
	}
	q.mu.Lock()
	if len(s.waiters) > 0 {
		ch := s.waiters[0]
		s.waiters = s.waiters[1:]
		s.streak = 0
		q.mu.Unlock()
		ch <- nil
		return err
	}
	delete(q.slots, mk)
	q.mu.Unlock()
	return err
}
