package memcachelock

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestOneTimerRefreshesEveryHold: the holds of a Locker share one sweep
// timer, which runs while they are held and stops after the last release;
// every held lease is refreshed through it.
func TestOneTimerRefreshesEveryHold(t *testing.T) {
	t.Parallel()
	_, c := startMemcached(t)
	l := newLocker(t, c, WithTTL(3*time.Second)) // refresh every 1 s, sweep every 100 ms
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	ls, err := l.Acquire(context.Background(), request(keys...))
	if err != nil {
		t.Fatal(err)
	}
	l.sched.mu.Lock()
	n, armed, timer := len(l.sched.holds), l.sched.armed, l.sched.timer
	l.sched.mu.Unlock()
	if n != len(keys) || !armed || timer == nil {
		t.Fatalf("schedule: %d holds, armed %v, timer %v; want %d, armed, one timer", n, armed, timer != nil, len(keys))
	}
	// Past a refresh interval every lease has been written again.
	time.Sleep(1500 * time.Millisecond)
	for _, k := range ls.(*lease).keys {
		k.h.mu.Lock()
		age := time.Since(k.h.lastWrite)
		k.h.mu.Unlock()
		if age > 1200*time.Millisecond {
			t.Errorf("key %s last written %v ago: not refreshed", k.name, age)
		}
	}
	if err := ls.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.sched.mu.Lock()
		n, armed = len(l.sched.holds), l.sched.armed
		l.sched.mu.Unlock()
		if n == 0 && !armed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after release: %d holds on the schedule, armed %v; want none, stopped", n, armed)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
