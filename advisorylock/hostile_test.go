package advisorylock_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
)

// TestLockWaitBeyondPostgresLimit: a lock wait longer than Postgres's
// largest lock_timeout (about 24.8 days) is cut to it, not sent as an
// invalid setting (22023).
func TestLockWaitBeyondPostgresLimit(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	release := holdInOtherTx(t, db, l, "k")
	time.AfterFunc(200*time.Millisecond, release)
	err := txlock.Run(context.Background(), db, []string{"k"}, noop, txlock.WithLocker(l),
		txlock.WithLockWait(30*24*time.Hour))
	if err != nil {
		t.Fatalf("Run with a 30-day lock wait on a contended key: %v", err)
	}
}

// TestTooManyKeys: every advisory lock takes a slot of Postgres's shared
// lock table; a run that fills it makes unrelated transactions fail. Above
// the limit Run refuses before taking any lock.
func TestTooManyKeys(t *testing.T) {
	db := testenv.Postgres(t)
	l := advisorylock.New(advisorylock.WithNamespace(t.Name()))
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	calls := 0
	err := txlock.Run(context.Background(), db, keys, func(context.Context, *sql.Tx) error { calls++; return nil }, txlock.WithLocker(l))
	if !errors.Is(err, txlock.ErrInvalid) || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("Run with 100,000 advisory keys = %v, want ErrInvalid naming the limit", err)
	}
	if calls != 0 {
		t.Error("the body ran")
	}
	// Raised with WithMaxKeys, within what the server allows.
	if err := txlock.Run(context.Background(), db, keys[:100], noop,
		txlock.WithLocker(advisorylock.New(advisorylock.WithNamespace(t.Name()), advisorylock.WithMaxKeys(100)))); err != nil {
		t.Fatalf("100 keys with WithMaxKeys(100): %v", err)
	}
}

// TestNotPostgres: advisory locks on another database say what is wrong.
func TestNotPostgres(t *testing.T) {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = txlock.Run(context.Background(), db, []string{"k"}, noop, txlock.WithLocker(advisorylock.New()))
	if !errors.Is(err, txlock.ErrInvalid) || !strings.Contains(err.Error(), "need PostgreSQL") {
		t.Fatalf("Run on SQLite = %v, want ErrInvalid saying advisory locks need PostgreSQL", err)
	}
}
