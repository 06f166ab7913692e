package txlock

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"time"

	"github.com/txlock/txlock/internal/seam"
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
)

// Option configures Run. Every package of this module follows the same
// convention: an Option reports a bad value as an error wrapping ErrInvalid,
// and a nil Option is ignored. Run returns that error before it touches the
// database; Check returns it at startup. Options are immutable once made, so
// one Option may be shared by concurrent Runs.
type Option func(*config) error

type config struct {
	lockers     []Locker
	txOptions   *sql.TxOptions
	maxAttempts int
	lockWait    time.Duration
	backoff     retry.Backoff
	classify    func(error, sqladapter.Phase) sqladapter.Class
	observers   []Observer
	commitCheck CommitCheck
	faults      []seam.Faults // injected by txlocktest
}

func init() {
	seam.Option = func(f seam.Faults) any {
		return Option(func(c *config) error {
			c.faults = append(c.faults[:len(c.faults):len(c.faults)], f)
			return nil
		})
	}
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
		c.lockers = defaultLockers
	}
	return c, nil
}

var defaultLockers = []Locker{defaultLocker}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Check validates opts as Run would and asks every Locker among them that
// implements Checker whether it is usable, so that a program can find a
// misconfigured locker or an unreachable lock service at startup rather
// than at its first request:
//
//	opts := []txlock.Option{txlock.WithLocker(memcachelock.New(mc), advisorylock.New())}
//	if err := txlock.Check(ctx, opts...); err != nil {
//		log.Fatal(err)
//	}
//
// It returns an error wrapping ErrInvalid for a bad option, or the first
// Locker's error.
func Check(ctx context.Context, opts ...Option) error {
	if ctx == nil {
		return invalid("nil context")
	}
	c, err := newConfig(opts)
	if err != nil {
		return err
	}
	for i, l := range c.lockers {
		if ch, ok := l.(Checker); ok {
			if err := ch.Check(ctx); err != nil {
				return fmt.Errorf("txlock: locker %d (%T): %w", i, l, err)
			}
		}
	}
	return nil
}

// WithLocker sets where the locks live. With several lockers every key is
// locked in each of them, in the order given; see Stage for where the
// transaction starts. The usual combination is memcached to queue writers
// outside the database, then advisory locks as the guarantee:
//
//	txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
//
// Without this option Run uses a process-wide LocalLocker. No lockers, a
// nil one, or the same one twice is an error.
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
// budget again). It also bounds how long a lock service that cannot be
// reached is waited for. 0 means try once: a busy lock is ErrLockBusy at
// once. Negative durations are an error. The context can always end the
// wait sooner.
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

// WithClassifier sets which database errors make Run try again. The
// default is sqladapter.Classify; use a sqladapter.Classifier to narrow
// retries on unique violations to named constraints:
//
//	txlock.WithClassifier(sqladapter.Classifier{UniqueConstraints: []string{"names_pkey"}}.Classify)
//
// It decides only about the database's errors: what txlock's own errors
// mean is fixed (see the package documentation, "What is retried"). A nil
// function is an error.
func WithClassifier(f func(err error, phase sqladapter.Phase) sqladapter.Class) Option {
	return func(c *config) error {
		if f == nil {
			return invalid("WithClassifier: nil function")
		}
		c.classify = f
		return nil
	}
}

// WithObserver adds o to the observers of Run: for logs, traces and
// metrics. It may be given several times; observers are called in the
// order given. WithLogger and the txlockotel module are built on it.
func WithObserver(o Observer) Option {
	return func(c *config) error {
		c.observers = append(c.observers[:len(c.observers):len(c.observers)], o)
		return nil
	}
}

// CommitCheck says when Run records a transaction's id before COMMIT, so
// that a COMMIT whose outcome is unknown (the connection broke while it was
// in flight) can be looked up instead of being reported as
// ErrAmbiguousCommit. It works with PostgreSQL 10 or later: Run asks
// txid_current_if_assigned() before COMMIT, and after a failed COMMIT asks
// txid_status() on another connection.
type CommitCheck int

const (
	// CommitCheckAuto records transaction ids while this process has seen
	// a fault in the last ten minutes (a database connection lost, a lease
	// lost, a COMMIT whose outcome was unknown, a lock service carried on
	// without or still unreachable when the lock wait ran out), and not
	// otherwise. Faults come in
	// clusters (a failover, a restart, a network partition): during one,
	// the extra round trip is cheap insurance; in calm weather it costs
	// nothing. The price is that the first fault after a calm spell is not
	// covered: a COMMIT that fails in flight before this process has seen
	// any other fault is ErrAmbiguousCommit. It is the default, because
	// recording on every Run measured too dear to impose (see
	// CommitCheckAlways).
	CommitCheckAuto CommitCheck = iota
	// CommitCheckAlways records transaction ids on every attempt. It costs
	// one round trip per Run: measured on a 2-core machine where Postgres
	// is CPU-bound (8 workers, a short check-then-insert), 0.81 of the
	// throughput without it; much less when the transaction does real
	// work. Choose it where every answer must say whether the write was
	// stored.
	CommitCheckAlways
	// CommitCheckNever never records them: an unknown COMMIT outcome is
	// always ErrAmbiguousCommit.
	CommitCheckNever
)

// WithCommitCheck sets when Run records transaction ids to look up unknown
// COMMIT outcomes; see CommitCheck. Databases other than PostgreSQL are
// never checked.
func WithCommitCheck(cc CommitCheck) Option {
	return func(c *config) error {
		if cc < CommitCheckAuto || cc > CommitCheckNever {
			return invalid("WithCommitCheck(%d): unknown mode", int(cc))
		}
		c.commitCheck = cc
		return nil
	}
}
