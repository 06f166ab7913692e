package memcachelock

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/neterr"
)

// A restarted memcached leaves every idle connection in gomemcache's pool
// dead, and gomemcache does not redial: the next call on each fails with EOF
// or a reset. So when a call fails that way, the Locker drops the client's
// idle connections (Client.Close, after which the client is still usable)
// and makes the call once more on a new one. Every command the Locker sends
// is safe to repeat: get is a read; an add, CAS or append applied but
// unanswered shows up on the next read as this hold's own value or a CAS
// conflict, which the callers handle.
func (l *Locker) do(f func() error) error {
	err := f()
	if neterr.Broken(err) {
		_ = l.c.Close()
		err = f()
	}
	return err
}

func (l *Locker) get(key string) (it *memcache.Item, err error) {
	err = l.do(func() (err error) {
		it, err = l.c.Get(key)
		return err
	})
	return it, err
}

// getMulti reads keys in batches of getBatch, so that a run holding very
// many keys does not send one enormous command.
func (l *Locker) getMulti(keys []string) (map[string]*memcache.Item, error) {
	if len(keys) == 1 {
		it, err := l.get(keys[0])
		switch {
		case errors.Is(err, memcache.ErrCacheMiss):
			return map[string]*memcache.Item{}, nil
		case err != nil:
			return nil, err
		}
		return map[string]*memcache.Item{keys[0]: it}, nil
	}
	all := make(map[string]*memcache.Item, len(keys))
	for start := 0; start < len(keys); start += getBatch {
		batch := keys[start:min(start+getBatch, len(keys))]
		var m map[string]*memcache.Item
		err := l.do(func() (err error) {
			m, err = l.c.GetMulti(batch)
			return err
		})
		if err != nil {
			return nil, err
		}
		for k, it := range m {
			all[k] = it
		}
	}
	return all, nil
}

const getBatch = 100

func (l *Locker) add(it *memcache.Item) error {
	return l.do(func() error { return l.c.Add(it) })
}

func (l *Locker) cas(it *memcache.Item) error {
	return l.do(func() error { return l.c.CompareAndSwap(it) })
}

func (l *Locker) append(it *memcache.Item) error {
	return l.do(func() error { return l.c.Append(it) })
}

// unreachable reports whether err means memcached could not do what it was
// asked: not reachable, too slow, or failing (a SERVER_ERROR, such as out
// of memory with -M). The protocol's own answers (a miss, a CAS conflict,
// not stored) are not.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	switch {
	case errors.Is(err, memcache.ErrCacheMiss), errors.Is(err, memcache.ErrCASConflict),
		errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrMalformedKey):
		return false
	}
	return true
}

// notSent reports a call that certainly never reached the server: the
// connection was refused.
func notSent(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// outOfMemory reports memcached's answer to a store when it cannot evict
// (run with -M) and has no room.
func outOfMemory(err error) bool {
	return err != nil && strings.Contains(err.Error(), "SERVER_ERROR out of memory")
}

// unavailable wraps a transport or server error from memcached.
func unavailable(op string, err error) error {
	if outOfMemory(err) {
		return fmt.Errorf("%w: memcachelock: %s: memcached is out of memory (it runs with -M and cannot evict): %w", txlock.ErrLockUnavailable, op, err)
	}
	return fmt.Errorf("%w: memcachelock: %s: %w", txlock.ErrLockUnavailable, op, err)
}
