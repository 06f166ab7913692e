package memcachelock

import (
	"errors"
	"io"
	"syscall"

	"github.com/bradfitz/gomemcache/memcache"
)

// A restarted memcached leaves every idle connection in gomemcache's pool
// dead, and gomemcache does not redial: the next call on each fails with EOF
// or a reset. Each such failure closes the connection, so these wrappers
// retry a call a couple of times on exactly those errors. Every command the
// Locker sends is safe to repeat: get is a read; an add, CAS or append
// applied but unanswered shows up on the next read as this hold's own value
// or a CAS conflict, which the callers handle.
const brokenConnRetries = 2

func brokenConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func retried(f func() error) error {
	err := f()
	for i := 0; i < brokenConnRetries && brokenConn(err); i++ {
		err = f()
	}
	return err
}

func (l *Locker) get(key string) (it *memcache.Item, err error) {
	err = retried(func() (err error) {
		it, err = l.c.Get(key)
		return err
	})
	return it, err
}

func (l *Locker) add(it *memcache.Item) error {
	return retried(func() error { return l.c.Add(it) })
}

func (l *Locker) cas(it *memcache.Item) error {
	return retried(func() error { return l.c.CompareAndSwap(it) })
}

func (l *Locker) append(it *memcache.Item) error {
	return retried(func() error { return l.c.Append(it) })
}
