// Package migrations holds the schema of the name-reservation example as
// plain SQL files, one folder per dialect, annotated for goose
// (-- +goose Up / -- +goose Down), so they can be applied with the goose CLI:
//
//	goose -dir migrations/postgres postgres "$DATABASE_URL" up
//
// or from Go with Up, which applies the embedded copies.
//
// The table, Table, has no UNIQUE constraint on name: a name is reusable
// once its reservation expires, so the application keeps "one active
// reservation per name" (txlock.Run around the check-then-insert); the
// index on (name, expires_at) makes the check cheap. Postgres stores times
// as timestamptz. SQLite stores them as TEXT in modernc.org/sqlite's
// _time_format=sqlite layout; bind them in UTC and compare with bound
// times, and the text compares as the instants do (see the SQL file).
package migrations

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Table is the name-reservation table the migrations create.
const Table = "name_reservations"

// Dialects Up accepts.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

//go:embed postgres/*.sql sqlite/*.sql
var files embed.FS

// FS returns the migration files of dialect, for tools that want to apply
// them their own way.
func FS(dialect string) (fs.FS, error) {
	switch dialect {
	case Postgres, SQLite:
		return fs.Sub(files, dialect)
	}
	return nil, fmt.Errorf("migrations: unknown dialect %q (want %q or %q)", dialect, Postgres, SQLite)
}

// Up applies every migration of dialect ("postgres" or "sqlite") that db has
// not seen yet, recording them in goose's version table, so calling it again
// is a no-op. On Postgres it holds a session advisory lock, one per schema,
// while it works, so several processes starting at once apply each
// migration once.
func Up(ctx context.Context, db *sql.DB, dialect string) error {
	if db == nil {
		return errors.New("migrations: nil *sql.DB")
	}
	fsys, err := FS(dialect)
	if err != nil {
		return err
	}
	var opts []goose.ProviderOption
	gooseDialect := goose.DialectSQLite3
	if dialect == Postgres {
		gooseDialect = goose.DialectPostgres
		// goose's default lock id is one for the whole server, so
		// migrations of unrelated schemas (parallel tests, two apps)
		// would queue behind each other, polling every 5 s. The id is
		// derived from the schema instead, and polled every second.
		var schema string
		if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
			return fmt.Errorf("migrations: %w", err)
		}
		sum := sha256.Sum256([]byte("txlock/migrations\x00" + schema))
		locker, err := lock.NewPostgresSessionLocker(
			lock.WithLockID(int64(binary.BigEndian.Uint64(sum[:8])>>1)),
			lock.WithLockTimeout(1, 300))
		if err != nil {
			return fmt.Errorf("migrations: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(gooseDialect, db, fsys, opts...)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrations: %s up: %w", dialect, err)
	}
	return nil
}
