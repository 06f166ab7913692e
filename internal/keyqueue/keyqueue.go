// Package keyqueue is a map of named locks whose waiters queue in FIFO
// order, honour a context while they wait, and can be handed a value by
// the holder that unlocks. Entries are freed as soon as nobody holds or
// waits for a name, so an idle Map holds no memory however many names it
// has seen.
//
// It is the one per-key queue of the module: txlock's in-process locker
// uses it as a plain named mutex, and memcachelock queues the Runs of one
// process on a memcached key with it, the holder handing its memcached
// lock on to the next Run.
package keyqueue

import (
	"context"
	"sync"
)

// Map is a set of named locks passing values of type T. The zero value is
// ready to use. A Map must not be copied after first use.
type Map[T any] struct {
	mu      sync.Mutex
	entries map[string]*entry[T]
}

// entry is one named lock: held by one caller, with waiters in arrival
// order. Each waiter has a channel of its own with room for one value, so
// an unlock never blocks.
type entry[T any] struct {
	waiters []chan T
}

func (m *Map[T]) get(key string) (*entry[T], bool) {
	if m.entries == nil {
		m.entries = make(map[string]*entry[T])
	}
	e, held := m.entries[key]
	if !held {
		e = &entry[T]{}
		m.entries[key] = e
	}
	return e, held
}

// Lock takes the lock named key, waiting in FIFO order behind earlier
// callers until it is free or ctx is done. It returns the value the
// previous holder handed on with HandOff, or the zero value. When ctx ends
// first it returns ctx.Err() and holds nothing; a caller that was handed
// the lock just as ctx ended gets it, with a nil error, and must unlock it.
func (m *Map[T]) Lock(ctx context.Context, key string) (T, error) {
	var zero T
	m.mu.Lock()
	e, held := m.get(key)
	if !held {
		m.mu.Unlock()
		return zero, nil
	}
	ch := make(chan T, 1)
	e.waiters = append(e.waiters, ch)
	m.mu.Unlock()
	select {
	case v := <-ch:
		return v, nil
	case <-ctx.Done():
	}
	m.mu.Lock()
	for i, w := range e.waiters {
		if w == ch {
			e.waiters = append(e.waiters[:i:i], e.waiters[i+1:]...)
			m.mu.Unlock()
			return zero, ctx.Err()
		}
	}
	m.mu.Unlock()
	return <-ch, nil // handed to us as ctx ended
}

// TryLock takes the lock named key if it is free and reports whether it
// did. It never waits.
func (m *Map[T]) TryLock(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, held := m.get(key)
	return !held
}

// HandOff gives the lock named key, with v, to its longest waiter and
// reports true; if nobody waits it reports false and the caller still holds
// the lock. Handing off a lock that is not held panics.
func (m *Map[T]) HandOff(key string, v T) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.handOff(key, v)
}

func (m *Map[T]) handOff(key string, v T) bool {
	e := m.entries[key]
	if e == nil {
		panic("keyqueue: unlock of an unlocked key")
	}
	if len(e.waiters) == 0 {
		return false
	}
	ch := e.waiters[0]
	e.waiters = e.waiters[1:]
	ch <- v
	return true
}

// Unlock gives the lock named key to its longest waiter, with the zero
// value, or frees it. Unlocking a name that is not locked is a programming
// error and panics, as with sync.Mutex.
func (m *Map[T]) Unlock(key string) {
	var zero T
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.handOff(key, zero) {
		delete(m.entries, key)
	}
}

// Waiters reports how many callers wait for the lock named key, not
// counting its holder.
func (m *Map[T]) Waiters(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[key]; e != nil {
		return len(e.waiters)
	}
	return 0
}

// Held reports whether the lock named key is held.
func (m *Map[T]) Held(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.entries[key] != nil
}

// Len reports how many names currently have a holder. It is 0 when the
// Map is idle, however many names it has seen.
func (m *Map[T]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}
