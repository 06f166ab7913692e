package memcachelock

import (
	"crypto/rand"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// The value of a lock item is one of
//
//	L <token> [@<since>] [<waiter>...] held by the hold whose owner token is <token>, since <since>
//	H <process> <until> [<waiter>...]  handed to <process>, which may claim it until <until>
//
// and a <waiter> is <process>:<deadline>, a process that waits for the key
// and the time its wait ends. Times are Unix milliseconds, but <since>, in
// microseconds by the holder's clock: when the holder took the key, so
// that waiters can tell how long it has had it (see pollInterval). It
// carries no colon, so that readers which do not know it skip it as a
// malformed waiter. The waiters
// form a queue across processes, oldest first: they join it with append
// (which keeps the holder's expiry), and it is carried from holder to
// holder. A process appears once; when it appears twice (a new wait after
// one that ended) the first place and the later deadline count.
//
// Anything else under a lock's key (a value written by something other
// than this package) is foreign data: the key is taken until it expires.
const (
	stateHeld    = 'L'
	stateHandoff = 'H'
)

type lockValue struct {
	state byte
	owner string // token (L) or process (H)
	until int64  // H: when the hand-off lapses
	since int64  // L: when the holder took the key, Unix µs; 0 if unknown
	queue []waiter
}

type waiter struct {
	proc     string
	deadline int64
}

func parseValue(b []byte) (lockValue, bool) {
	f := strings.Fields(string(b))
	if len(f) < 2 || len(f[0]) != 1 {
		return lockValue{}, false
	}
	v := lockValue{state: f[0][0], owner: f[1]}
	rest := f[2:]
	switch v.state {
	case stateHeld:
	case stateHandoff:
		if len(rest) == 0 {
			return lockValue{}, false
		}
		until, err := strconv.ParseInt(rest[0], 10, 64)
		if err != nil {
			return lockValue{}, false
		}
		v.until, rest = until, rest[1:]
	default:
		return lockValue{}, false
	}
	for _, e := range rest {
		if t, ok := strings.CutPrefix(e, "@"); ok {
			if since, err := strconv.ParseInt(t, 10, 64); err == nil && v.state == stateHeld && v.since == 0 && since > 0 {
				v.since = since
			}
			continue
		}
		proc, d, ok := strings.Cut(e, ":")
		if !ok || proc == "" {
			continue
		}
		deadline, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			continue
		}
		v.queue = addWaiter(v.queue, waiter{proc: proc, deadline: deadline})
	}
	return v, true
}

// addWaiter adds w at the end of q, or, if its process is there already,
// keeps that place with the later deadline.
func addWaiter(q []waiter, w waiter) []waiter {
	for i := range q {
		if q[i].proc == w.proc {
			q[i].deadline = max(q[i].deadline, w.deadline)
			return q
		}
	}
	return append(q, w)
}

func (v lockValue) bytes() []byte {
	var b strings.Builder
	b.Grow(32 + 28*len(v.queue))
	b.WriteByte(v.state)
	b.WriteByte(' ')
	b.WriteString(v.owner)
	if v.state == stateHandoff {
		b.WriteByte(' ')
		b.WriteString(strconv.FormatInt(v.until, 10))
	}
	if v.state == stateHeld && v.since > 0 {
		b.WriteString(" @")
		b.WriteString(strconv.FormatInt(v.since, 10))
	}
	for _, w := range v.queue {
		b.WriteByte(' ')
		b.WriteString(w.entry())
	}
	return []byte(b.String())
}

func (w waiter) entry() string { return w.proc + ":" + strconv.FormatInt(w.deadline, 10) }

// live returns the waiters of q other than proc whose wait has not ended
// by now, as a new slice.
func live(q []waiter, proc string, now time.Time) []waiter {
	out := make([]waiter, 0, len(q))
	for _, w := range q {
		if w.proc != proc && w.deadline > now.UnixMilli() {
			out = append(out, w)
		}
	}
	return out
}

// heldValue is the value of a lock taken by token at since.
func heldValue(token string, since time.Time, q []waiter) []byte {
	return lockValue{state: stateHeld, owner: token, since: since.UnixMicro(), queue: q}.bytes()
}

// expiredValue is what a released lock is swapped to, with a negative
// expiry that makes memcached drop it at once (gomemcache has no delete
// with CAS).
var expiredValue = []byte("-")

// randomID returns n random bytes, base64url: no space, no colon, no
// control byte.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}
