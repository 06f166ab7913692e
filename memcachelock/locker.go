package memcachelock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/keyfmt"
	"github.com/txlock/txlock/internal/keyqueue"
)

const (
	// DefaultTTL is the lease of a lock when WithTTL is not given. A
	// holder refreshes it while its transaction runs.
	DefaultTTL = 30 * time.Second
	// MinTTL is the shortest lease WithTTL accepts. memcached counts
	// expiry in whole seconds on a clock that ticks once a second, so a
	// lease of n seconds can end after n-1; two seconds leave the
	// refresher a second at least.
	MinTTL = 2 * time.Second
	// MaxTTL is the longest lease WithTTL accepts: memcached reads a
	// longer expiry as an absolute Unix time.
	MaxTTL = 30 * 24 * time.Hour
	// DefaultPrefix starts every memcached key when WithPrefix is not
	// given; memcachelock puts ":" after it.
	DefaultPrefix = "txlock"
	// DefaultHandoffLimit is how many times in a row a process may hand a
	// key on to its own next waiter while other processes wait for it.
	DefaultHandoffLimit = 8
	// DefaultMaxKeys is how many keys one Acquire may lock unless
	// WithMaxKeys says otherwise. Every key costs round trips to take,
	// refresh and release; a run over more is refused before it takes any.
	DefaultMaxKeys = 1000
	// MaxIdleConns is what New sets the client's MaxIdleConns to when the
	// caller left it 0. gomemcache's own default of 2 closes and redials
	// connections as soon as more than two calls overlap.
	MaxIdleConns = 64
)

// Locker holds named locks in memcached. It implements txlock.Locker and is
// acquired before BEGIN. It is safe for concurrent use; make one per
// process and client, and share it: its Runs queue in the process, and it
// is one process in the queues kept in memcached.
type Locker struct {
	c       *memcache.Client
	cfg     config
	proc    string              // this Locker's ID in the queues of other processes
	local   keyqueue.Map[*hold] // this process's Runs, per memcached key
	health  health              // memcached's availability
	tokens  atomic.Uint64       // owner tokens issued
	refresh chan struct{}       // one slot per refresh that may run at once
	tenures tenures             // how long other processes keep each key
	live    atomic.Int64        // holds with a running refresher, for leak checks
	sched   schedule            // runs the refreshers of the holds
	warned  struct {
		sync.Mutex
		at map[string]time.Time // when each warning was last logged
		n  map[string]int       // how many were left out since
	}
}

type config struct {
	ttl          time.Duration
	prefix       string
	failOpen     bool
	log          *slog.Logger // for warnings; nil: slog.Default() at the time
	handoffLimit int
	maxKeys      int
	err          error // the first bad option, reported by Check and Acquire
}

// Option configures a Locker. As in every package of this module, a bad
// value is an error wrapping txlock.ErrInvalid; since New cannot return
// it, Check and every Acquire do.
type Option func(*config) error

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: memcachelock: "+format, append([]any{txlock.ErrInvalid}, args...)...)
}

// WithTTL sets the lease of each lock: how long memcached keeps it if its
// holder stops refreshing it (crashed, paused, cut off). The holder
// refreshes it every TTL/3 (every (TTL-1s)/2 under 3 s) while its
// transaction runs, so a long transaction does not lose it. d must be
// between MinTTL (2 s) and MaxTTL (30 days). Expiry has a resolution of one second: a lock not refreshed
// may last between d-1s and d.
func WithTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < MinTTL || d > MaxTTL {
			return invalid("WithTTL(%v): want between %v and %v", d, MinTTL, MaxTTL)
		}
		c.ttl = d
		return nil
	}
}

// WithPrefix sets the string put before every key (DefaultPrefix,
// "txlock", by default), so several applications can share a memcached.
// memcachelock puts ":" after it; a prefix given with a trailing ":" is
// the same prefix without it. It must be printable ASCII without spaces or
// further ":", at most 205 bytes; "" is allowed. Two different prefixes
// never share a lock.
func WithPrefix(p string) Option {
	return func(c *config) error {
		p = strings.TrimSuffix(p, separator)
		if err := checkPrefix(p); err != nil {
			return err
		}
		c.prefix = p
		return nil
	}
}

// WithFailOpen makes an unreachable memcached not an error: Acquire carries
// on at once without the memcached lock, holding only this process's
// in-memory lock, and logs a warning (see WithLogger; a non-nil logger here
// is the same as WithLogger(logger)); Run reports it in Event.Degraded.
//
// This is only safe where the database itself guards correctness
// (SERIALIZABLE, a constraint, with txlock.Run's retries): the lock then
// only saves wasted work, and without it writers conflict and retry instead
// of queueing. With advisorylock in the same Run it is not needed: Run then
// carries on under the database lock when memcached is down, without this
// option. A lock found lost (the key gone or someone else's) is still
// txlock.ErrLockLost: fail-open is about an unreachable server, not about a
// lock that was taken over.
func WithFailOpen(logger *slog.Logger) Option {
	return func(c *config) error {
		c.failOpen = true
		if logger != nil {
			c.log = logger
		}
		return nil
	}
}

// WithLogger sets where the Locker's warnings go: carrying on without
// memcached (fail-open, or a run guarded by a lock held in the database),
// at most one every ten seconds, with a count of those left out. The
// default is slog.Default() at the time of the warning. Key values are
// never logged. A nil logger means the default.
func WithLogger(logger *slog.Logger) Option {
	return func(c *config) error {
		c.log = logger
		return nil
	}
}

// WithMaxKeys sets how many keys one Acquire may lock (DefaultMaxKeys,
// 1000, by default); more is an error wrapping txlock.ErrInvalid, before
// any lock is taken. n must be at least 1.
func WithMaxKeys(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return invalid("WithMaxKeys(%d): want at least 1", n)
		}
		c.maxKeys = n
		return nil
	}
}

// WithHandoffLimit sets how many times in a row this process may pass a
// key from one of its Runs to the next without going through memcached while
// other processes are queued for it (DefaultHandoffLimit). A local hand-off
// costs no round trip and no poll; the limit makes the key rotate between
// processes. 1 means every Run of a queued key goes back to the queue; n must
// be at least 1.
func WithHandoffLimit(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return invalid("WithHandoffLimit(%d): want at least 1", n)
		}
		c.handoffLimit = n
		return nil
	}
}

// New returns a Locker that keeps its locks in c. It never fails: a nil
// client or a bad option is reported by Check and by every Acquire as an
// error wrapping txlock.ErrInvalid. Call Check (or txlock.Check) at startup
// to find them, and an unreachable memcached, before the first request.
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
	cfg := config{ttl: DefaultTTL, prefix: DefaultPrefix, handoffLimit: DefaultHandoffLimit, maxKeys: DefaultMaxKeys}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil && cfg.err == nil {
			cfg.err = err
		}
	}
	if c == nil && cfg.err == nil {
		cfg.err = invalid("nil *memcache.Client")
	} else if c != nil && c.MaxIdleConns == 0 {
		c.MaxIdleConns = MaxIdleConns
	}
	return &Locker{c: c, cfg: cfg, proc: randomID(8), refresh: make(chan struct{}, maxRefreshes)}
}

// Check reports a bad configuration (an error wrapping txlock.ErrInvalid)
// or memcached servers that do not answer (txlock.ErrLockUnavailable),
// so that a program can fail at startup instead of at its first request.
func (l *Locker) Check(ctx context.Context) error {
	switch {
	case l == nil:
		return invalid("nil *Locker")
	case l.cfg.err != nil:
		return l.cfg.err
	case ctx == nil:
		return invalid("Check: nil context")
	case ctx.Err() != nil:
		return fmt.Errorf("memcachelock: check: %w", ctx.Err())
	}
	if err := l.c.Ping(); err != nil {
		return unavailable("check", err)
	}
	return nil
}

// Traits reports that memcached locks are taken before BEGIN, so waiters
// hold no database connection, and that a lease can be lost.
func (l *Locker) Traits(*sql.TxOptions) txlock.Traits {
	return txlock.Traits{Stage: txlock.BeforeBegin}
}

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
// While memcached cannot be reached, Acquire waits for it within ctx (one
// caller of the Locker probes it, with backoff; the others wait for the
// outcome), unless req.Guarded or WithFailOpen says it may carry on without
// the lock: then it does so at once, and calls req.Degraded.
//
// Errors: txlock.ErrInvalid for a bad configuration or no keys;
// txlock.ErrLockBusy at once with req.TryOnce when a key is taken; an error
// wrapping ctx.Err() when ctx ends while waiting for a key;
// txlock.ErrLockUnavailable, wrapping gomemcache's error, when memcached
// is still unreachable when ctx ends (or at once with req.TryOnce).
func (l *Locker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	switch {
	case l == nil:
		return nil, invalid("nil *Locker")
	case l.cfg.err != nil:
		return nil, l.cfg.err
	case len(req.Keys) == 0:
		return nil, invalid("no keys")
	case len(req.Keys) > l.cfg.maxKeys:
		return nil, invalid("%d keys in one run, at most %d (WithMaxKeys)", len(req.Keys), l.cfg.maxKeys)
	}
	degrade := req.Guarded || l.cfg.failOpen
	ls := &lease{l: l, lost: req.Lost, keys: make([]held, 0, len(req.Keys))}
	for _, k := range req.Keys {
		mk := memKey(l.cfg.prefix, k)
		h, err := l.lockKey(ctx, mk, k, req.TryOnce, degrade)
		if err != nil && degrade && errors.Is(err, txlock.ErrLockUnavailable) {
			l.degraded(req, err)
			err = nil // carry on with the local lock only
		}
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.callBudget(len(ls.keys)))
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

// lockKey takes one key: first this process's queue for it, then, unless
// the previous local holder handed its memcached lock on, memcached. On an
// error that degrade may carry on from (ErrLockUnavailable), the local lock
// stays held and the hold is nil.
func (l *Locker) lockKey(ctx context.Context, mk, name string, try, degrade bool) (*hold, error) {
	var h *hold
	if try {
		if !l.local.TryLock(mk) {
			return nil, fmt.Errorf("%w: memcachelock: key %s is held in this process", txlock.ErrLockBusy, keyfmt.Quote(name))
		}
	} else {
		var err error
		if h, err = l.local.Lock(ctx, mk); err != nil {
			return nil, fmt.Errorf("memcachelock: waiting for key %s: %w", keyfmt.Quote(name), err)
		}
	}
	if h != nil {
		return h, nil
	}
	t := l.newTaker(ctx, mk, name, try, degrade)
	h, err := t.take(ctx)
	if err == nil {
		return h, nil
	}
	if degrade && errors.Is(err, txlock.ErrLockUnavailable) {
		return nil, err // keep the local lock
	}
	if t.joined && l.local.Waiters(mk) == 0 {
		// Nobody here takes over our place in the remote queue: if the
		// key was handed to us meanwhile, pass it on.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.callBudget(1))
		l.withdraw(wctx, mk)
		cancel()
	}
	l.local.Unlock(mk)
	return nil, err
}

// degraded reports that Acquire carries on without a memcached lock: to
// Run, and as a warning. Key values are not logged: they can be personal
// data.
func (l *Locker) degraded(req txlock.Request, err error) {
	if req.Degraded != nil {
		req.Degraded(err)
	}
	why := "the run is guarded by a lock held in the database"
	if !req.Guarded {
		why = "fail-open"
	}
	l.warn("memcachelock: memcached unavailable, carrying on without its lock", "why", why, "err", err)
}

// warn logs msg at Warn, at most once every warnEvery per message, with a
// count of the ones left out.
func (l *Locker) warn(msg string, args ...any) {
	l.warned.Lock()
	defer l.warned.Unlock()
	if l.warned.at == nil {
		l.warned.at, l.warned.n = map[string]time.Time{}, map[string]int{}
	}
	if time.Since(l.warned.at[msg]) < warnEvery {
		l.warned.n[msg]++
		return
	}
	log := l.cfg.log
	if log == nil {
		log = slog.Default()
	}
	log.Warn(msg, append(args, "suppressed", l.warned.n[msg])...)
	l.warned.at[msg], l.warned.n[msg] = time.Now(), 0
}

// warnEvery rate-limits warnings.
const warnEvery = 10 * time.Second

// callBudget bounds a cleanup that runs after the caller's context ended:
// a few calls per key, each bounded by the client's timeout.
func (l *Locker) callBudget(keys int) time.Duration {
	t := l.c.Timeout
	if t <= 0 {
		t = memcache.DefaultTimeout
	}
	return time.Duration(4+keys) * t
}

type held struct {
	mk   string
	name string
	h    *hold // nil: carrying on without memcached, only the local lock
}

// lease is the keys of one Acquire.
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

// Verify reads every lock once (one gets per server and batch) and checks
// that it still carries this lease's owner token. A lock gone or someone
// else's is an error wrapping txlock.ErrLockLost. An unreachable server is
// an error wrapping txlock.ErrLockUnavailable (Run rolls back and tries
// again), or, with WithFailOpen, nil. The CAS IDs read here let an
// unchanged lock be released with a single CAS.
func (ls *lease) Verify(ctx context.Context) error {
	hs := make([]held, 0, len(ls.keys))
	keys := make([]string, 0, len(ls.keys))
	for _, k := range ls.keys {
		if k.h != nil {
			hs = append(hs, k)
			keys = append(keys, k.mk)
		}
	}
	if len(hs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memcachelock: verify: %w", err)
	}
	if down, last := ls.l.health.isDown(); down && !ls.l.cfg.failOpen {
		return downError("verify", last)
	}
	items, err := ls.l.getMulti(keys)
	if err != nil {
		if ls.l.cfg.failOpen {
			return nil
		}
		return unavailable("verify", err)
	}
	for _, k := range hs {
		if err := k.h.observe(items[k.mk]); err != nil {
			return fmt.Errorf("memcachelock: verify key %s: %w", keyfmt.Quote(k.name), err)
		}
	}
	return nil
}

// Release gives every key back, last first, and only where this lease still
// owns it: the next Run of this process that waits for the key gets it
// directly, or the lock's value is compare-and-swapped to hand the key to the
// next waiting process, or to expired. A lock found lost is left alone: it
// is not an error, there is nothing to give back. Many keys are released
// several at a time. When Release returns, the keys are free (or handed on):
// a caller that does not wait can take them at once.
func (ls *lease) Release(ctx context.Context) error {
	keys := ls.keys
	ls.keys = nil
	for _, k := range keys {
		if k.h != nil {
			k.h.attach(nil)
		}
	}
	if len(keys) > parallelRelease {
		return ls.l.releaseMany(ctx, keys)
	}
	var first error
	for i := len(keys) - 1; i >= 0; i-- {
		k := keys[i]
		if err := ls.l.unlock(ctx, k.mk, k.h); err != nil && first == nil {
			first = fmt.Errorf("memcachelock: release key %s: %w", keyfmt.Quote(k.name), err)
		}
	}
	return first
}

// releaseMany releases many keys, several at a time, and returns the first
// error.
func (l *Locker) releaseMany(ctx context.Context, keys []held) error {
	var mu sync.Mutex
	var first error
	work := make(chan held)
	var wg sync.WaitGroup
	for range parallelRelease {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				if err := l.unlock(ctx, k.mk, k.h); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("memcachelock: release key %s: %w", keyfmt.Quote(k.name), err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := len(keys) - 1; i >= 0; i-- {
		work <- keys[i]
	}
	close(work)
	wg.Wait()
	return first
}

// parallelRelease is how many keys of one lease are released at a time
// when there are more than that.
const parallelRelease = 8
