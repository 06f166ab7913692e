package txlockotel

import (
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the tracer and meter that
// txlockotel uses.
const ScopeName = "github.com/txlock/txlock/txlockotel"

// Option configures New and NewObserver. A nil Option is ignored.
type Option func(*config)

type config struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
}

// WithTracerProvider makes the observer start its spans with a tracer from
// tp instead of the global tracer provider. A nil tp keeps the global one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tracerProvider = tp
		}
	}
}

// WithMeterProvider makes the observer record its metrics with a meter
// from mp instead of the global meter provider. A nil mp keeps the global
// one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.meterProvider = mp
		}
	}
}
