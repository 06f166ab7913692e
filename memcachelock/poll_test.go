package memcachelock

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPollInterval: the first process in line waits out most of a
// holder's expected tenure, then polls fast, so that a key handed to it is
// claimed at once; without an expectation it polls a fraction of the time
// the key has been held. Every interval is jittered by ±25%.
func TestPollInterval(t *testing.T) {
	within := func(d, want time.Duration) bool { return d >= want*3/4 && d <= want*5/4 }
	for _, tc := range []struct {
		name                 string
		pos                  int
		held, expected, want time.Duration
	}{
		{"young holder, long expected tenure", 0, time.Millisecond, 20 * time.Millisecond, maxPoll},
		{"near the expected end", 0, 8 * time.Millisecond, 10 * time.Millisecond, time.Millisecond},
		{"past nine tenths", 0, 9500 * time.Microsecond, 10 * time.Millisecond, minPoll},
		{"overdue", 0, 15 * time.Millisecond, 10 * time.Millisecond, minPoll},
		{"far overdue: back to the fraction", 0, 30 * time.Millisecond, 10 * time.Millisecond, 2 * time.Millisecond},
		{"no expectation, short hold", 0, 400 * time.Microsecond, 0, minPoll},
		{"no expectation, long hold", 0, 40 * time.Millisecond, 0, 2 * time.Millisecond},
		{"second in line", 1, 4 * time.Millisecond, 10 * time.Millisecond, 2 * time.Millisecond},
	} {
		for range 20 {
			if d := pollInterval(tc.pos, tc.held, tc.expected); !within(d, tc.want) {
				t.Fatalf("%s: pollInterval = %v, want %v ±25%%", tc.name, d, tc.want)
			}
		}
	}
}

func TestTenures(t *testing.T) {
	var ts tenures
	if ts.expected("k") != 0 {
		t.Fatal("an unknown key has an expected tenure")
	}
	ts.note("k", 8*time.Millisecond)
	ts.note("k", 16*time.Millisecond)
	if got := ts.expected("k"); got != 10*time.Millisecond {
		t.Fatalf("expected = %v, want 10ms (8 + (16-8)/4)", got)
	}
	for i := range maxTenures {
		ts.note(string(rune(i+1000)), time.Millisecond)
	}
	if len(ts.m) > maxTenures {
		t.Fatalf("%d keys remembered, at most %d", len(ts.m), maxTenures)
	}
}

// TestValueCarriesTheHoldersStart: a held value says when its holder took
// the key, in a field that a reader which does not know it skips as a
// malformed waiter (it has no colon), so the queue reads the same either
// way; hand-off values carry none.
func TestValueCarriesTheHoldersStart(t *testing.T) {
	start := time.UnixMicro(1_700_000_000_123_456)
	q := []waiter{{proc: "p1", deadline: 10}, {proc: "p2", deadline: 20}}
	b := heldValue("tok.1", start, q)
	v, ok := parseValue(b)
	if !ok || v.state != stateHeld || v.owner != "tok.1" || v.since != start.UnixMicro() || !slices.Equal(v.queue, q) {
		t.Fatalf("parseValue(%q) = %+v, %v", b, v, ok)
	}
	for _, f := range strings.Fields(string(b))[2:] {
		if strings.HasPrefix(f, "@") && strings.Contains(f, ":") {
			t.Fatalf("the start field %q has a colon: older readers would take it for a waiter", f)
		}
	}
	// Written by a version that does not know the field, or garbled.
	for _, old := range []string{"L tok.1 p1:10 p2:20", "L tok.1 @x p1:10 p2:20", "L tok.1 @-5 p1:10 p2:20"} {
		v, ok := parseValue([]byte(old))
		if !ok || v.since != 0 || !slices.Equal(v.queue, q) {
			t.Fatalf("parseValue(%q) = %+v, %v: want no start and the queue", old, v, ok)
		}
	}
	h := lockValue{state: stateHandoff, owner: "p1", until: 99, since: 5, queue: q[1:]}
	if got, _ := parseValue(h.bytes()); got.since != 0 || got.until != 99 || got.owner != "p1" {
		t.Fatalf("hand-off value %q read as %+v", h.bytes(), got)
	}
}

// TestOwnerChanged: a waiter dates a holder's tenure from the start the
// holder wrote, not from when the waiter first read it, unless that start
// is implausible by the waiter's clock; it remembers the tenure that ended;
// and it starts the steal clock of a hand-off when it first sees it.
func TestOwnerChanged(t *testing.T) {
	l := &Locker{cfg: config{ttl: 30 * time.Second}}
	tk := &taker{l: l, mk: "k"}
	now := time.UnixMicro(time.Now().UnixMicro()) // starts are written in µs
	a := lockValue{state: stateHeld, owner: "a.1", since: now.Add(-8 * time.Millisecond).UnixMicro()}
	tk.ownerChanged(a, now)
	if got := now.Sub(tk.ownerSince); got != 8*time.Millisecond || !tk.tenure {
		t.Fatalf("holder seen first: held %v (tenure %v), want 8ms from its own start", got, tk.tenure)
	}
	b := lockValue{state: stateHeld, owner: "b.1", since: now.Add(12 * time.Millisecond).UnixMicro()}
	tk.ownerChanged(b, now.Add(15*time.Millisecond))
	if got := l.tenures.expected("k"); got != 20*time.Millisecond {
		t.Fatalf("tenure of a: %v, want 20ms (from its start to b's)", got)
	}
	h := lockValue{state: stateHandoff, owner: "proc-c", until: 1}
	seen := now.Add(30 * time.Millisecond)
	tk.ownerChanged(h, seen)
	if !tk.ownerSince.Equal(seen) || tk.tenure {
		t.Fatalf("hand-off: clock from %v (tenure %v), want from when it was seen", tk.ownerSince, tk.tenure)
	}
	if got := l.tenures.expected("k"); got != 20*time.Millisecond+(18*time.Millisecond-20*time.Millisecond)/4 {
		t.Fatalf("tenure of b (12ms to 30ms, seen ending then) not remembered: expected %v", got)
	}
	ahead := lockValue{state: stateHeld, owner: "d.1", since: seen.Add(time.Hour).UnixMicro()}
	at := seen.Add(time.Millisecond)
	tk.ownerChanged(ahead, at)
	if !tk.ownerSince.Equal(at) || !tk.tenure {
		t.Fatalf("a start ahead of our clock: tenure from %v (tenure %v), want from when it was seen", tk.ownerSince, tk.tenure)
	}
}

// TestPause: a pause ends after its time, or when ctx ends, fine or not,
// and gives its place among the fine pauses back.
func TestPause(t *testing.T) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	for _, d := range []time.Duration{100 * time.Microsecond, finePauseMax, 5 * time.Millisecond} {
		start := time.Now()
		if !pause(ctx, d, &timer) || time.Since(start) < d {
			t.Fatalf("pause(%v) returned early or reported an end of ctx", d)
		}
	}
	cancel()
	for _, d := range []time.Duration{100 * time.Microsecond, time.Hour} {
		if pause(ctx, d, &timer) {
			t.Fatalf("pause(%v) with a cancelled context reported a full wait", d)
		}
	}
	if n := len(finePauses); n != 0 {
		t.Fatalf("%d fine pauses still counted", n)
	}
}
