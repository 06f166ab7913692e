package memcachelock

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPollInterval: the first process in line waits out most of a
// holder's expected tenure, then polls fast, so that a key handed to it is
// claimed at once; without an expectation it polls a fraction of the time
// the key has been held. Those behind it read again about halfway into the
// next tenure when the holder dated its own, and often otherwise. A sleep
// toward a point in time ends up to 25% early, never late; a steady poll is
// jittered by ±25%.
func TestPollInterval(t *testing.T) {
	const ms = time.Millisecond
	steady := func(d, want time.Duration) bool { return d >= want*3/4 && d <= want*5/4 }
	toward := func(d, want time.Duration) bool { return d >= want*3/4 && d <= want }
	for _, tc := range []struct {
		name   string
		pos    int
		held   time.Duration
		tenure tenure
		dated  bool
		want   time.Duration
		within func(d, want time.Duration) bool
	}{
		{"young holder, long expected tenure", 0, ms, tenure{mean: 20 * ms}, true, maxPoll, toward},
		{"near the expected end", 0, 8 * ms, tenure{mean: 10 * ms}, true, ms, toward},
		{"past nine tenths", 0, 9500 * time.Microsecond, tenure{mean: 10 * ms}, true, minPoll, steady},
		{"tenures vary: fast from two spreads before the end", 0, 15 * ms, tenure{mean: 20 * ms, spread: 2 * ms}, true, ms, toward},
		{"tenures vary: within two spreads", 0, 16500 * time.Microsecond, tenure{mean: 20 * ms, spread: 2 * ms}, true, minPoll, steady},
		{"overdue", 0, 15 * ms, tenure{mean: 10 * ms}, true, minPoll, steady},
		{"far overdue: back to the fraction", 0, 30 * ms, tenure{mean: 10 * ms}, true, 2 * ms, steady},
		{"no expectation, short hold", 0, 400 * time.Microsecond, tenure{}, true, minPoll, steady},
		{"no expectation, long hold", 0, 40 * ms, tenure{}, true, 2 * ms, steady},
		{"second in line, dated holder: halfway into the next tenure", 1, 4 * ms, tenure{mean: 10 * ms}, true, 11 * ms, toward},
		{"third in line, dated holder near its end", 2, 9 * ms, tenure{mean: 10 * ms}, true, 6 * ms, toward},
		{"behind, long tenures", 1, ms, tenure{mean: time.Second}, true, maxBehindPoll, toward},
		{"behind, dated holder overdue", 1, 12 * ms, tenure{mean: 10 * ms}, true, 5 * ms, steady},
		{"behind, undated holder", 1, 4 * ms, tenure{mean: 10 * ms}, false, 2 * ms, steady},
		{"behind, no expectation", 1, 4 * ms, tenure{}, true, 2 * ms, steady},
	} {
		for range 50 {
			if d := pollInterval(tc.pos, tc.held, tc.tenure, tc.dated); !tc.within(d, tc.want) {
				t.Fatalf("%s: pollInterval = %v, want %v (less up to 25%% toward a point, ±25%% steady)", tc.name, d, tc.want)
			}
		}
	}
}

func TestTenures(t *testing.T) {
	var ts tenures
	if ts.expected("k") != (tenure{}) {
		t.Fatal("an unknown key has an expected tenure")
	}
	ts.note("k", 8*time.Millisecond)
	ts.note("k", 16*time.Millisecond)
	ts.note("k", 6*time.Millisecond)
	// mean 8 → 10 → 9; spread 0 → 2 (|16-8|/4) → 2.5 (2 + (|6-10|-2)/4)
	if got, want := ts.expected("k"), (tenure{mean: 9 * time.Millisecond, spread: 2500 * time.Microsecond}); got != want {
		t.Fatalf("expected = %+v, want %+v", got, want)
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
// is implausible by the waiter's clock; it remembers the tenure that ended,
// unless it slept so long that it may have missed a holder in between; and
// it starts the steal clock of a hand-off when it first sees it.
func TestOwnerChanged(t *testing.T) {
	const ms = time.Millisecond
	l := &Locker{cfg: config{ttl: 30 * time.Second}}
	tk := &taker{l: l, mk: "k"}
	now := time.UnixMicro(time.Now().UnixMicro()) // starts are written in µs
	held := func(owner string, since time.Duration) lockValue {
		return lockValue{state: stateHeld, owner: owner, since: now.Add(since).UnixMicro()}
	}
	tk.read(held("a.1", -8*ms), now)
	if got := now.Sub(tk.ownerSince); got != 8*ms || !tk.tenure || !tk.dated {
		t.Fatalf("holder seen first: held %v (tenure %v, dated %v), want 8ms from its own start", got, tk.tenure, tk.dated)
	}
	tk.read(held("a.1", -8*ms), now.Add(4*ms))
	tk.read(held("b.1", 12*ms), now.Add(8*ms+tenureGap/2))
	if got := l.tenures.expected("k").mean; got != 20*ms {
		t.Fatalf("tenure of a: %v, want 20ms (from its start to b's)", got)
	}
	seen := now.Add(30 * ms)
	tk.read(held("b.1", 12*ms), seen.Add(-ms))
	tk.read(lockValue{state: stateHandoff, owner: "proc-c", until: 1}, seen)
	if !tk.ownerSince.Equal(seen) || tk.tenure || tk.dated {
		t.Fatalf("hand-off: clock from %v (tenure %v), want from when it was seen", tk.ownerSince, tk.tenure)
	}
	want := 20*ms + (18*ms-20*ms)/4 // b: from 12ms to 30ms, when its end was seen
	if got := l.tenures.expected("k").mean; got != want {
		t.Fatalf("tenure of b not remembered: expected %v, want %v", got, want)
	}
	// A hand-off's time is no tenure; the next holder's start is ahead of
	// our clock: we date it from when we saw it.
	at := seen.Add(ms)
	tk.read(held("d.1", time.Hour), at)
	if !tk.ownerSince.Equal(at) || !tk.tenure || tk.dated || l.tenures.expected("k").mean != want {
		t.Fatalf("start ahead of our clock: tenure from %v (tenure %v, dated %v), expected %v", tk.ownerSince, tk.tenure, tk.dated, l.tenures.expected("k").mean)
	}
	// A change seen after a long sleep: d.1's tenure may have been two.
	tk.read(held("e.1", 80*ms), at.Add(tenureGap+60*ms))
	if got := l.tenures.expected("k").mean; got != want {
		t.Fatalf("a change seen %v after the previous read counted as a tenure: expected %v, want %v", tenureGap+60*ms, got, want)
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

// TestManyPausesAtOnce: more goroutines pause than may do so finely at
// once; every pause lasts its time, and none stays counted.
func TestManyPausesAtOnce(t *testing.T) {
	const d = 300 * time.Microsecond
	errs := make(chan error, 4*maxFinePauses)
	for range cap(errs) {
		go func() {
			var timer *time.Timer
			defer func() {
				if timer != nil {
					timer.Stop()
				}
			}()
			for range 10 {
				start := time.Now()
				if !pause(context.Background(), d, &timer) || time.Since(start) < d {
					errs <- fmt.Errorf("a pause of %v returned early", d)
					return
				}
			}
			errs <- nil
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := len(finePauses); n != 0 {
		t.Fatalf("%d fine pauses still counted", n)
	}
}
