package txlocktest

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/keyqueue"
)

// Locker is a txlock.Locker for unit tests. Like memcachelock it takes its
// locks before BEGIN and its leases can be lost, but it keeps them in
// memory: Runs in this process that share a Locker exclude each other, and
// no server is needed. It records every key it was asked for, and a test
// can make it unavailable or make it lose a lease while a body runs. The
// zero value is not ready; use NewLocker. It is safe for concurrent use.
type Locker struct {
	q keyqueue.Map[struct{}]

	mu          sync.Mutex
	taken       []string
	held        map[string]*lease // key → the lease holding it
	unavailable error
}

// NewLocker returns an empty Locker.
func NewLocker() *Locker {
	return &Locker{held: map[string]*lease{}}
}

// Traits reports that the locks are taken before BEGIN and can be lost, as
// memcachelock's are.
func (l *Locker) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.BeforeBegin}
}

// Acquire takes every key of req in order, waiting until ctx ends for a
// key held by another Run (not at all with req.TryOnce), and records them.
// While the Locker is unavailable it fails with an error wrapping
// txlock.ErrLockUnavailable.
func (l *Locker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	l.mu.Lock()
	down := l.unavailable
	l.mu.Unlock()
	if down != nil {
		return nil, fmt.Errorf("%w: txlocktest: %w", txlock.ErrLockUnavailable, down)
	}
	ls := &lease{l: l, lost: req.Lost}
	for _, k := range req.Keys {
		var err error
		if req.TryOnce {
			if !l.q.TryLock(k) {
				err = fmt.Errorf("%w: txlocktest: key %q", txlock.ErrLockBusy, k)
			}
		} else if _, err = l.q.Lock(ctx, k); err != nil {
			err = fmt.Errorf("txlocktest: waiting for key %q: %w", k, err)
		}
		if err != nil {
			_ = ls.Release(context.Background())
			return nil, err
		}
		ls.keys = append(ls.keys, k)
		l.mu.Lock()
		l.taken = append(l.taken, k)
		l.held[k] = ls
		l.mu.Unlock()
	}
	return ls, nil
}

// Taken returns every key the Locker has taken, in the order it took them,
// repeated keys included (a retried attempt takes its keys again).
func (l *Locker) Taken() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.taken)
}

// Held returns the keys held now, sorted. It is empty once every Run has
// returned: a test can check that nothing was left locked.
func (l *Locker) Held() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.held))
	for k := range l.held {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// SetUnavailable makes every Acquire fail with an error wrapping
// txlock.ErrLockUnavailable and err, as an unreachable lock service would,
// until SetUnavailable(nil).
func (l *Locker) SetUnavailable(err error) {
	l.mu.Lock()
	l.unavailable = err
	l.mu.Unlock()
}

// Lose makes the lease holding key lost now, as an expired or evicted
// memcached lock would be: the Run holding it has its body's context
// cancelled and runs its transaction again. It reports whether key was
// held.
func (l *Locker) Lose(key string) bool {
	l.mu.Lock()
	ls := l.held[key]
	if ls != nil {
		ls.gone = true
	}
	l.mu.Unlock()
	if ls == nil {
		return false
	}
	if ls.lost != nil {
		ls.lost(fmt.Errorf("%w: txlocktest: key %q lost", txlock.ErrLockLost, key))
	}
	return true
}

// lease is the keys of one Acquire.
type lease struct {
	l    *Locker
	keys []string
	lost func(error)
	gone bool // guarded by l.mu
}

// Verify reports a lease lost with Lose.
func (ls *lease) Verify(context.Context) error {
	ls.l.mu.Lock()
	defer ls.l.mu.Unlock()
	if ls.gone {
		return fmt.Errorf("%w: txlocktest: lease lost", txlock.ErrLockLost)
	}
	return nil
}

// Release gives the keys back.
func (ls *lease) Release(context.Context) error {
	for i := len(ls.keys) - 1; i >= 0; i-- {
		k := ls.keys[i]
		ls.l.mu.Lock()
		if ls.l.held[k] == ls {
			delete(ls.l.held, k)
		}
		ls.l.mu.Unlock()
		ls.l.q.Unlock(k)
	}
	ls.keys = nil
	return nil
}
