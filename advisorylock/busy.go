package advisorylock

import (
	"sync"
	"time"
)

// busyLocks remembers which locks this Locker found busy in the last
// busyFor, so that the next Acquire of a hot key waits for it with one
// statement instead of trying first and then waiting (two). It is bounded:
// past maxBusyLocks locks it starts afresh.
type busyLocks struct {
	mu sync.Mutex
	m  map[int64]time.Time // when each was last found busy
}

const (
	busyFor      = time.Second
	maxBusyLocks = 4096
)

func (b *busyLocks) note(id int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil || len(b.m) >= maxBusyLocks {
		b.m = make(map[int64]time.Time)
	}
	b.m[id] = time.Now()
}

func (b *busyLocks) recently(id int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	at, ok := b.m[id]
	return ok && time.Since(at) < busyFor
}
