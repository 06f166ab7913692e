package txlockotel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlockotel"
	"go.opentelemetry.io/otel/attribute"
)

// The hooks called directly, with the events a PostgreSQL run reports
// when the outcome of a COMMIT is unknown and then looked up.
func TestCommitResolution(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	obs := txlockotel.NewObserver(txlockotel.WithTracerProvider(h.tp), txlockotel.WithMeterProvider(h.mp))
	info := txlock.RunInfo{Keys: 1, System: "postgresql", MaxAttempts: 3}
	broken := errors.New("txlock: commit: unexpected EOF")

	ctx := obs.RunStart(context.Background(), info)
	actx := obs.AttemptStart(ctx, info, 1)
	obs.AttemptDone(actx, info, txlock.Event{Attempt: 1, Err: broken, Retry: true, Reason: "commit_aborted",
		Commit: txlock.CommitFoundAborted, LockWait: 2 * time.Millisecond})
	actx = obs.AttemptStart(ctx, info, 2)
	obs.AttemptDone(actx, info, txlock.Event{Attempt: 2, Commit: txlock.CommitFoundCommitted})
	obs.RunDone(ctx, info, txlock.RunResult{Attempts: 2, Duration: 10 * time.Millisecond})

	attempts := h.ended("txlock.attempt")
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	wantAttrs(t, attempts[0], map[attribute.Key]any{
		"db.system.name":            "postgresql",
		"txlock.verdict":            "retry",
		"error.type":                "commit_aborted",
		"txlock.commit.outcome":     "found_aborted",
		"txlock.lock.wait.duration": 0.002,
	})
	wantAttrs(t, attempts[1], map[attribute.Key]any{
		"txlock.verdict":        "committed",
		"error.type":            nil,
		"txlock.commit.outcome": "found_committed",
	})
	pg := attribute.String("db.system.name", "postgresql")
	for outcome, want := range map[string]int64{"resolved_aborted": 1, "resolved_committed": 1, "unresolved": 0} {
		v, _ := h.counter("txlock.ambiguous_commits", pg, attribute.String("txlock.commit.resolution", outcome))
		if v != want {
			t.Errorf("txlock.ambiguous_commits{%s} = %d, want %d", outcome, v, want)
		}
	}
	if v, _ := h.counter("txlock.retries", pg, errorType.String("commit_aborted")); v != 1 {
		t.Errorf("txlock.retries{commit_aborted} = %d, want 1", v)
	}
	if n, sum := histogram[float64](h, "txlock.run.duration", pg); n != 1 || sum != 0.01 {
		t.Errorf("txlock.run.duration: count %d sum %v, want 1 run of 0.01 s", n, sum)
	}
	if n, sum := histogram[float64](h, "txlock.lock.wait.duration", pg); n != 2 || sum != 0.002 {
		t.Errorf("txlock.lock.wait.duration: count %d sum %v, want 2 waits summing to 0.002 s", n, sum)
	}
}

// Hooks given contexts that did not come from their own start hooks record
// metrics and do not panic.
func TestHooksWithoutSpans(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	obs := txlockotel.NewObserver(txlockotel.WithTracerProvider(h.tp), txlockotel.WithMeterProvider(h.mp))
	info := txlock.RunInfo{}
	obs.AttemptDone(context.Background(), info, txlock.Event{Attempt: 1, Err: txlock.ErrLockBusy})
	obs.RunDone(context.Background(), info, txlock.RunResult{Attempts: 1, Err: txlock.ErrLockBusy})
	if got := len(h.spans.Ended()); got != 0 {
		t.Errorf("%d spans ended, want 0", got)
	}
	if n, _ := histogram[int64](h, "txlock.run.attempts", errorType.String("txlock.lock_busy")); n != 1 {
		t.Errorf("txlock.run.attempts{lock_busy}: count %d, want 1", n)
	}
}
