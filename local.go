package txlock

import (
	"context"
	"fmt"

	"github.com/txlock/txlock/internal/keymutex"
)

// LocalLocker holds named locks in this process's memory. It is what Run
// uses when no WithLocker option is given, through one LocalLocker shared by
// the whole process, so that any two Runs in the process on the same key
// exclude each other.
//
// Waiters queue in arrival order and wait without polling; a cancelled
// context or an expired lock wait removes a waiter at once. The table of
// keys holds only keys that are held or waited for, so an idle LocalLocker
// holds no memory however many keys it has seen.
//
// A LocalLocker guards one process only. Several app servers need a shared
// locker (memcachelock, advisorylock) or a database-level guarantee; see the
// package documentation.
type LocalLocker struct {
	m keymutex.Map
}

var defaultLocker = NewLocalLocker()

// NewLocalLocker returns an empty LocalLocker, independent of the default
// one. Runs using different LocalLockers do not exclude each other.
func NewLocalLocker() *LocalLocker { return &LocalLocker{} }

// LeasesCannotBeLost reports true: a local lock is held until released.
func (l *LocalLocker) LeasesCannotBeLost() bool { return true }

// InTx reports false: local locks are taken before BEGIN.
func (l *LocalLocker) InTx() bool { return false }

// Acquire takes every key in order, waiting until ctx ends for each, or not
// at all with req.TryOnce. On failure it releases what it took.
func (l *LocalLocker) Acquire(ctx context.Context, req Request) (Lease, error) {
	for i, k := range req.Keys {
		var err error
		if req.TryOnce {
			if !l.m.TryLock(k) {
				err = fmt.Errorf("%w: %q", ErrLockBusy, k)
			}
		} else {
			err = l.m.Lock(ctx, k)
		}
		if err != nil {
			for _, held := range req.Keys[:i] {
				l.m.Unlock(held)
			}
			return nil, err
		}
	}
	return &localLease{l: l, keys: req.Keys}, nil
}

// Len reports how many keys are held or waited for right now.
func (l *LocalLocker) Len() int { return l.m.Len() }

// Waiters reports how many callers hold or wait for key right now.
func (l *LocalLocker) Waiters(key string) int { return l.m.Waiters(key) }

type localLease struct {
	l    *LocalLocker
	keys []string
}

// Verify always succeeds: a local lock cannot be lost while held.
func (*localLease) Verify(context.Context) error { return nil }

func (s *localLease) Release(context.Context) error {
	for i := len(s.keys) - 1; i >= 0; i-- {
		s.l.m.Unlock(s.keys[i])
	}
	s.keys = nil
	return nil
}
