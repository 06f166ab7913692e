package memcachelock

import (
	"crypto/rand"
	"encoding/base64"
	"slices"
	"strings"
)

// The value of a lock item is one of
//
//	L <token> [<process>...]   held by the hold whose owner token is <token>
//	H <process> [<process>...] handed to <process>, which may claim it by CAS
//
// The trailing process IDs are the remote waiters, in the order they
// announced themselves (with append). They are carried from holder to
// holder, so they form a queue of processes across the servers of one key:
// a holder that releases while processes wait hands the key to the first of
// them instead of freeing it for whoever polls first.
const (
	stateHeld    = 'L'
	stateHandoff = 'H'
)

type lockValue struct {
	state byte
	owner string   // token (L) or process ID (H)
	queue []string // waiting processes, oldest first, no duplicates
}

func parseValue(b []byte) (lockValue, bool) {
	f := strings.Fields(string(b))
	if len(f) < 2 || len(f[0]) != 1 || (f[0][0] != stateHeld && f[0][0] != stateHandoff) {
		return lockValue{}, false
	}
	v := lockValue{state: f[0][0], owner: f[1]}
	for _, p := range f[2:] {
		if !slices.Contains(v.queue, p) {
			v.queue = append(v.queue, p)
		}
	}
	return v, true
}

func (v lockValue) bytes() []byte {
	var b strings.Builder
	b.WriteByte(v.state)
	b.WriteByte(' ')
	b.WriteString(v.owner)
	for _, p := range v.queue {
		b.WriteByte(' ')
		b.WriteString(p)
	}
	return []byte(b.String())
}

// without returns q without p, as a new slice.
func without(q []string, p string) []string {
	out := make([]string, 0, len(q))
	for _, x := range q {
		if x != p {
			out = append(out, x)
		}
	}
	return out
}

// randomID returns n random bytes, base64url: no space, no control byte.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}
