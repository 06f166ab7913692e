package memcachelock

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/txlock/txlock"
)

// FuzzKeysExclude: in a real memcached, a key always excludes itself and
// two different keys (or prefixes) never exclude each other, whatever their
// bytes; and no key reaches the wire as anything but a valid memcached key.
func FuzzKeysExclude(f *testing.F) {
	for _, s := range [][3]string{
		{"txlock", "a", "a"}, {"txlock", "a", "b"}, {"app", "2:x", ":x"}, {"", "#x", "x"},
		{"txlock", "a\r\nflush_all\r\n", "a"}, {"txlock", strings.Repeat("k", 300), strings.Repeat("k", 299) + "j"},
		{"p", "\x00", " "}, {"p", "名前", "名前 "}, {"p", "#" + strings.Repeat("A", 43), "x"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	_, c := startMemcached(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, prefix, a, b string) {
		if a == "" || b == "" || checkPrefix(strings.TrimSuffix(prefix, separator)) != nil {
			return
		}
		for _, k := range []string{a, b} {
			mk := memKey(strings.TrimSuffix(prefix, separator), k)
			if len(mk) > maxKeyLen || !printable(mk) {
				t.Fatalf("memKey(%q, %q) = %q: not a valid memcached key", prefix, k, mk)
			}
		}
		l := New(c, WithPrefix(prefix))
		held, err := l.Acquire(ctx, txlock.Request{Keys: []string{a}, TryOnce: true})
		if err != nil {
			t.Fatalf("Acquire(%q): %v", a, err)
		}
		defer held.Release(ctx)
		other, err := l.Acquire(ctx, txlock.Request{Keys: []string{b}, TryOnce: true})
		switch {
		case a == b && !errors.Is(err, txlock.ErrLockBusy):
			t.Fatalf("key %q does not exclude itself: %v", a, err)
		case a != b && err != nil:
			t.Fatalf("keys %q and %q exclude each other: %v", a, b, err)
		}
		if err == nil {
			_ = other.Release(ctx)
		}
	})
}
