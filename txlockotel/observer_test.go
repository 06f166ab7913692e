package txlockotel_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlockotel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

var (
	systemSQLite = attribute.String("db.system.name", "sqlite")
	errorType    = attribute.Key("error.type")
)

func TestCommittedRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db := openSQLite(t)

	ctx, caller := h.callerSpan(context.Background())
	var body trace.SpanContext
	err := txlock.Run(ctx, db, []string{"name:alice", "name:bob", "name:alice"}, func(ctx context.Context, tx *sql.Tx) error {
		// A span started from the body's context, as otelsql or otelpgx
		// start one per statement.
		ctx, span := h.tp.Tracer("test").Start(ctx, "body")
		defer span.End()
		body = span.SpanContext()
		_, err := tx.ExecContext(ctx, `INSERT INTO names (name) VALUES (?)`, "alice")
		return err
	}, append(fast(), h.opt)...)
	caller.End()
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	run, attempt, bodySpan := h.one("txlock.Run"), h.one("txlock.attempt"), h.one("body")
	wantParent(t, run, caller.SpanContext())
	wantParent(t, attempt, run.SpanContext())
	wantParent(t, bodySpan, attempt.SpanContext())
	if bodySpan.SpanContext().SpanID() != body.SpanID() {
		t.Errorf("recorded body span is not the one started in the body")
	}
	for _, s := range []sdktrace.ReadOnlySpan{run, attempt} {
		if s.SpanKind() != trace.SpanKindInternal {
			t.Errorf("%s: kind %v, want internal", s.Name(), s.SpanKind())
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("%s: status %v, want unset", s.Name(), s.Status())
		}
		if s.InstrumentationScope().Name != txlockotel.ScopeName {
			t.Errorf("%s: scope %q", s.Name(), s.InstrumentationScope().Name)
		}
	}
	wantAttrs(t, run, map[attribute.Key]any{
		"db.system.name":          "sqlite",
		"txlock.key.count":        int64(2),
		"txlock.attempt.count":    int64(1),
		"txlock.verdict":          "committed",
		"error.type":              nil,
		"db.response.status_code": nil,
	})
	wantAttrs(t, attempt, map[attribute.Key]any{
		"db.system.name":         "sqlite",
		"txlock.key.count":       int64(2),
		"txlock.attempt.number":  int64(1),
		"txlock.verdict":         "committed",
		"error.type":             nil,
		"txlock.commit.outcome":  nil,
		"txlock.lock.degraded":   nil,
		"txlock.lock.lease_lost": nil,
	})
	if v, ok := attr(attempt, "txlock.lock.wait.duration"); !ok || v.Type() != attribute.FLOAT64 || v.AsFloat64() < 0 {
		t.Errorf("txlock.lock.wait.duration = %v (set: %v), want a float >= 0", v.String(), ok)
	}

	if n, sum := histogram[float64](h, "txlock.run.duration", systemSQLite); n != 1 || sum <= 0 {
		t.Errorf("txlock.run.duration: count %d sum %v, want 1 run of positive duration", n, sum)
	}
	if n, sum := histogram[int64](h, "txlock.run.attempts", systemSQLite); n != 1 || sum != 1 {
		t.Errorf("txlock.run.attempts: count %d sum %d, want 1 run of 1 attempt", n, sum)
	}
	if n, _ := histogram[float64](h, "txlock.lock.wait.duration", systemSQLite); n != 1 {
		t.Errorf("txlock.lock.wait.duration: count %d, want 1", n)
	}
	for _, name := range []string{"txlock.retries", "txlock.lock.lost_leases", "txlock.ambiguous_commits", "txlock.lock.unavailable"} {
		if _, points := h.counter(name); points != 0 {
			t.Errorf("%s has %d data points, want none", name, points)
		}
	}
	h.noLeak("alice")
	h.noLeak("bob")
}

func TestRetriedAfterSerializationFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db, mock := openMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit().WillReturnError(&pgconn.PgError{Severity: "ERROR", Code: "40001", Message: "could not serialize access"})
	mock.ExpectBegin()
	mock.ExpectCommit()

	var bodies []trace.SpanContext
	err := txlock.Run(context.Background(), db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		_, span := h.tp.Tracer("test").Start(ctx, "body")
		bodies = append(bodies, span.SpanContext())
		span.End()
		return nil
	}, append(fast(), h.opt)...)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	run := h.one("txlock.Run")
	attempts := h.ended("txlock.attempt")
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	if run.Parent().IsValid() {
		t.Errorf("run span has parent %v, want a root span", run.Parent().SpanID())
	}
	for i, a := range attempts {
		wantParent(t, a, run.SpanContext())
		wantAttrs(t, a, map[attribute.Key]any{"txlock.attempt.number": int64(i + 1), "db.system.name": nil})
	}
	// Each body span is a child of its own attempt's span.
	bodySpans := h.ended("body")
	if len(bodySpans) != 2 {
		t.Fatalf("%d body spans, want 2", len(bodySpans))
	}
	for i, b := range bodySpans {
		wantParent(t, b, attempts[i].SpanContext())
	}

	first, second := attempts[0], attempts[1]
	wantAttrs(t, first, map[attribute.Key]any{
		"txlock.verdict":          "retry",
		"error.type":              "serialization_failure",
		"db.response.status_code": "40001",
	})
	if st := first.Status(); st.Code != codes.Error || st.Description != "serialization_failure" {
		t.Errorf("first attempt status %v, want Error serialization_failure", st)
	}
	wantAttrs(t, second, map[attribute.Key]any{
		"txlock.verdict":          "committed",
		"error.type":              nil,
		"db.response.status_code": nil,
	})
	if second.Status().Code != codes.Unset {
		t.Errorf("second attempt status %v, want unset", second.Status())
	}
	wantAttrs(t, run, map[attribute.Key]any{
		"txlock.verdict":       "committed",
		"txlock.attempt.count": int64(2),
		"error.type":           nil,
	})

	if v, _ := h.counter("txlock.retries", errorType.String("serialization_failure")); v != 1 {
		t.Errorf("txlock.retries{serialization_failure} = %d, want 1", v)
	}
	if n, sum := histogram[int64](h, "txlock.run.attempts"); n != 1 || sum != 2 {
		t.Errorf("txlock.run.attempts: count %d sum %d, want 1 run of 2 attempts", n, sum)
	}
	if n, _ := histogram[float64](h, "txlock.lock.wait.duration"); n != 2 {
		t.Errorf("txlock.lock.wait.duration: count %d, want 2 attempts", n)
	}
}

func TestTooManyAttempts(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db, mock := openMock(t)
	for range 2 {
		mock.ExpectBegin()
		mock.ExpectCommit().WillReturnError(&pgconn.PgError{Code: "40001"})
	}

	err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		append(fast(), txlock.WithMaxAttempts(2), h.opt)...)
	if !errors.Is(err, txlock.ErrTooManyAttempts) {
		t.Fatalf("Run: %v, want ErrTooManyAttempts", err)
	}

	attempts := h.ended("txlock.attempt")
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	wantAttrs(t, attempts[0], map[attribute.Key]any{"txlock.verdict": "retry", "error.type": "serialization_failure"})
	// The last attempt is not retried, but failed for the same reason.
	wantAttrs(t, attempts[1], map[attribute.Key]any{"txlock.verdict": "failed", "error.type": "serialization_failure"})

	run := h.one("txlock.Run")
	wantAttrs(t, run, map[attribute.Key]any{
		"txlock.verdict":          "failed",
		"txlock.attempt.count":    int64(2),
		"error.type":              "txlock.too_many_attempts",
		"db.response.status_code": "40001",
	})
	if st := run.Status(); st.Code != codes.Error || st.Description != "txlock.too_many_attempts" {
		t.Errorf("run status %v", st)
	}

	if v, _ := h.counter("txlock.retries", errorType.String("serialization_failure")); v != 1 {
		t.Errorf("txlock.retries = %d, want 1: the last attempt is not retried", v)
	}
	tooMany := errorType.String("txlock.too_many_attempts")
	if n, _ := histogram[float64](h, "txlock.run.duration", tooMany); n != 1 {
		t.Errorf("txlock.run.duration{too_many_attempts}: count %d, want 1", n)
	}
	if n, sum := histogram[int64](h, "txlock.run.attempts", tooMany); n != 1 || sum != 2 {
		t.Errorf("txlock.run.attempts{too_many_attempts}: count %d sum %d", n, sum)
	}
}

// typedError has an ErrorType method, which semconv's error.type honours.
type typedError struct{}

func (typedError) Error() string     { return "quota exceeded for customer 42" }
func (typedError) ErrorType() string { return "quota_exceeded" }

func TestFinalError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		err       error
		errorType string
		sqlState  any
	}{
		{"body error", errors.New("name alice is taken"), "_OTHER", nil},
		{"wrapped body error", fmt.Errorf("reserve: %w", errors.New("name alice is taken")), "_OTHER", nil},
		{"database error", fmt.Errorf("insert: %w", &pgconn.PgError{Code: "23502", Message: "null value in column alice"}), "23502", "23502"},
		{"typed error", fmt.Errorf("reserve: %w", typedError{}), "quota_exceeded", nil},
		{"not in run", txlock.ErrNotInRun, "txlock.not_in_run", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			db := openSQLite(t)
			err := txlock.Run(context.Background(), db, []string{"name:alice"}, func(context.Context, *sql.Tx) error {
				return tc.err
			}, append(fast(), h.opt)...)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Run: %v, want %v", err, tc.err)
			}
			for _, s := range []sdktrace.ReadOnlySpan{h.one("txlock.attempt"), h.one("txlock.Run")} {
				wantAttrs(t, s, map[attribute.Key]any{
					"txlock.verdict":          "failed",
					"error.type":              tc.errorType,
					"db.response.status_code": tc.sqlState,
				})
				if st := s.Status(); st.Code != codes.Error || st.Description != tc.errorType {
					t.Errorf("%s: status %v, want Error %q", s.Name(), st, tc.errorType)
				}
			}
			et := errorType.String(tc.errorType)
			if n, _ := histogram[float64](h, "txlock.run.duration", systemSQLite, et); n != 1 {
				t.Errorf("txlock.run.duration{%s}: count %d, want 1", tc.errorType, n)
			}
			if _, points := h.counter("txlock.retries"); points != 0 {
				t.Errorf("txlock.retries recorded for a final error")
			}
			h.noLeak("alice")
			h.noLeak("customer")
		})
	}
}

func TestLockBusy(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db := openSQLite(t)
	locker := txlock.NewLocalLocker()
	const key = "user:alice@example.com"

	held, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := txlock.Run(context.Background(), db, []string{key}, func(context.Context, *sql.Tx) error {
			close(held)
			<-release
			return nil
		}, txlock.WithLocker(locker))
		if err != nil {
			t.Errorf("holder: %v", err)
		}
	}()
	<-held

	err := txlock.Run(context.Background(), db, []string{key}, func(context.Context, *sql.Tx) error {
		t.Error("body ran without the lock")
		return nil
	}, txlock.WithLocker(locker), txlock.WithLockWait(0), h.opt)
	close(release)
	wg.Wait()
	if !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("Run: %v, want ErrLockBusy", err)
	}

	attempt, run := h.one("txlock.attempt"), h.one("txlock.Run")
	wantParent(t, attempt, run.SpanContext())
	for _, s := range []sdktrace.ReadOnlySpan{attempt, run} {
		wantAttrs(t, s, map[attribute.Key]any{
			"txlock.verdict":   "failed",
			"error.type":       "txlock.lock_busy",
			"txlock.key.count": int64(1),
			"db.system.name":   "sqlite",
		})
		if st := s.Status(); st.Code != codes.Error || st.Description != "txlock.lock_busy" {
			t.Errorf("%s: status %v", s.Name(), st)
		}
	}
	if n, _ := histogram[float64](h, "txlock.run.duration", systemSQLite, errorType.String("txlock.lock_busy")); n != 1 {
		t.Errorf("txlock.run.duration{lock_busy}: count %d, want 1", n)
	}
	if n, _ := histogram[float64](h, "txlock.lock.wait.duration", systemSQLite); n != 1 {
		t.Errorf("txlock.lock.wait.duration: count %d, want 1", n)
	}
	// The error names the key; nothing recorded does.
	h.noLeak("alice")
	h.noLeak("example.com")
}

func TestAmbiguousCommit(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db, mock := openMock(t)
	mock.ExpectBegin()
	mock.ExpectCommit().WillReturnError(sqlState("08006"))

	err := txlock.Run(context.Background(), db, nil, func(context.Context, *sql.Tx) error { return nil },
		append(fast(), h.opt)...)
	if !errors.Is(err, txlock.ErrAmbiguousCommit) {
		t.Fatalf("Run: %v, want ErrAmbiguousCommit", err)
	}
	wantAttrs(t, h.one("txlock.attempt"), map[attribute.Key]any{
		"txlock.verdict":          "failed",
		"txlock.commit.outcome":   "unknown",
		"error.type":              "txlock.ambiguous_commit",
		"db.response.status_code": "08006",
		"txlock.key.count":        int64(0),
	})
	wantAttrs(t, h.one("txlock.Run"), map[attribute.Key]any{"error.type": "txlock.ambiguous_commit"})
	if v, _ := h.counter("txlock.ambiguous_commits", attribute.String("txlock.commit.resolution", "unresolved")); v != 1 {
		t.Errorf("txlock.ambiguous_commits{unresolved} = %d, want 1", v)
	}
	// No keys, no lock wait to measure.
	if _, ok := h.metrics()["txlock.lock.wait.duration"]; ok {
		t.Errorf("txlock.lock.wait.duration recorded for a Run without keys")
	}
}

// lossyLocker is a Locker whose leases can be lost and whose service can be
// down, driven by the test.
type lossyLocker struct {
	mu       sync.Mutex
	lost     func(error)
	degraded bool  // call Request.Degraded and carry on
	fail     error // return this from Acquire
}

func (l *lossyLocker) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.BeforeBegin}
}

func (l *lossyLocker) Acquire(_ context.Context, req txlock.Request) (txlock.Lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return nil, l.fail
	}
	if l.degraded {
		req.Degraded(fmt.Errorf("%w: dial tcp 10.0.0.1:11211: connection refused", txlock.ErrLockUnavailable))
	}
	l.lost = req.Lost
	return lossyLease{}, nil
}

// loseLease reports the current lease lost.
func (l *lossyLocker) loseLease() {
	l.mu.Lock()
	lost := l.lost
	l.mu.Unlock()
	lost(fmt.Errorf("%w: evicted", txlock.ErrLockLost))
}

type lossyLease struct{}

func (lossyLease) Verify(context.Context) error  { return nil }
func (lossyLease) Release(context.Context) error { return nil }

func TestLeaseLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db := openSQLite(t)
	locker := &lossyLocker{}

	err := txlock.Run(context.Background(), db, []string{"name:alice"}, func(ctx context.Context, tx *sql.Tx) error {
		if txlock.Attempt(ctx) == 1 {
			locker.loseLease()
			return ctx.Err()
		}
		return nil
	}, append(fast(), txlock.WithLocker(locker), h.opt)...)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	attempts := h.ended("txlock.attempt")
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	wantAttrs(t, attempts[0], map[attribute.Key]any{
		"txlock.verdict":         "retry",
		"error.type":             "lock_lost",
		"txlock.lock.lease_lost": true,
	})
	wantAttrs(t, attempts[1], map[attribute.Key]any{
		"txlock.verdict":         "committed",
		"txlock.lock.lease_lost": nil,
	})
	if v, _ := h.counter("txlock.lock.lost_leases", systemSQLite, attribute.String("txlock.verdict", "retry")); v != 1 {
		t.Errorf("txlock.lock.lost_leases{retry} = %d, want 1", v)
	}
	if v, _ := h.counter("txlock.retries", systemSQLite, errorType.String("lock_lost")); v != 1 {
		t.Errorf("txlock.retries{lock_lost} = %d, want 1", v)
	}
	h.noLeak("alice")
}

func TestLockServiceUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("degraded", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		db := openSQLite(t)
		err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
			append(fast(), txlock.WithLocker(&lossyLocker{degraded: true}), h.opt)...)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		wantAttrs(t, h.one("txlock.attempt"), map[attribute.Key]any{
			"txlock.verdict":       "committed",
			"txlock.lock.degraded": true,
			"error.type":           nil,
		})
		v, _ := h.counter("txlock.lock.unavailable", systemSQLite,
			attribute.String("txlock.verdict", "committed"), attribute.Bool("txlock.lock.degraded", true))
		if v != 1 {
			t.Errorf("txlock.lock.unavailable{committed, degraded} = %d, want 1", v)
		}
		h.noLeak("10.0.0.1")
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		db := openSQLite(t)
		down := fmt.Errorf("%w: dial tcp 10.0.0.1:11211: i/o timeout", txlock.ErrLockUnavailable)
		err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
			append(fast(), txlock.WithLocker(&lossyLocker{fail: down}), h.opt)...)
		if !errors.Is(err, txlock.ErrLockUnavailable) {
			t.Fatalf("Run: %v, want ErrLockUnavailable", err)
		}
		wantAttrs(t, h.one("txlock.attempt"), map[attribute.Key]any{
			"txlock.verdict":       "failed",
			"error.type":           "txlock.lock_unavailable",
			"txlock.lock.degraded": nil,
		})
		wantAttrs(t, h.one("txlock.Run"), map[attribute.Key]any{"error.type": "txlock.lock_unavailable"})
		v, _ := h.counter("txlock.lock.unavailable", systemSQLite,
			attribute.String("txlock.verdict", "failed"), attribute.Bool("txlock.lock.degraded", false))
		if v != 1 {
			t.Errorf("txlock.lock.unavailable{failed, not degraded} = %d, want 1", v)
		}
		h.noLeak("10.0.0.1")
	})
}

func TestPanicEndsSpans(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db := openSQLite(t)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		_ = txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error {
			panic("boom")
		}, append(fast(), h.opt)...)
	}()
	for _, s := range []sdktrace.ReadOnlySpan{h.one("txlock.attempt"), h.one("txlock.Run")} {
		wantAttrs(t, s, map[attribute.Key]any{"txlock.verdict": "failed", "error.type": "panic"})
		if s.Status().Code != codes.Error {
			t.Errorf("%s: status %v, want Error", s.Name(), s.Status())
		}
	}
	if n, _ := histogram[float64](h, "txlock.run.duration", systemSQLite, errorType.String("panic")); n != 1 {
		t.Errorf("txlock.run.duration{panic}: count %d, want 1", n)
	}
}

func TestContextCancelled(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db := openSQLite(t)
	ctx, cancel := context.WithCancel(context.Background())
	err := txlock.Run(ctx, db, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		cancel()
		return ctx.Err()
	}, append(fast(), h.opt)...)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
	wantAttrs(t, h.one("txlock.Run"), map[attribute.Key]any{"error.type": "canceled"})
}

// Two observers on one Run each end their own spans, and each one's
// attempt span is a child of its own Run span. (The second Run span is a
// child of the first: observers are called in order, each with the
// context the one before returned.)
func TestTwoObservers(t *testing.T) {
	t.Parallel()
	h1, h2 := newHarness(t), newHarness(t)
	db := openSQLite(t)
	err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		append(fast(), h1.opt, h2.opt)...)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, h := range []*harness{h1, h2} {
		run, attempt := h.one("txlock.Run"), h.one("txlock.attempt")
		wantParent(t, attempt, run.SpanContext())
	}
	wantParent(t, h2.one("txlock.Run"), h1.one("txlock.Run").SpanContext())
}

// Nil options and nil providers fall back to the global providers, which
// record nothing by default.
func TestNilOptions(t *testing.T) {
	t.Parallel()
	db := openSQLite(t)
	opt := txlockotel.New(nil, txlockotel.WithTracerProvider(nil), txlockotel.WithMeterProvider(nil))
	err := txlock.Run(context.Background(), db, []string{"k"}, func(context.Context, *sql.Tx) error { return nil },
		append(fast(), opt)...)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	obs := txlockotel.NewObserver(nil)
	if obs.RunStart == nil || obs.AttemptStart == nil || obs.AttemptDone == nil || obs.RunDone == nil {
		t.Errorf("NewObserver left a hook nil: %+v", obs)
	}
}
