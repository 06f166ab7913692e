package advisorylock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
)

// FuzzKeysExclude: in a real Postgres, a (namespace, key) pair always
// excludes itself and two different pairs never exclude each other,
// whatever their bytes; keys travel as bind parameters, so none can inject
// SQL.
func FuzzKeysExclude(f *testing.F) {
	for _, s := range [][4]string{
		{"", "a", "", "a"}, {"", "a", "", "b"}, {"a", "b\x00c", "a\x00b", "c"}, {"ab", "c", "a", "bc"},
		{"ns", "'; DROP TABLE x; --", "ns", "x"}, {"", "\xff", "", "\xfe"}, {"x", "", "", "x"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	db := testenv.Postgres(f)
	ctx := context.Background()
	// Advisory locks are shared by the whole server, and the fuzzer runs
	// workers in parallel processes: a namespace prefix of this process
	// keeps them apart, and keeps every equality between pairs as it was.
	own := fmt.Sprintf("fuzz%d:", os.Getpid())
	f.Fuzz(func(t *testing.T, ns1, k1, ns2, k2 string) {
		if k1 == "" || k2 == "" {
			return
		}
		ns1, ns2 = own+ns1, own+ns2
		tx1, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx1.Rollback()
		if _, err := advisorylock.New(advisorylock.WithNamespace(ns1)).Acquire(ctx,
			txlock.Request{Keys: []string{k1}, Stage: txlock.InTx, Conn: inTx{tx1}, TryOnce: true}); err != nil {
			t.Fatal(err)
		}
		tx2, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx2.Rollback()
		_, err = advisorylock.New(advisorylock.WithNamespace(ns2)).Acquire(ctx,
			txlock.Request{Keys: []string{k2}, Stage: txlock.InTx, Conn: inTx{tx2}, TryOnce: true})
		same := ns1 == ns2 && k1 == k2
		switch {
		case same && !errors.Is(err, txlock.ErrLockBusy):
			t.Fatalf("(%q, %q) does not exclude itself: %v", ns1, k1, err)
		case !same && err != nil:
			t.Fatalf("(%q, %q) and (%q, %q) exclude each other: %v", ns1, k1, ns2, k2, err)
		}
	})
}
