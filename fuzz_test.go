package txlock_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/txlock/txlock"
)

// FuzzKeysThroughRun: through Run, a key always excludes itself and two
// different keys never exclude each other, whatever their bytes.
func FuzzKeysThroughRun(f *testing.F) {
	for _, seed := range [][2]string{
		{"a", "a"}, {"a", "b"}, {"name:ann", "name:Ann"}, {"\x00", ""}, {"k", "k\x00"},
		{"a\r\nflush_all\r\n", "a"}, {"\xff\xfe", "\xff"}, {"'; DROP TABLE t; --", "x"},
	} {
		f.Add(seed[0], seed[1])
	}
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	f.Fuzz(func(t *testing.T, a, b string) {
		if a == "" || b == "" {
			err := txlock.Run(context.Background(), db, []string{a, b}, nop)
			if !errors.Is(err, txlock.ErrInvalid) {
				t.Fatalf("empty key: %v, want ErrInvalid", err)
			}
			return
		}
		l := txlock.NewLocalLocker()
		lease, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{a}, TryOnce: true})
		if err != nil {
			t.Fatal(err)
		}
		defer lease.Release(context.Background())
		err = txlock.Run(context.Background(), db, []string{b}, nop, txlock.WithLocker(l), txlock.WithLockWait(0))
		switch {
		case a == b && !errors.Is(err, txlock.ErrLockBusy):
			t.Fatalf("key %q does not exclude itself: %v", a, err)
		case a != b && err != nil:
			t.Fatalf("keys %q and %q exclude each other: %v", a, b, err)
		}
	})
}
