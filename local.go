package txlock

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/txlock/txlock/internal/keyfmt"
	"github.com/txlock/txlock/internal/keyqueue"
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
	m keyqueue.Map[struct{}]
}

var defaultLocker = NewLocalLocker()

// NewLocalLocker returns an empty LocalLocker, independent of the default
// one. Runs using different LocalLockers do not exclude each other.
func NewLocalLocker() *LocalLocker { return &LocalLocker{} }

// Traits reports that local locks are taken before BEGIN and cannot be
// lost while held.
func (l *LocalLocker) Traits(*sql.TxOptions) Traits {
	return Traits{Stage: BeforeBegin, Stable: true}
}

// Acquire takes every key in order, waiting until ctx ends for each, or not
// at all with req.TryOnce. On failure it releases what it took.
func (l *LocalLocker) Acquire(ctx context.Context, req Request) (Lease, error) {
	if l == nil {
		return nil, invalid("nil *LocalLocker")
	}
	for i, k := range req.Keys {
		var err error
		if req.TryOnce {
			if !l.m.TryLock(k) {
				err = fmt.Errorf("%w: %s is held in this process", ErrLockBusy, keyfmt.Quote(k))
			}
		} else if _, err = l.m.Lock(ctx, k); err != nil {
			err = fmt.Errorf("txlock: waiting for %s: %w", keyfmt.Quote(k), err)
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
