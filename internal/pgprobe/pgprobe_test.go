package pgprobe

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

type handle struct{ _ [16]byte }

// TestCache: an answer is asked once and remembered; no answer (a timeout,
// a transient server error) is not; a definite error is a remembered no;
// and the entry of a handle the program dropped goes with it.
func TestCache(t *testing.T) {
	var c Cache[handle]
	h := &handle{}
	calls := 0
	yes := func(context.Context) (bool, error) { calls++; return true, nil }
	busy := func(context.Context) (bool, error) { calls++; return false, &pgconn.PgError{Code: "53300"} }
	if c.Ask(context.Background(), h, busy) {
		t.Fatal("too many clients answered yes")
	}
	if _, known := c.Known(h); known {
		t.Fatal("a transient error was remembered")
	}
	first := c.Ask(context.Background(), h, yes)
	second := c.Ask(context.Background(), h, yes)
	if !first || !second || calls != 2 {
		t.Fatalf("answers %v %v, calls = %d; want yes twice, the answer asked once", first, second, calls)
	}
	other := &handle{}
	if c.Ask(context.Background(), other, func(context.Context) (bool, error) {
		return false, &pgconn.PgError{Code: "42883"} // undefined_function
	}) {
		t.Fatal("undefined function answered yes")
	}
	if yes, known := c.Known(other); !known || yes {
		t.Fatal("a definite no was not remembered")
	}
	timedOut := &handle{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Ask(ctx, timedOut, func(ctx context.Context) (bool, error) { return false, ctx.Err() })
	if _, known := c.Known(timedOut); known {
		t.Fatal("a probe whose context ended was remembered")
	}

	h, other, timedOut = nil, nil, nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		n := 0
		c.m.Range(func(any, any) bool { n++; return true })
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries of dropped handles still cached", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWaitersKeepTheirContext: while one probe is in flight, another caller
// waits for it only as long as its own context lets it.
func TestWaitersKeepTheirContext(t *testing.T) {
	var c Cache[handle]
	h := &handle{}
	release := make(chan struct{})
	started := make(chan struct{})
	go c.Ask(context.Background(), h, func(context.Context) (bool, error) {
		close(started)
		<-release
		return true, nil
	})
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if c.Ask(ctx, h, func(context.Context) (bool, error) { t.Error("a second probe ran"); return true, nil }) {
		t.Error("a waiter whose context ended got yes")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the waiter waited %v past its context", d)
	}
	close(release)
	deadline := time.Now().Add(2 * time.Second)
	for {
		if yes, known := c.Known(h); known && yes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first probe's answer was not remembered")
		}
		time.Sleep(time.Millisecond)
	}
}
