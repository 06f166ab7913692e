// Package testenv gives integration tests the real services they need: a
// private Postgres schema on the server named by TXLOCK_TEST_DATABASE_URL
// (default postgres://postgres@127.0.0.1:5432/test), and memcached
// processes started on free loopback ports, which tests may kill, pause and
// restart.
//
// A missing service skips the test on a developer's machine and fails it
// when CI=true, so CI can never pass by skipping.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// DefaultDatabaseURL is used when TXLOCK_TEST_DATABASE_URL is not set.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// InCI reports whether the tests run in CI, where a missing service is a
// failure rather than a skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "0" && v != "false"
}

// Unavailable skips t, or fails it in CI, because a service is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("required service unavailable (CI=true): %s", msg)
	}
	t.Skipf("service unavailable: %s (set CI=true to make this a failure)", msg)
}

// DatabaseURL returns the Postgres URL tests use.
func DatabaseURL() string {
	if u := os.Getenv("TXLOCK_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultDatabaseURL
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// PostgresURL creates a private schema for t and returns a URL whose
// connections use it as their search_path, so tests in parallel packages
// never see each other's tables. The schema is dropped when t ends.
func PostgresURL(t testing.TB) string {
	t.Helper()
	base := DatabaseURL()
	admin, err := sql.Open("pgx", base)
	if err != nil {
		Unavailable(t, "postgres %s: %v", base, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		Unavailable(t, "postgres %s: %v", base, err)
	}
	schema := "txlock_test_" + randomSuffix()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Postgres opens a *sql.DB (pgx stdlib driver) on a private schema for t.
// When t ends it checks that no connection is still in use, which catches a
// transaction or a Rows that leaked, then closes the pool.
func Postgres(t testing.TB) *sql.DB {
	t.Helper()
	db := OpenURL(t, PostgresURL(t))
	return db
}

// OpenURL opens a *sql.DB on url with the pgx driver and registers the
// leak check and Close on t's cleanup.
func OpenURL(t testing.TB, u string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		// database/sql returns connections asynchronously after a
		// cancelled query; give it a moment before calling it a leak.
		deadline := time.Now().Add(5 * time.Second)
		for db.Stats().InUse != 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := db.Stats().InUse; n != 0 {
			t.Errorf("leak: %d database connections still in use at the end of the test", n)
		}
		db.Close()
	})
	return db
}
