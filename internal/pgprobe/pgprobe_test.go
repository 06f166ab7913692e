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
