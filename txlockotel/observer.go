package txlockotel

import (
	"context"
	"errors"
	"fmt"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/sqladapter"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Span names.
const (
	runSpanName     = "txlock.Run"
	attemptSpanName = "txlock.attempt"
)

// txlock's own attributes; see the package documentation.
const (
	keyCountKey        = attribute.Key("txlock.key.count")
	attemptNumberKey   = attribute.Key("txlock.attempt.number")
	attemptCountKey    = attribute.Key("txlock.attempt.count")
	verdictKey         = attribute.Key("txlock.verdict")
	lockWaitKey        = attribute.Key("txlock.lock.wait.duration")
	commitOutcomeKey   = attribute.Key("txlock.commit.outcome")
	commitResolvedKey  = attribute.Key("txlock.commit.resolution")
	lockDegradedKey    = attribute.Key("txlock.lock.degraded")
	lockLeaseLostKey   = attribute.Key("txlock.lock.lease_lost")
	verdictCommitted   = "committed"
	verdictRetry       = "retry"
	verdictFailed      = "failed"
	errorTypeOther     = "_OTHER"
	errorTypePanic     = "panic"
	errorTypeTimeout   = "timeout"
	errorTypeCancelled = "canceled"
)

// Histogram buckets, in seconds and in attempts.
var (
	durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	lockWaitBuckets = []float64{0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	attemptBuckets  = []float64{1, 2, 3, 4, 5, 7, 10, 15, 20}
)

// New returns a txlock.Option that reports to OpenTelemetry every Run it
// is given to, as the package documentation describes: it is
// txlock.WithObserver(NewObserver(opts...)). Build it once and reuse it:
// it creates its tracer and instruments when called.
func New(opts ...Option) txlock.Option {
	return txlock.WithObserver(NewObserver(opts...))
}

// NewObserver returns the txlock.Observer that New installs, for callers
// who pass observers to txlock.WithObserver themselves. It is safe for
// concurrent use by any number of Runs.
func NewObserver(opts ...Option) txlock.Observer {
	o := newObserver(opts)
	return txlock.Observer{
		RunStart:     o.runStart,
		AttemptStart: o.attemptStart,
		AttemptDone:  o.attemptDone,
		RunDone:      o.runDone,
	}
}

// observer holds the tracer and instruments shared by every Run.
type observer struct {
	tracer trace.Tracer

	runDuration metric.Float64Histogram
	runAttempts metric.Int64Histogram
	retries     metric.Int64Counter
	lockWait    metric.Float64Histogram
	leasesLost  metric.Int64Counter
	ambiguous   metric.Int64Counter
	unavailable metric.Int64Counter
}

// spanKey finds an observer's spans in a context: one observer's spans
// never mix with another's, even when New is given to a Run twice.
type spanKey struct {
	o       *observer
	attempt bool
}

func newObserver(opts []Option) *observer {
	var cfg config
	for _, opt := range opts {
		if opt != nil {
			opt(&cfg)
		}
	}
	tp, mp := cfg.tracerProvider, cfg.meterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	return &observer{
		tracer: tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		runDuration: floatHistogram(m, "txlock.run.duration", "s",
			"Duration of txlock.Run, backoff included.", durationBuckets),
		runAttempts: intHistogram(m, "txlock.run.attempts", "{attempt}",
			"Attempts made by one txlock.Run.", attemptBuckets),
		retries: counter(m, "txlock.retries", "{retry}",
			"Attempts txlock.Run ran again, by reason."),
		lockWait: floatHistogram(m, "txlock.lock.wait.duration", "s",
			"Time an attempt waited for its locks.", lockWaitBuckets),
		leasesLost: counter(m, "txlock.lock.lost_leases", "{lease}",
			"Attempts during which a lease was lost."),
		ambiguous: counter(m, "txlock.ambiguous_commits", "{commit}",
			"COMMITs whose outcome was unknown, by what was then found out."),
		unavailable: counter(m, "txlock.lock.unavailable", "{attempt}",
			"Attempts that met an unreachable lock service."),
	}
}

// The instrument constructors fall back to a no-op instrument, after
// reporting the error, when the meter refuses one.

func floatHistogram(m metric.Meter, name, unit, desc string, buckets []float64) metric.Float64Histogram {
	h, err := m.Float64Histogram(name, metric.WithUnit(unit), metric.WithDescription(desc),
		metric.WithExplicitBucketBoundaries(buckets...))
	if err != nil {
		handle(name, err)
		h, _ = noop.Meter{}.Float64Histogram(name)
	}
	return h
}

func intHistogram(m metric.Meter, name, unit, desc string, buckets []float64) metric.Int64Histogram {
	h, err := m.Int64Histogram(name, metric.WithUnit(unit), metric.WithDescription(desc),
		metric.WithExplicitBucketBoundaries(buckets...))
	if err != nil {
		handle(name, err)
		h, _ = noop.Meter{}.Int64Histogram(name)
	}
	return h
}

func counter(m metric.Meter, name, unit, desc string) metric.Int64Counter {
	c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	if err != nil {
		handle(name, err)
		c, _ = noop.Meter{}.Int64Counter(name)
	}
	return c
}

// handle reports an instrument that could not be created to OpenTelemetry's
// error handler; the observer then records nothing for it.
func handle(name string, err error) {
	otel.Handle(fmt.Errorf("txlockotel: creating instrument %s: %w", name, err))
}

func (o *observer) runStart(ctx context.Context, info txlock.RunInfo) context.Context {
	attrs := append(systemAttrs(info, 2), keyCountKey.Int(info.Keys))
	ctx, span := o.tracer.Start(ctx, runSpanName,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attrs...))
	return context.WithValue(ctx, spanKey{o: o}, span)
}

func (o *observer) attemptStart(ctx context.Context, info txlock.RunInfo, n int) context.Context {
	attrs := append(systemAttrs(info, 2), attemptNumberKey.Int(n), keyCountKey.Int(info.Keys))
	// The parent is this observer's Run span, even when another observer
	// put a span of its own in ctx after it.
	if run, ok := ctx.Value(spanKey{o: o}).(trace.Span); ok {
		ctx = trace.ContextWithSpan(ctx, run)
	}
	ctx, span := o.tracer.Start(ctx, attemptSpanName,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attrs...))
	return context.WithValue(ctx, spanKey{o: o, attempt: true}, span)
}

func (o *observer) attemptDone(ctx context.Context, info txlock.RunInfo, ev txlock.Event) {
	verdict := attemptVerdict(ev)
	var errType string
	if verdict != verdictCommitted {
		errType = attemptErrorType(ev)
	}
	// metric.WithAttributes copies its arguments, so each call below may
	// append to sys in place.
	sys := systemAttrs(info, 2)

	if info.Keys > 0 || ev.LockWait > 0 {
		o.lockWait.Record(ctx, ev.LockWait.Seconds(), metric.WithAttributes(sys...))
	}
	if ev.Retry {
		o.retries.Add(ctx, 1, metric.WithAttributes(append(sys, semconv.ErrorTypeKey.String(errType))...))
	}
	if ev.LeaseLost != nil {
		o.leasesLost.Add(ctx, 1, metric.WithAttributes(append(sys, verdictKey.String(verdict))...))
	}
	if ev.Commit != txlock.CommitKnown {
		o.ambiguous.Add(ctx, 1, metric.WithAttributes(append(sys, commitResolvedKey.String(resolution(ev.Commit)))...))
	}
	if lockUnavailable(ev) {
		o.unavailable.Add(ctx, 1, metric.WithAttributes(append(sys,
			verdictKey.String(verdict), lockDegradedKey.Bool(ev.Degraded != nil))...))
	}

	span, ok := ctx.Value(spanKey{o: o, attempt: true}).(trace.Span)
	if !ok {
		return
	}
	attrs := []attribute.KeyValue{
		verdictKey.String(verdict),
		lockWaitKey.Float64(ev.LockWait.Seconds()),
	}
	if ev.SQLState != "" {
		attrs = append(attrs, semconv.DBResponseStatusCode(ev.SQLState))
	}
	if ev.Commit != txlock.CommitKnown {
		attrs = append(attrs, commitOutcomeKey.String(ev.Commit.String()))
	}
	if ev.Degraded != nil {
		attrs = append(attrs, lockDegradedKey.Bool(true))
	}
	if ev.LeaseLost != nil {
		attrs = append(attrs, lockLeaseLostKey.Bool(true))
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		span.SetStatus(codes.Error, errType)
	}
	span.SetAttributes(attrs...)
	span.End()
}

func (o *observer) runDone(ctx context.Context, info txlock.RunInfo, res txlock.RunResult) {
	verdict, errType := verdictCommitted, ""
	if res.Err != nil || res.Panicked {
		verdict, errType = verdictFailed, runErrorType(res)
	}
	attrs := systemAttrs(info, 1)
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
	}
	o.runDuration.Record(ctx, res.Duration.Seconds(), metric.WithAttributes(attrs...))
	o.runAttempts.Record(ctx, int64(res.Attempts), metric.WithAttributes(attrs...))

	span, ok := ctx.Value(spanKey{o: o}).(trace.Span)
	if !ok {
		return
	}
	attrs = []attribute.KeyValue{
		verdictKey.String(verdict),
		attemptCountKey.Int(res.Attempts),
	}
	if code, ok := sqladapter.SQLState(res.Err); ok {
		attrs = append(attrs, semconv.DBResponseStatusCode(code))
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		span.SetStatus(codes.Error, errType)
	}
	span.SetAttributes(attrs...)
	span.End()
}

// systemAttrs returns db.system.name when txlock could tell it, in a
// slice with room for extra more attributes.
func systemAttrs(info txlock.RunInfo, extra int) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 1+extra)
	if info.System != "" {
		attrs = append(attrs, semconv.DBSystemNameKey.String(info.System))
	}
	return attrs
}

// attemptVerdict says what became of an attempt.
func attemptVerdict(ev txlock.Event) string {
	switch {
	case ev.Panicked:
		return verdictFailed
	case ev.Err == nil:
		return verdictCommitted
	case ev.Retry:
		return verdictRetry
	}
	return verdictFailed
}

// attemptErrorType is error.type for a failed attempt: txlock's reason
// when the error was one Run retries (even on the last attempt), else the
// class of the final error.
func attemptErrorType(ev txlock.Event) string {
	switch {
	case ev.Panicked:
		return errorTypePanic
	case ev.Reason != "":
		return ev.Reason
	}
	return errorType(ev.Err)
}

// runErrorType is error.type for a failed Run.
func runErrorType(res txlock.RunResult) string {
	if res.Panicked {
		return errorTypePanic
	}
	return errorType(res.Err)
}

// errorType names the class of a final error, from a small fixed set (see
// the package documentation), never from its message.
func errorType(err error) string {
	switch {
	case err == nil:
		return errorTypeOther
	case errors.Is(err, txlock.ErrTooManyAttempts):
		return "txlock.too_many_attempts"
	case errors.Is(err, txlock.ErrAmbiguousCommit):
		return "txlock.ambiguous_commit"
	case errors.Is(err, context.DeadlineExceeded):
		return errorTypeTimeout
	case errors.Is(err, context.Canceled):
		return errorTypeCancelled
	case errors.Is(err, txlock.ErrLockBusy):
		return "txlock.lock_busy"
	case errors.Is(err, txlock.ErrLockUnavailable):
		return "txlock.lock_unavailable"
	case errors.Is(err, txlock.ErrLockLost):
		return "txlock.lock_lost"
	case errors.Is(err, txlock.ErrNestedRun):
		return "txlock.nested_run"
	case errors.Is(err, txlock.ErrNotInRun):
		return "txlock.not_in_run"
	case errors.Is(err, txlock.ErrInvalid):
		return "txlock.invalid"
	}
	var typed interface{ ErrorType() string }
	if errors.As(err, &typed) {
		if t := typed.ErrorType(); t != "" {
			return t
		}
	}
	if code, ok := sqladapter.SQLState(err); ok {
		return code
	}
	return errorTypeOther
}

// resolution is txlock.commit.resolution for a COMMIT whose outcome was
// unknown.
func resolution(c txlock.CommitOutcome) string {
	switch c {
	case txlock.CommitFoundCommitted:
		return "resolved_committed"
	case txlock.CommitFoundAborted:
		return "resolved_aborted"
	}
	return "unresolved"
}

// lockUnavailable reports whether the attempt met an unreachable lock
// service: a Locker carried on without its lock, or the attempt failed
// because the service could not be reached.
func lockUnavailable(ev txlock.Event) bool {
	return ev.Degraded != nil || ev.Reason == "lock_unavailable" || errors.Is(ev.Err, txlock.ErrLockUnavailable)
}
