package txlock

import (
	"database/sql"
	"fmt"
	"reflect"
	"time"

	"github.com/txlock/txlock/retry"
	"github.com/txlock/txlock/sqladapter"
)

// Defaults used by Run when no option says otherwise.
const (
	// DefaultMaxAttempts is the number of attempts Run makes in all.
	DefaultMaxAttempts = 10
	// DefaultLockWait bounds the wait for locks. It matches memcachelock's
	// default lease of 30 s: a holder that keeps a key longer has lost it
	// anyway. The context may end the wait sooner.
	DefaultLockWait = 30 * time.Second
	// releaseTimeout bounds each Lease.Release, which runs on a context
	// detached from the caller's cancellation.
	releaseTimeout = 5 * time.Second
)

// Option configures one call of Run. A nil Option is ignored. Options are
// immutable once made, so one Option may be shared by concurrent Runs.
type Option func(*config) error

type config struct {
	lockers     []Locker
	txOptions   *sql.TxOptions
	maxAttempts int
	lockWait    time.Duration
	backoff     retry.Backoff
	classify    func(error, sqladapter.Phase) sqladapter.Class
	observer    func(Event)
	stable      bool // no locker can lose a lease: see Stable
}

func newConfig(opts []Option) (*config, error) {
	c := &config{
		maxAttempts: DefaultMaxAttempts,
		lockWait:    DefaultLockWait,
		backoff:     retry.Default,
		classify:    sqladapter.Classify,
	}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if len(c.lockers) == 0 {
		c.lockers = []Locker{defaultLocker}
	}
	c.stable = true
	for _, l := range c.lockers {
		if s, ok := l.(Stable); !ok || !s.LeasesCannotBeLost() {
			c.stable = false
		}
	}
	return c, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// WithLocker sets where the locks live. With several lockers every key is
// locked in each of them, in the order given; see Locker.InTx for where the
// transaction starts. The usual combination is memcached to queue writers
// outside the database, then advisory locks as the guarantee:
//
//	txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
//
// Without this option Run uses a process-wide LocalLocker. No lockers, or a
// nil one, is an error.
func WithLocker(ls ...Locker) Option {
	return func(c *config) error {
		if len(ls) == 0 {
			return invalid("WithLocker needs at least one Locker")
		}
		for i, l := range ls {
			if isNil(l) {
				return invalid("WithLocker: locker %d is nil", i)
			}
			// The same locker twice would wait on its own lock for
			// the whole lock wait.
			for _, prev := range ls[:i] {
				if reflect.TypeOf(l).Comparable() && prev == l {
					return invalid("WithLocker: locker %d (%T) is given twice", i, l)
				}
			}
		}
		c.lockers = append([]Locker(nil), ls...)
		return nil
	}
}

// WithTxOptions sets the isolation level and read-only flag of every
// attempt's transaction. nil means the driver's default. The options are
// copied when WithTxOptions is called, so later changes to *o have no
// effect.
func WithTxOptions(o *sql.TxOptions) Option {
	var cp *sql.TxOptions
	if o != nil {
		v := *o
		cp = &v
	}
	return func(c *config) error {
		c.txOptions = cp
		return nil
	}
}

// WithMaxAttempts sets how many attempts Run makes in all, the first one
// included. n must be at least 1; 1 means never retry.
func WithMaxAttempts(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return invalid("WithMaxAttempts(%d): want at least 1", n)
		}
		c.maxAttempts = n
		return nil
	}
}

// WithLockWait sets how long one attempt may wait for the locks of the
// keys given to Run, all lockers together (each later Lock call has the same
// budget again). 0 means try once: a busy lock is ErrLockBusy at once. Negative
// durations are an error. The context can always end the wait sooner.
func WithLockWait(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return invalid("WithLockWait(%v): negative duration", d)
		}
		c.lockWait = d
		return nil
	}
}

// WithBackoff sets the delay between attempts. It is slept after the
// failed attempt has rolled back and released its locks. nil means no delay.
func WithBackoff(b retry.Backoff) Option {
	if isNil(b) {
		b = retry.Constant(0)
	}
	return func(c *config) error {
		c.backoff = b
		return nil
	}
}

// WithClassifier sets which errors make Run try again. The default is
// sqladapter.Classify; use a sqladapter.Classifier to narrow retries on
// unique violations to named constraints:
//
//	txlock.WithClassifier(sqladapter.Classifier{UniqueConstraints: []string{"names_pkey"}}.Classify)
//
// A nil function is an error.
func WithClassifier(f func(err error, phase sqladapter.Phase) sqladapter.Class) Option {
	return func(c *config) error {
		if f == nil {
			return invalid("WithClassifier: nil function")
		}
		c.classify = f
		return nil
	}
}

// WithObserver calls f after every attempt, from the goroutine that called
// Run. Use it for metrics and logs. f must not block. nil removes the
// observer.
func WithObserver(f func(Event)) Option {
	return func(c *config) error {
		c.observer = f
		return nil
	}
}

// Event describes one finished attempt.
type Event struct {
	// Attempt is the attempt number, 1 first.
	Attempt int
	// Err is the attempt's error, nil when it committed.
	Err error
	// Retry reports whether Run will make another attempt.
	Retry bool
	// LockWait is how long the attempt waited for its locks.
	LockWait time.Duration
	// Duration is how long the attempt took, lock wait included.
	Duration time.Duration
	// ReleaseErr is the first error a Lease.Release returned, if any. It
	// does not change the outcome: the transaction had already ended.
	ReleaseErr error
}
