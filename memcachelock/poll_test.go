package memcachelock

import (
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
