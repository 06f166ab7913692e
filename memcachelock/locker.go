package memcachelock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
)

const (
	// DefaultTTL is the lease of a lock when WithTTL is not given, as in
	// the first seed. A holder refreshes it while its transaction runs.
	DefaultTTL = 30 * time.Second
	// MinTTL is the shortest lease WithTTL accepts. memcached counts
	// expiry in whole seconds on a clock that ticks once a second, so a
	// lease of n seconds can end after n-1; two seconds leave the
	// refresher a second at least.
	MinTTL = 2 * time.Second
	// MaxTTL is the longest lease WithTTL accepts: memcached reads a
	// longer expiry as an absolute Unix time.
	MaxTTL = 30 * 24 * time.Hour
	// DefaultPrefix starts every memcached key when WithPrefix is not given.
	DefaultPrefix = "txlock:"
	// DefaultHandoffLimit is how many times in a row a process may hand a
	// key on to its own next waiter while other processes wait for it.
	DefaultHandoffLimit = 8
	// MaxIdleConns is what New sets the client's MaxIdleConns to when the
	// caller left it 0. gomemcache's own default of 2 closes and redials
	// connections as soon as more than two calls overlap.
	MaxIdleConns = 64
)

// Locker holds named locks in memcached. It implements txlock.Locker and is
// acquired before BEGIN (InTx reports false). It is safe for concurrent use;
// make one per process and client, and share it.
type Locker struct {
	c    *memcache.Client
	cfg  config
	proc string // this Locker's ID in the queues of other processes
	q    queue
	live atomic.Int64 // holds with a running refresher, for leak checks
}

type config struct {
	ttl          time.Duration
	prefix       string
	failOpen     bool
	log          *slog.Logger
	handoffLimit int
	err          error // the first bad option, reported by Acquire
}

// Option configures a Locker. A bad option makes every Acquire fail with an
// error wrapping txlock.ErrInvalid; New itself never fails or panics.
type Option func(*config)

func (c *config) invalid(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: memcachelock: "+format, append([]any{txlock.ErrInvalid}, args...)...)
	}
}

// WithTTL sets the lease of each lock: how long memcached keeps it if its
// holder stops refreshing it (crashed, paused, cut off). The holder
// refreshes it every TTL/3 while its transaction runs, so a long transaction
// does not lose it. d must be between MinTTL (2 s) and MaxTTL (30 days);
// anything else, 0 included, is an error at Acquire. Expiry has a
// resolution of one second: a lock not refreshed may last between d-1s
// and d.
func WithTTL(d time.Duration) Option {
	return func(c *config) {
		if d < MinTTL || d > MaxTTL {
			c.invalid("WithTTL(%v): want between %v and %v", d, MinTTL, MaxTTL)
			return
		}
		c.ttl = d
	}
}

// WithPrefix sets the string put before every key (DefaultPrefix,
// "txlock:", by default), so several applications can share a memcached.
// It must be printable ASCII without spaces, at most 206 bytes; anything
// else is an error at Acquire. "" is allowed.
func WithPrefix(p string) Option {
	return func(c *config) {
		if err := checkPrefix(p); err != nil {
			if c.err == nil {
				c.err = err
			}
			return
		}
		c.prefix = p
	}
}

// WithFailOpen makes an unreachable memcached not an error: Acquire logs a
// warning through logger (slog.Default() if nil) and returns a lease that
// holds only this process's in-memory lock, whose Verify and Release do
// nothing with memcached; a lease whose server goes down mid-transaction
// logs and carries on at Verify instead of failing.
//
// This is only safe where the database itself guards correctness (advisory
// locks, SERIALIZABLE, a constraint, with txlock.Run's retries): the lock
// then only saves wasted work, and without it writers conflict and retry
// instead of queueing. A lock found lost (the key gone or someone else's)
// is still txlock.ErrLockLost: fail-open is about an unreachable server,
// not about a lock that was taken over.
func WithFailOpen(logger *slog.Logger) Option {
	return func(c *config) {
		if logger == nil {
			logger = slog.Default()
		}
		c.failOpen, c.log = true, logger
	}
}

// WithHandoffLimit sets how many times in a row this process may pass a
// key from one of its Runs to the next without going through memcached while
// other processes are queued for it (DefaultHandoffLimit). A local handoff
// costs no round trip and no poll; the limit makes the key rotate between
// processes. 1 means every Run of a queued key goes back to the queue; n must
// be at least 1.
func WithHandoffLimit(n int) Option {
	return func(c *config) {
		if n < 1 {
			c.invalid("WithHandoffLimit(%d): want at least 1", n)
			return
		}
		c.handoffLimit = n
	}
}

// New returns a Locker that keeps its locks in c. It never fails: a nil
// client or a bad option is reported by every Acquire as an error wrapping
// txlock.ErrInvalid.
//
// If c.MaxIdleConns is 0, New sets it to MaxIdleConns (64), because
// gomemcache's default of 2 idle connections per server makes concurrent
// lockers dial a new connection for almost every call. A value the caller set
// is left alone. Every call is bounded by c.Timeout (gomemcache's default
// is 500 ms), which is also how long a stopped server can delay an Acquire,
// Verify or Release past its context: gomemcache calls cannot be cancelled,
// so the Locker checks the context before each call instead of abandoning
// calls in flight.
//
// c may list several servers (memcache.New(a, b, c)); see the package
// documentation for what a change of that list means.
func New(c *memcache.Client, opts ...Option) *Locker {
	cfg := config{ttl: DefaultTTL, prefix: DefaultPrefix, handoffLimit: DefaultHandoffLimit}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if c == nil {
		cfg.invalid("nil *memcache.Client")
	} else if c.MaxIdleConns == 0 {
		c.MaxIdleConns = MaxIdleConns
	}
	return &Locker{c: c, cfg: cfg, proc: randomID(8)}
}

// InTx reports false: memcached locks are taken before BEGIN, so waiters hold
// no database connection.
func (l *Locker) InTx() bool { return false }

// Acquire takes every key of req, in order, and returns a lease holding
// them all, or an error and nothing held.
//
// Runs of one Locker that want the same key queue in this process, in
// arrival order, and only the first of them talks to memcached; when a Run
// releases, the next one in the queue gets the key directly (see
// WithHandoffLimit). Across processes the first waiter of each process polls
// memcached and joins a queue kept in the lock's value; see the package
// documentation.
//
// Errors: txlock.ErrInvalid for a bad configuration; txlock.ErrLockBusy at
// once with req.TryOnce when a key is taken; an error wrapping ctx.Err() when
// ctx ends while waiting; txlock.ErrLockUnavailable, wrapping gomemcache's
// error, when memcached cannot be reached (unless WithFailOpen).
func (l *Locker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	if l == nil {
		return nil, fmt.Errorf("%w: memcachelock: nil *Locker", txlock.ErrInvalid)
	}
	if l.cfg.err != nil {
		return nil, l.cfg.err
	}
	if len(req.Keys) == 0 {
		return nil, fmt.Errorf("%w: memcachelock: no keys", txlock.ErrInvalid)
	}
	ls := &lease{l: l, lost: req.Lost}
	for _, k := range req.Keys {
		mk := memKey(l.cfg.prefix, k)
		h, err := l.acquireKey(ctx, mk, k, req.TryOnce)
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.callBudget())
			_ = ls.Release(rctx)
			cancel()
			return nil, err
		}
		if h != nil {
			h.attach(ls.onLost)
		}
		ls.keys = append(ls.keys, held{mk: mk, name: k, h: h})
	}
	return ls, nil
}

// callBudget bounds a cleanup that runs after the caller's context ended:
// a few calls, each bounded by the client's timeout.
func (l *Locker) callBudget() time.Duration {
	t := l.c.Timeout
	if t <= 0 {
		t = memcache.DefaultTimeout
	}
	return 4 * t
}

// acquireKey takes one key: first this process's queue for it, then, unless
// the previous local holder handed its memcached lock on, memcached.
func (l *Locker) acquireKey(ctx context.Context, mk, name string, try bool) (*hold, error) {
	h, err := l.q.lock(ctx, mk, try)
	if err != nil {
		if errors.Is(err, txlock.ErrLockBusy) {
			return nil, fmt.Errorf("%w: memcachelock: key %s is held in this process", txlock.ErrLockBusy, describe(name))
		}
		return nil, fmt.Errorf("memcachelock: waiting for key %s: %w", describe(name), err)
	}
	if h != nil {
		return h, nil
	}
	h, err = l.take(ctx, mk, name, try)
	if err == nil {
		return h, nil
	}
	if errors.Is(err, txlock.ErrLockUnavailable) && l.cfg.failOpen {
		l.cfg.log.Warn("memcachelock: lock service unavailable, carrying on without the lock (fail-open)",
			"key", describe(name), "err", err)
		return nil, nil // the local lock stays held; no memcached lock
	}
	if ctx.Err() != nil && !errors.Is(err, txlock.ErrLockUnavailable) && l.q.waiters(mk) == 0 {
		// Nobody here takes over our place in the remote queue: leave it,
		// so holders do not hand the key to a process that stopped
		// waiting.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.callBudget())
		l.withdraw(wctx, mk)
		cancel()
	}
	_ = l.q.unlock(ctx, mk, nil, l.cfg.handoffLimit)
	return nil, err
}

type held struct {
	mk   string
	name string
	h    *hold // nil: fail-open, only the local lock
}

type lease struct {
	l    *Locker
	keys []held
	lost func(error)
}

func (ls *lease) onLost(cause error) {
	if ls.lost != nil {
		ls.lost(cause)
	}
}

// Verify reads every lock once (one gets per server, in parallel) and
// checks that it still carries this lease's owner token. A lock gone or
// someone else's is an error wrapping txlock.ErrLockLost. An unreachable
// server is an error wrapping txlock.ErrLockUnavailable, or, with
// WithFailOpen, a warning in the log and nil. The CAS IDs read here let an
// unchanged lock be released with a single CAS.
func (ls *lease) Verify(ctx context.Context) error {
	var hs []*hold
	for _, k := range ls.keys {
		if k.h != nil {
			hs = append(hs, k.h)
		}
	}
	if len(hs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memcachelock: verify: %w", err)
	}
	keys := make([]string, len(hs))
	for i, h := range hs {
		keys[i] = h.mk
	}
	items, err := ls.l.getMulti(keys)
	if err != nil {
		err = unavailable("verify", err)
		if ls.l.cfg.failOpen {
			ls.l.cfg.log.Warn("memcachelock: cannot verify locks before commit, carrying on (fail-open)", "err", err)
			return nil
		}
		return err
	}
	for i, h := range hs {
		if err := h.observe(items[h.mk]); err != nil {
			return fmt.Errorf("memcachelock: verify key %s: %w", describe(ls.keys[i].name), err)
		}
	}
	return nil
}

// Release gives every key back, last first, and only where this lease still
// owns it: the next Run of this process that waits for the key gets it
// directly, or the lock's value is compare-and-swapped to hand the key to the
// next waiting process, or to expired. A lock found lost is left alone: it
// is not an error, there is nothing to give back. It stops the lease's
// refreshers before it returns.
func (ls *lease) Release(ctx context.Context) error {
	var first error
	for i := len(ls.keys) - 1; i >= 0; i-- {
		k := ls.keys[i]
		if k.h != nil {
			k.h.attach(nil)
		}
		if err := ls.l.q.unlock(ctx, k.mk, k.h, ls.l.cfg.handoffLimit); err != nil && first == nil {
			first = fmt.Errorf("memcachelock: release key %s: %w", describe(k.name), err)
		}
	}
	ls.keys = nil
	return first
}

func (l *Locker) getMulti(keys []string) (map[string]*memcache.Item, error) {
	if len(keys) == 1 {
		it, err := l.get(keys[0])
		if errors.Is(err, memcache.ErrCacheMiss) {
			return map[string]*memcache.Item{}, nil
		}
		if err != nil {
			return nil, err
		}
		return map[string]*memcache.Item{keys[0]: it}, nil
	}
	var m map[string]*memcache.Item
	err := retried(func() (err error) {
		m, err = l.c.GetMulti(keys)
		return err
	})
	return m, err
}

// unavailable wraps a transport or server error from memcached.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: memcachelock: %s: %w", txlock.ErrLockUnavailable, op, err)
}
