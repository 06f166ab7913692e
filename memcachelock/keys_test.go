package memcachelock

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

func TestMemKey(t *testing.T) {
	long := strings.Repeat("a", 999)
	hashOfNUL := memKey("", "\x00")[len(""):]
	cases := []string{"plain", "with space", "cr\r\nlf", "set x 0 0 1\r\nx", "nul\x00byte", strings.Repeat("k", 10<<10),
		"\xff\xfe invalid utf-8", "tab\t", "del\x7f", "ünï", long + "a", long + "b", "#raw", hashOfNUL, "x"}
	seen := map[string]string{}
	for _, k := range cases {
		mk := memKey(DefaultPrefix, k)
		if len(mk) > maxKeyLen || !printable(mk) || !strings.HasPrefix(mk, DefaultPrefix) {
			t.Errorf("memKey(%q) = %q: not a legal memcached key", k, mk)
		}
		if other, dup := seen[mk]; dup {
			t.Errorf("keys %q and %q share memcached key %q", other, k, mk)
		}
		seen[mk] = k
	}
	if got := memKey(DefaultPrefix, "plain"); got != "txlock:plain" {
		t.Errorf("plain key: %q, want the prefix followed by the key", got)
	}
	if memKey("", hashOfNUL) == memKey("", "\x00") {
		t.Error("a raw key equal to a hashed form shares its lock")
	}
	// A key that fits alone but not with the prefix is hashed.
	k := strings.Repeat("b", 245)
	if mk := memKey(DefaultPrefix, k); len(mk) > maxKeyLen {
		t.Errorf("prefix+key of %d bytes sent raw", len(mk))
	}
}

func TestHostileKeys(t *testing.T) {
	testenv.CheckLeaks(t)
	m, c := startMemcached(t)
	a, b := newLocker(t, c), newLocker(t, client(nil, m.Addr()))
	ctx := context.Background()
	long := strings.Repeat("z", 999)
	keys := []string{"with space", "cr\r\nlf", "set x 0 0 1\r\nx", "nul\x00byte", strings.Repeat("k", 10<<10),
		"\xff\xfe invalid utf-8", long + "1", long + "2", "#" + strings.Repeat("A", 43), "x"}
	for _, k := range keys {
		lease, err := a.Acquire(ctx, request(k))
		if err != nil {
			t.Fatalf("Acquire(%q): %v", k, err)
		}
		if err := lease.Verify(ctx); err != nil {
			t.Fatalf("Verify(%q): %v", k, err)
		}
		if _, err := b.Acquire(ctx, txlock.Request{Keys: []string{k}, TryOnce: true}); !errors.Is(err, txlock.ErrLockBusy) {
			t.Fatalf("second holder of %q: %v", k, err)
		}
		if err := lease.Release(ctx); err != nil {
			t.Fatalf("Release(%q): %v", k, err)
		}
	}
	// All at once: different keys, different locks, the two long keys
	// included.
	lease, err := a.Acquire(ctx, request(keys[:len(keys)-1]...))
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.Acquire(ctx, txlock.Request{Keys: []string{"x"}, TryOnce: true})
	if err != nil {
		t.Fatalf("key x should be free: %v", err)
	}
	_ = other.Release(ctx)
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing a key said was run as a command.
	if _, err := c.Get("x"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("key x exists: %v", err)
	}
}

func TestBadConfiguration(t *testing.T) {
	testenv.CheckLeaks(t)
	_, c := startMemcached(t)
	ctx := context.Background()
	bad := map[string]*Locker{
		"ttl 0":            New(c, WithTTL(0)),
		"ttl 1s":           New(c, WithTTL(time.Second)),
		"ttl 1500ms":       New(c, WithTTL(1500*time.Millisecond)),
		"ttl negative":     New(c, WithTTL(-time.Second)),
		"ttl 31 days":      New(c, WithTTL(31*24*time.Hour)),
		"prefix space":     New(c, WithPrefix("a b")),
		"prefix newline":   New(c, WithPrefix("a\r\n")),
		"prefix too long":  New(c, WithPrefix(strings.Repeat("p", 207))),
		"nil client":       New(nil),
		"handoff limit 0":  New(c, WithHandoffLimit(0)),
		"max keys 0":       New(c, WithMaxKeys(0)),
		"bad then good":    New(c, WithTTL(0), WithTTL(time.Minute)),
		"nil option first": New(nil, nil),
	}
	for name, l := range bad {
		if _, err := l.Acquire(ctx, request("k")); !errors.Is(err, txlock.ErrInvalid) {
			t.Errorf("%s: Acquire = %v, want ErrInvalid", name, err)
		}
		// Found at startup, before any request.
		if err := l.Check(ctx); !errors.Is(err, txlock.ErrInvalid) {
			t.Errorf("%s: Check = %v, want ErrInvalid", name, err)
		}
		if err := txlock.Check(ctx, txlock.WithLocker(l)); !errors.Is(err, txlock.ErrInvalid) {
			t.Errorf("%s: txlock.Check = %v, want ErrInvalid", name, err)
		}
	}
	var nilLocker *Locker
	if _, err := nilLocker.Acquire(ctx, request("k")); !errors.Is(err, txlock.ErrInvalid) {
		t.Errorf("nil *Locker: %v", err)
	}
	good := newLocker(t, c, WithTTL(2*time.Second), WithPrefix(""), WithFailOpen(slog.Default()), WithHandoffLimit(1), nil)
	if err := txlock.Check(ctx, txlock.WithLocker(good)); err != nil {
		t.Errorf("txlock.Check of a good Locker: %v", err)
	}
	down := New(memcache.New("127.0.0.1:1"))
	if err := txlock.Check(ctx, txlock.WithLocker(down)); !errors.Is(err, txlock.ErrLockUnavailable) {
		t.Errorf("txlock.Check with memcached unreachable = %v, want ErrLockUnavailable", err)
	}
	if err := good.Check(noCtx); !errors.Is(err, txlock.ErrInvalid) {
		t.Errorf("Check(nil) = %v, want ErrInvalid", err)
	}
	lease, err := good.Acquire(ctx, request("k"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := good.Acquire(ctx, request()); !errors.Is(err, txlock.ErrInvalid) {
		t.Errorf("no keys: %v", err)
	}
	if New(memcache.New("127.0.0.1:1")).c.MaxIdleConns != MaxIdleConns {
		t.Error("New did not raise MaxIdleConns")
	}
	own := memcache.New("127.0.0.1:1")
	own.MaxIdleConns = 3
	if New(own).c.MaxIdleConns != 3 {
		t.Error("New changed a MaxIdleConns the caller set")
	}
}

// noCtx is a nil context, passed on purpose where the API must refuse one.
var noCtx context.Context
