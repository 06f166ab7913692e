package migrations_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"sync"
	"testing"

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
