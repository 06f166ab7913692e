package memcachelock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/keyfmt"
)

// The acquire and wait protocol: how this process's first waiter for a key
// gets it from memcached. The package documentation describes it as states
// and transitions; this file is its code.

const (
	// stealAfter is how long a poller lets a key handed to another process
	// sit unclaimed (by its own clock, from when it first saw that
	// hand-off) before it claims the key itself: the process it was handed
	// to stopped waiting or died. The target polls every few hundred
	// microseconds.
	stealAfter = 25 * time.Millisecond
	// claimWindow bounds a hand-off in the value itself (until): past it,
	// anyone may claim the key, even a caller that does not wait. It is
	// generous, as it is compared across machines' clocks.
	claimWindow = 250 * time.Millisecond
	// noDeadline is the wait deadline announced by a waiter whose context
	// has none.
	noDeadline = 24 * time.Hour

	// tenureGap is the longest time between two reads across which a
	// change of holder counts as the end of one tenure: a waiter that
	// slept longer may have missed a whole tenure in between.
	tenureGap = 2 * maxPoll

	minPoll = 200 * time.Microsecond
	maxPoll = 5 * time.Millisecond
	// maxBehindPoll bounds the sleep of a waiter behind the first, so that
	// it learns of a queue that moved faster than expected.
	maxBehindPoll = 50 * time.Millisecond
)

// taker is one attempt of this process's head waiter to get a key from
// memcached.
type taker struct {
	l        *Locker
	mk, name string
	token    string
	deadline int64 // when our wait ends, Unix ms, as announced in the queue
	try      bool  // do not wait
	degrade  bool  // the caller may carry on without the lock: do not wait out an outage

	owner      string    // the holder or hand-off target last seen
	ownerSince time.Time // when owner took the key, or was first seen (see ownerChanged)
	tenure     bool      // owner is a holder whose tenure began at ownerSince
	dated      bool      // ... by the start it wrote into the value
	joined     bool      // we appended ourselves to the key's queue
	lastRead   time.Time // our previous read of the key
}

// read notes what a read of the key at now found.
func (t *taker) read(v lockValue, now time.Time) {
	if v.owner != t.owner {
		t.ownerChanged(v, now)
	}
	t.lastRead = now
}

// ownerChanged notes a new holder or hand-off target in v, read at now.
//
// A holder's tenure starts when it took the key: the time it wrote into
// the value, by its clock, when that is plausible by ours (not ahead, not
// older than a TTL), and otherwise when we saw it arrive. A waiter learns of
// a new holder only at its next read, up to maxPoll late, and would think
// the holder younger than it is. The tenure that ends is remembered
// (tenures): from its start to the next holder's start, or to when we saw
// it end.
//
// A hand-off target's clock starts when we first saw it, not at the last
// change of the item: waiters joining the queue change the item, and must
// not keep a key handed to a dead process stuck (stealAfter).
func (t *taker) ownerChanged(v lockValue, now time.Time) {
	since, stated := now, false
	if v.state == stateHeld && v.since > 0 {
		if s := time.UnixMicro(v.since); !s.After(now) && now.Sub(s) < t.l.cfg.ttl {
			since, stated = s, true
		}
	}
	if t.tenure && now.Sub(t.lastRead) <= tenureGap {
		end := now
		if stated {
			end = since
		}
		if d := end.Sub(t.ownerSince); d > 0 {
			t.l.tenures.note(t.mk, d)
		}
	}
	// A holder seen to arrive (after another owner) started about now.
	t.tenure = v.state == stateHeld && (stated || t.owner != "")
	t.dated = stated
	t.owner, t.ownerSince = v.owner, since
}

func (l *Locker) newTaker(ctx context.Context, mk, name string, try, degrade bool) *taker {
	deadline := time.Now().Add(noDeadline)
	if d, ok := ctx.Deadline(); ok {
		deadline = d
	}
	return &taker{l: l, mk: mk, name: name, token: l.newToken(), deadline: deadline.UnixMilli(), try: try, degrade: degrade}
}

// take gets the key: add it if it is free; claim it if it was handed to
// this process (or handed to one that does not claim it); otherwise join
// its queue and poll until one of those happens, ctx ends, or (with try)
// at once. While memcached cannot be reached it waits for it to come back,
// within ctx, unless the caller may carry on without the lock.
func (t *taker) take(ctx context.Context) (*hold, error) {
	var timer *time.Timer // made on the first wait: most takes never wait
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var down error // the last failure to reach memcached, if the last step failed so
	for first := true; ; first = false {
		if ctx.Err() != nil {
			if down != nil {
				return nil, downError("acquire", fmt.Errorf("%w (still down when the wait ended: %w)", down, ctx.Err()))
			}
			return nil, t.waitErr(ctx)
		}
		probe, err := t.l.health.enter(ctx, !t.try && !t.degrade)
		if err != nil {
			// Down, and either we may not wait, or it was still down
			// when the wait ended.
			return nil, downError("acquire", err)
		}
		h, wait, err := t.step(first)
		if errors.Is(err, txlock.ErrLockBusy) {
			// memcached answered: the key is taken. That is no sign of an
			// outage, for health nor for the caller.
			t.l.health.exit(probe, nil)
			return nil, err
		}
		t.l.health.exit(probe, err)
		switch {
		case h != nil:
			return h, nil
		case err != nil && unreachable(err) && !t.try && !t.degrade:
			down = err
			continue // health now says down: wait there for a probe
		case err != nil && unreachable(err):
			return nil, unavailable("acquire", err)
		case err != nil:
			return nil, err
		}
		down = nil
		if wait == 0 {
			continue
		}
		if !pause(ctx, wait, &timer) {
			return nil, t.waitErr(ctx)
		}
	}
}

func (t *taker) waitErr(ctx context.Context) error {
	return fmt.Errorf("memcachelock: waiting for key %s: %w", keyfmt.Quote(t.name), ctx.Err())
}

func (t *taker) busy() error {
	return fmt.Errorf("%w: memcachelock: key %s", txlock.ErrLockBusy, keyfmt.Quote(t.name))
}

// step makes one move. It returns the hold when the key is ours, or how
// long to wait before the next step, or an error: a raw memcached error
// (the caller tells unavailability from the rest), ErrLockBusy for try.
func (t *taker) step(first bool) (*hold, time.Duration, error) {
	if first {
		if h, err := t.add(); h != nil || err != nil {
			return h, 0, err
		}
		if t.try {
			// Taken. Unless it sits handed to someone who lets it lapse,
			// that is all a caller who does not wait needs to know.
			return t.stealLapsed()
		}
	}
	it, err := t.l.get(t.mk)
	if errors.Is(err, memcache.ErrCacheMiss) {
		if h, err := t.add(); h != nil || err != nil {
			return h, 0, err
		}
		return nil, minPoll, nil // someone else added it first
	}
	if err != nil {
		return nil, 0, err
	}
	now := time.Now()
	v, ok := parseValue(it.Value)
	switch {
	case !ok:
		// Not a lock value: someone else's data under our key. It blocks
		// the key until it expires.
		return nil, maxPoll, nil
	case v.state == stateHeld && v.owner == t.token:
		// An add of ours was applied though its answer was lost.
		return t.l.newHold(t.mk, t.token, v.queue, now.Add(-t.l.cfg.ttl/2)), 0, nil
	}
	t.read(v, now)
	if v.state == stateHandoff && (v.owner == t.l.proc || now.UnixMilli() > v.until || now.Sub(t.ownerSince) > stealAfter) {
		h, err := t.claim(it, v)
		return h, 0, err
	}
	pos, err := t.join(v)
	if err != nil || pos < 0 {
		return nil, 0, err
	}
	return nil, pollInterval(pos, now.Sub(t.ownerSince), t.l.tenures.expected(t.mk), t.dated), nil
}

// join puts this process in the key's queue unless it is there already,
// and returns its place in line (0 first). append keeps the holder's
// expiry. A place of -1 means the key vanished meanwhile: try add.
func (t *taker) join(v lockValue) (int, error) {
	pos := slices.IndexFunc(v.queue, func(w waiter) bool { return w.proc == t.l.proc })
	if pos < 0 {
		err := t.l.append(&memcache.Item{Key: t.mk, Value: []byte(" " + waiter{proc: t.l.proc, deadline: t.deadline}.entry())})
		if errors.Is(err, memcache.ErrNotStored) {
			return -1, nil
		}
		if err != nil {
			return 0, err
		}
		t.joined = true
		pos = len(v.queue)
	}
	if v.state == stateHandoff {
		pos++ // the process it was handed to goes first
	}
	return pos, nil
}

// add tries to create the lock. It returns the hold when it did, nothing
// when the key exists, and the error otherwise.
func (t *taker) add() (*hold, error) {
	start := time.Now()
	err := t.l.add(&memcache.Item{Key: t.mk, Value: heldValue(t.token, start, nil), Expiration: t.l.expiration()})
	switch {
	case err == nil:
		return t.l.newHold(t.mk, t.token, nil, start), nil
	case errors.Is(err, memcache.ErrNotStored):
		return nil, nil
	case !notSent(err):
		// The add may have been applied and only its answer lost: undo it
		// if so, rather than leave a lock nobody releases until its TTL.
		t.l.expireIfOurs(t.mk, t.token)
	}
	return nil, err
}

// claim takes a key handed to this process, or a hand-off that lapsed, by
// CAS. A conflict (someone else claimed it, or a waiter joined) means
// "look again".
func (t *taker) claim(it *memcache.Item, v lockValue) (*hold, error) {
	start := time.Now()
	q := live(v.queue, t.l.proc, start)
	err := t.l.cas(&memcache.Item{Key: t.mk, Value: heldValue(t.token, start, q), Expiration: t.l.expiration(), CasID: it.CasID})
	switch {
	case err == nil:
		return t.l.newHold(t.mk, t.token, q, start), nil
	case errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCacheMiss):
		return nil, nil
	}
	return nil, err
}

// stealLapsed is what a caller that does not wait does with a taken key:
// claim it if it sits handed to a process that let the hand-off lapse (a
// hand-off must not outlive the wait of the one it was handed to), and
// report it busy otherwise.
func (t *taker) stealLapsed() (*hold, time.Duration, error) {
	for range 2 {
		it, err := t.l.get(t.mk)
		switch {
		case errors.Is(err, memcache.ErrCacheMiss):
			h, err := t.add()
			if h == nil && err == nil {
				err = t.busy()
			}
			return h, 0, err
		case err != nil:
			return nil, 0, err
		}
		v, ok := parseValue(it.Value)
		switch {
		case ok && v.state == stateHeld && v.owner == t.token:
			// An add or claim of ours was applied though its answer was
			// lost (the retry on a new connection then found the key
			// taken): it is ours.
			return t.l.newHold(t.mk, t.token, v.queue, time.Now().Add(-t.l.cfg.ttl/2)), 0, nil
		case ok && v.state == stateHandoff && time.Now().UnixMilli() > v.until:
			h, err := t.claim(it, v)
			if h != nil || err != nil {
				return h, 0, err
			}
			continue // lost the race, or the claim's answer: look once more
		}
		return nil, 0, t.busy()
	}
	return nil, 0, t.busy()
}

// pollInterval is how long a waiter sleeps between two reads of a held key
// that another process has had for held, given what this Locker expects of
// a tenure (how long processes have kept this key, and how much that
// varies; zero when unknown).
//
// The first process in the queue sleeps while the holder is young, then
// polls every 200 µs (a few loopback round trips) from near the expected
// end on (a tenth of it, or two spreads, before it, whichever is more), so
// that a key handed to it is claimed at once. Without an expectation, or
// past twice it, it polls a fraction of the time the holder has had the
// key, from 200 µs up to 2 ms. The processes behind it need only learn in
// time that they have moved up: when the holder dated its tenure (dated)
// they read again about halfway into the next holder's expected tenure,
// well before its end nears; otherwise every half of the holder's time,
// from 1 to 5 ms.
//
// A sleep toward a point in time ends up to 25% early, never late; a
// steady poll is jittered by ±25%; both keep the waiters of several
// processes from polling in step. No waiter can get ahead by polling
// faster: a held key goes to the head of the queue, not to whoever reads
// first.
func pollInterval(pos int, held time.Duration, t tenure, dated bool) time.Duration {
	soon := t.mean - max(t.mean/10, 2*t.spread)
	switch {
	case pos > 0 && dated && t.mean > 0 && held < t.mean:
		return early(min(max(t.mean*3/2-held, time.Millisecond), maxBehindPoll))
	case pos > 0:
		return jitter(min(max(held/2, time.Millisecond), maxPoll))
	case t.mean > 0 && held < soon:
		return early(min(max(soon-held, minPoll), maxPoll))
	case t.mean > 0 && held < 2*t.mean:
		return jitter(minPoll)
	default:
		return jitter(min(max(held/4, minPoll), 2*time.Millisecond))
	}
}

// jitter returns d ±25%.
func jitter(d time.Duration) time.Duration { return d*3/4 + rand.N(d/2+1) }

// early returns d less up to 25%.
func early(d time.Duration) time.Duration { return d*3/4 + rand.N(d/4+1) }

// tenure is what a Locker expects of a holder's time with a key:
// exponentially weighted means of the tenures its waiters saw, and of their
// distance from that mean.
type tenure struct{ mean, spread time.Duration }

// tenures remembers, per key, how long processes keep it. It is bounded:
// past maxTenures keys it starts afresh.
type tenures struct {
	mu sync.Mutex
	m  map[string]tenure
}

const maxTenures = 4096

func (t *tenures) note(mk string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil || len(t.m) >= maxTenures {
		t.m = make(map[string]tenure)
	}
	old, ok := t.m[mk]
	if !ok {
		t.m[mk] = tenure{mean: d}
		return
	}
	dev := d - old.mean
	if dev < 0 {
		dev = -dev
	}
	t.m[mk] = tenure{mean: old.mean + (d-old.mean)/4, spread: old.spread + (dev-old.spread)/4}
}

func (t *tenures) expected(mk string) tenure {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[mk]
}

// expireIfOurs expires mk if it holds token, best-effort: it cleans up an
// add whose reply was lost.
func (l *Locker) expireIfOurs(mk, token string) {
	it, err := l.get(mk)
	if err != nil {
		return
	}
	if v, ok := parseValue(it.Value); ok && v.state == stateHeld && v.owner == token {
		_ = l.cas(&memcache.Item{Key: mk, Value: expiredValue, Expiration: -1, CasID: it.CasID})
	}
}

// withdraw passes the key on if it was handed to this process, which has
// stopped waiting for it, so that the next process need not wait for the
// hand-off to lapse. Best-effort. Our place in a held lock's queue needs no
// withdrawing: it carries our deadline, and holders skip waiters whose
// wait has ended.
func (l *Locker) withdraw(ctx context.Context, mk string) {
	for range casRetries {
		if ctx.Err() != nil {
			return
		}
		it, err := l.get(mk)
		if err != nil {
			return
		}
		v, ok := parseValue(it.Value)
		if !ok || v.state != stateHandoff || v.owner != l.proc {
			return
		}
		if err := l.cas(l.handOn(mk, it.CasID, v.queue, false)); !errors.Is(err, memcache.ErrCASConflict) {
			return
		}
	}
}

// newToken returns an owner token no other hold will ever have: this
// Locker's random ID and a counter.
func (l *Locker) newToken() string {
	return l.proc + "." + strconv.FormatUint(l.tokens.Add(1), 36)
}
