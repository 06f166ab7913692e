package migrations_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/migrations"
)

func TestUpPostgresIsIdempotentAndConcurrent(t *testing.T) {
	db := testenv.Postgres(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- migrations.Up(ctx, db, migrations.Postgres) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := migrations.Up(ctx, db, migrations.Postgres); err != nil {
		t.Fatal(err)
	}
	assertReusableNames(t, db, "$1", "now() + interval '1 hour'", "now() - interval '1 hour'")
}

func TestUpSQLite(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "names.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 2 {
		if err := migrations.Up(context.Background(), db, migrations.SQLite); err != nil {
			t.Fatal(err)
		}
	}
	assertReusableNames(t, db, "?", "'2999-01-01 00:00:00+00:00'", "'2000-01-01 00:00:00+00:00'")
}

// assertReusableNames checks the point of the schema: the same name may be
// stored twice (once expired), so nothing but the application guards it.
func assertReusableNames(t *testing.T, db *sql.DB, ph, future, past string) {
	t.Helper()
	for _, exp := range []string{past, future} {
		q := "INSERT INTO " + migrations.Table + " (name, owner, created_at, expires_at) VALUES (" + ph + ", 'o', " + past + ", " + exp + ")"
		if _, err := db.Exec(q, "ann"); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func TestBadInput(t *testing.T) {
	if err := migrations.Up(context.Background(), nil, migrations.Postgres); err == nil {
		t.Error("nil db accepted")
	}
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := migrations.Up(context.Background(), db, "mysql"); err == nil {
		t.Error("unknown dialect accepted")
	}
	if _, err := migrations.FS("oracle"); err == nil {
		t.Error("FS of an unknown dialect")
	}
}

// TestSQLiteTimesCompareAsInstants pins the choice the SQLite schema
// documents: times are TEXT as modernc.org/sqlite writes a time.Time with
// _time_format=sqlite, in UTC, and comparing that text compares instants,
// although the fraction has no fixed width ("…:05+00:00", "…:05.1+00:00",
// "…:05.15+00:00").
func TestSQLiteTimesCompareAsInstants(t *testing.T) {
	dsn := "file:" + filepath.Join(t.TempDir(), "t.db") + "?_time_format=sqlite"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := migrations.Up(ctx, db, migrations.SQLite); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	offsets := []time.Duration{0, 100 * time.Millisecond, 150 * time.Millisecond, 999_999 * time.Microsecond, time.Second, 10 * time.Second}
	for _, d := range offsets {
		// In UTC, as the schema says: the driver writes a time in its
		// own zone, and text in two zones does not compare as instants.
		at := base.Add(d).UTC()
		if _, err := db.ExecContext(ctx, "INSERT INTO "+migrations.Table+" (name, owner, created_at, expires_at) VALUES (?, 'o', ?, ?)",
			d.String(), base, at); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range offsets {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+migrations.Table+" WHERE expires_at > ?", base.Add(d)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want := len(offsets) - 1 - i; n != want {
			t.Errorf("rows expiring after base+%v: %d, want %d", d, n, want)
		}
	}
}
