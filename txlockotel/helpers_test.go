package txlockotel_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/txlock/txlock"
	"github.com/txlock/txlock/retry"
	"github.com/txlock/txlock/txlockotel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	_ "modernc.org/sqlite"
)

// harness records what one txlockotel observer reports.
type harness struct {
	t      *testing.T
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	opt    txlock.Option
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	h.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	t.Cleanup(func() {
		_ = h.tp.Shutdown(context.Background())
		_ = h.mp.Shutdown(context.Background())
	})
	h.opt = txlockotel.New(txlockotel.WithTracerProvider(h.tp), txlockotel.WithMeterProvider(h.mp))
	return h
}

// callerSpan starts a span standing for the caller's own, from a tracer
// of the same provider.
func (h *harness) callerSpan(ctx context.Context) (context.Context, trace.Span) {
	return h.tp.Tracer("test").Start(ctx, "caller")
}

// ended returns the ended spans named name, in the order they ended.
func (h *harness) ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// one returns the only ended span named name.
func (h *harness) one(name string) sdktrace.ReadOnlySpan {
	h.t.Helper()
	got := h.ended(name)
	if len(got) != 1 {
		h.t.Fatalf("%d %q spans ended, want 1", len(got), name)
	}
	return got[0]
}

// metrics collects the metrics recorded so far, by instrument name.
func (h *harness) metrics() map[string]metricdata.Metrics {
	h.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		h.t.Fatalf("collect: %v", err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != txlockotel.ScopeName {
			h.t.Errorf("scope %q, want %q", sm.Scope.Name, txlockotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// counter returns the value of counter name for the data point with
// exactly attrs, and the number of data points it has.
func (h *harness) counter(name string, attrs ...attribute.KeyValue) (value int64, points int) {
	h.t.Helper()
	m, ok := h.metrics()[name]
	if !ok {
		return 0, 0
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		h.t.Fatalf("%s is a %T, want an int64 sum", name, m.Data)
	}
	want := attribute.NewSet(attrs...)
	for _, dp := range sum.DataPoints {
		if dp.Attributes.Equals(&want) {
			value = dp.Value
		}
	}
	return value, len(sum.DataPoints)
}

// histogram returns the count and sum of histogram name over the data
// point with exactly attrs.
func histogram[N int64 | float64](h *harness, name string, attrs ...attribute.KeyValue) (count uint64, sum N) {
	h.t.Helper()
	m, ok := h.metrics()[name]
	if !ok {
		h.t.Fatalf("no metric %s", name)
	}
	hist, ok := m.Data.(metricdata.Histogram[N])
	if !ok {
		h.t.Fatalf("%s is a %T", name, m.Data)
	}
	want := attribute.NewSet(attrs...)
	for _, dp := range hist.DataPoints {
		if dp.Attributes.Equals(&want) {
			return dp.Count, dp.Sum
		}
	}
	var have []string
	for _, dp := range hist.DataPoints {
		have = append(have, dp.Attributes.Encoded(attribute.DefaultEncoder()))
	}
	h.t.Fatalf("%s has no data point with %v; has %v", name, want.Encoded(attribute.DefaultEncoder()), have)
	return 0, 0
}

// noLeak fails if any span attribute, span status or metric attribute
// recorded so far contains secret.
func (h *harness) noLeak(secret string) {
	h.t.Helper()
	for _, s := range h.spans.Ended() {
		if strings.Contains(s.Status().Description, secret) {
			h.t.Errorf("span %s status %q contains %q", s.Name(), s.Status().Description, secret)
		}
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.String(), secret) {
				h.t.Errorf("span %s attribute %s=%q contains %q", s.Name(), kv.Key, kv.Value.String(), secret)
			}
		}
		for _, ev := range s.Events() {
			h.t.Errorf("span %s has event %q: none expected", s.Name(), ev.Name)
		}
	}
	for name, m := range h.metrics() {
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Histogram[int64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				sets = append(sets, dp.Attributes)
			}
		}
		for _, set := range sets {
			if enc := set.Encoded(attribute.DefaultEncoder()); strings.Contains(enc, secret) {
				h.t.Errorf("metric %s attributes %s contain %q", name, enc, secret)
			}
		}
	}
}

// attr returns the value of span attribute key, and whether it is set.
func attr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// wantAttrs checks span attributes: a nil value means the key must be
// absent.
func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[attribute.Key]any) {
	t.Helper()
	for key, w := range want {
		v, ok := attr(s, key)
		switch {
		case w == nil && ok:
			t.Errorf("%s: %s = %v, want it absent", s.Name(), key, v.String())
		case w == nil:
		case !ok:
			t.Errorf("%s: %s absent, want %v", s.Name(), key, w)
		case v.AsInterface() != w:
			t.Errorf("%s: %s = %#v, want %#v", s.Name(), key, v.AsInterface(), w)
		}
	}
}

// wantParent checks that child's parent is parent.
func wantParent(t *testing.T, child sdktrace.ReadOnlySpan, parent trace.SpanContext) {
	t.Helper()
	if got := child.Parent().SpanID(); got != parent.SpanID() {
		t.Errorf("%s: parent span %v, want %v", child.Name(), got, parent.SpanID())
	}
	if got := child.SpanContext().TraceID(); got != parent.TraceID() {
		t.Errorf("%s: trace %v, want %v", child.Name(), got, parent.TraceID())
	}
}

// openSQLite opens an in-memory SQLite database with one table.
func openSQLite(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Exec(`CREATE TABLE names (name TEXT PRIMARY KEY)`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	return db
}

// openMock opens a sqlmock database whose expectations must all be met by
// the end of the test.
func openMock(t *testing.T) (*sql.DB, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New()
	if err != nil {
		t.Fatalf("sqlmock: %v", err)
	}
	t.Cleanup(func() {
		if err := mock.ExpectationsWereMet(); err != nil {
			t.Errorf("sqlmock: %v", err)
		}
		_ = db.Close()
	})
	return db, mock
}

// fast are the options every test Run gets: its own LocalLocker (tests
// run in parallel), no backoff, no commit lookups.
func fast() []txlock.Option {
	return []txlock.Option{
		txlock.WithLocker(txlock.NewLocalLocker()),
		txlock.WithBackoff(retry.Constant(0)),
		txlock.WithCommitCheck(txlock.CommitCheckNever),
	}
}

// sqlState is a database error carrying a SQLSTATE, as drivers' errors do.
type sqlState string

func (s sqlState) Error() string    { return "database error " + string(s) }
func (s sqlState) SQLState() string { return string(s) }
