// Package keymutex provides a map of named mutexes whose waiters queue in
// FIFO order, honour a context while they wait, and whose entries are freed
// as soon as nobody holds or waits for a name.
//
// It is the engine of txlock's in-process locker and of the in-process queue
// that memcachelock puts in front of memcached.
package keymutex

import (
	"context"
	"sync"
)

// Map is a set of named mutexes. The zero value is ready to use. A Map must
// not be copied after first use.
type Map struct {
	mu      sync.Mutex
	entries map[string]*entry
}

// entry is one named mutex. The lock is a token in a one-slot channel: a
// holder has put it there, waiters block sending theirs. The Go runtime
// queues blocked senders in arrival order and hands the slot to the first of
// them directly when the holder drains it, so a newcomer cannot barge in.
type entry struct {
	slot chan struct{}
	refs int // holders plus waiters; the entry is deleted when it reaches 0
}

func (m *Map) ref(key string) *entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entries == nil {
		m.entries = make(map[string]*entry)
	}
	e := m.entries[key]
	if e == nil {
		e = &entry{slot: make(chan struct{}, 1)}
		m.entries[key] = e
	}
	e.refs++
	return e
}

func (m *Map) unref(key string, e *entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(m.entries, key)
	}
}

// Lock takes the mutex named key, waiting in FIFO order behind earlier
// callers until it is free or ctx is done. It returns ctx.Err() when the
// context ends first, and then holds nothing.
func (m *Map) Lock(ctx context.Context, key string) error {
	e := m.ref(key)
	select {
	case e.slot <- struct{}{}:
		return nil
	default:
	}
	select {
	case e.slot <- struct{}{}:
		return nil
	case <-ctx.Done():
		m.unref(key, e)
		return ctx.Err()
	}
}

// TryLock takes the mutex named key if it is free and reports whether it did.
// It never waits.
func (m *Map) TryLock(key string) bool {
	e := m.ref(key)
	select {
	case e.slot <- struct{}{}:
		return true
	default:
		m.unref(key, e)
		return false
	}
}

// Unlock releases the mutex named key, handing it to the longest waiter if
// there is one. Unlocking a name that is not locked is a programming error
// and panics, as with sync.Mutex.
func (m *Map) Unlock(key string) {
	m.mu.Lock()
	e := m.entries[key]
	m.mu.Unlock()
	if e == nil {
		panic("keymutex: unlock of unlocked key")
	}
	select {
	case <-e.slot:
	default:
		panic("keymutex: unlock of unlocked key")
	}
	m.unref(key, e)
}

// Waiters reports how many callers hold or wait for the mutex named key.
func (m *Map) Waiters(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[key]; e != nil {
		return e.refs
	}
	return 0
}

// Len reports how many names currently have a holder or a waiter. It is 0
// when the Map is idle, however many names it has seen.
func (m *Map) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}
