package retry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/retry"
)

func TestExponentialFullJitter(t *testing.T) {
	b := retry.Exponential{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for n, ceiling := range map[int]time.Duration{1: 10, 2: 20, 3: 40, 4: 80, 5: 80, 60: 80, 1 << 20: 80} {
		ceiling *= time.Millisecond
		var maxSeen time.Duration
		for range 2000 {
			d := b.Delay(n)
			if d < 0 || d > ceiling {
				t.Fatalf("Delay(%d) = %v, outside [0, %v]", n, d, ceiling)
			}
			maxSeen = max(maxSeen, d)
		}
		if maxSeen < ceiling/2 {
			t.Errorf("Delay(%d) never exceeded %v in 2000 draws: not jittered over the full range", n, maxSeen)
		}
	}
	if d := (retry.Exponential{}).Delay(3); d != 0 {
		t.Errorf("zero base: %v", d)
	}
	if d := (retry.Exponential{Base: time.Hour}).Delay(100); d < 0 {
		t.Errorf("no cap overflowed: %v", d)
	}
	if d := retry.Constant(-time.Second).Delay(1); d != 0 {
		t.Errorf("negative constant: %v", d)
	}
}

func TestDo(t *testing.T) {
	transient := errors.New("transient")
	t.Run("succeeds after retries", func(t *testing.T) {
		calls := 0
		err := retry.Do(context.Background(), 5, retry.Constant(0), func(_ context.Context, attempt int) error {
			calls++
			if attempt != calls {
				t.Errorf("attempt %d on call %d", attempt, calls)
			}
			if attempt < 3 {
				return retry.Retryable(transient)
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("err %v, calls %d", err, calls)
		}
	})
	t.Run("permanent error stops at once", func(t *testing.T) {
		perm := errors.New("perm")
		calls := 0
		err := retry.Do(context.Background(), 5, nil, func(context.Context, int) error { calls++; return perm })
		if err != perm || calls != 1 {
			t.Fatalf("err %v, calls %d", err, calls)
		}
	})
	t.Run("exhausted keeps the mark and the last error", func(t *testing.T) {
		err := retry.Do(context.Background(), 3, nil, func(context.Context, int) error { return retry.Retryable(transient) })
		if !retry.IsRetryable(err) || !errors.Is(err, transient) || !strings.Contains(err.Error(), "3 attempts") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("cancellation keeps the last error", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		err := retry.Do(ctx, 5, retry.Constant(time.Hour), func(context.Context, int) error {
			cancel()
			return retry.Retryable(transient)
		})
		if !errors.Is(err, context.Canceled) || !errors.Is(err, transient) || retry.IsRetryable(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		if err := retry.Do(context.Background(), 0, nil, func(context.Context, int) error { return nil }); err == nil {
			t.Error("maxAttempts 0 accepted")
		}
		if err := retry.Do(context.Background(), 1, nil, nil); err == nil {
			t.Error("nil fn accepted")
		}
		if err := retry.Do(noCtx, 1, nil, func(context.Context, int) error { return nil }); err == nil {
			t.Error("nil ctx accepted")
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := retry.Do(ctx, 1, nil, func(context.Context, int) error { t.Error("called"); return nil }); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled ctx: %v", err)
		}
	})
	if retry.Retryable(nil) != nil {
		t.Error("Retryable(nil) != nil")
	}
}

func TestSleep(t *testing.T) {
	if err := retry.Sleep(context.Background(), 0); err != nil {
		t.Error(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("shutting down")
	cancel(cause)
	if err := retry.Sleep(ctx, time.Hour); !errors.Is(err, cause) {
		t.Errorf("Sleep = %v, want the cause", err)
	}
	if err := retry.Sleep(ctx, 0); !errors.Is(err, cause) {
		t.Errorf("Sleep(0) on a done ctx = %v", err)
	}
}

func ExampleDo() {
	attempts := 0
	err := retry.Do(context.Background(), 5, retry.Exponential{Base: time.Millisecond, Max: 10 * time.Millisecond},
		func(ctx context.Context, attempt int) error {
			attempts = attempt
			if attempt < 3 {
				return retry.Retryable(errors.New("temporarily unavailable"))
			}
			return nil
		})
	fmt.Println(attempts, err)
	// Output: 3 <nil>
}

// noCtx is a nil context, passed on purpose where the API must refuse one.
var noCtx context.Context
