package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	_ "modernc.org/sqlite"           // the "sqlite" database/sql driver, pure Go

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/memcachelock"
	"github.com/txlock/txlock/migrations"
)

// Pool sizes. Postgres gets a bounded pool so that a burst of requests (the
// race demo fires hundreds at once, and advisory-lock waiters each hold a
// connection) queues in database/sql instead of exhausting the server's
// max_connections. SQLite gets one connection: SQLite allows one writer at
// a time anyway, and a single connection means no writer ever meets
// SQLITE_BUSY.
const (
	postgresMaxConns = 16
	sqliteMaxConns   = 1
)

// sqliteParams are appended to an SQLite file name: wait up to 5 s for a
// lock held by another process instead of failing, use write-ahead logging
// so readers in other processes do not block the writer, begin every
// transaction as a writer (BEGIN IMMEDIATE), and write times as UTC text in
// the layout migrations/sqlite prescribes (sqliteTimeLayout).
const sqliteParams = "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate" +
	"&_time_format=sqlite&_timezone=UTC"

// Dialect names the SQL database behind a Database, as migrations.Up spells
// it.
type Dialect string

// The dialects the example runs on.
const (
	Postgres Dialect = migrations.Postgres
	SQLite   Dialect = migrations.SQLite
)

// Database is an open database with the example's schema.
type Database struct {
	DB      *sql.DB
	Dialect Dialect
	// Desc says where the data lives, for the log.
	Desc string

	cleanup func() error
}

// Close closes the pool and removes what OpenDatabase created for this run
// only: the temporary SQLite file, or the fresh Postgres schema.
func (d *Database) Close() error {
	err := d.DB.Close()
	if d.cleanup != nil {
		err = errors.Join(err, d.cleanup())
	}
	return err
}

// isPostgresURL reports whether dsn names a Postgres server.
func isPostgresURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// OpenDatabase opens the database dsn names, runs the migrations and
// returns it.
//
//   - "" is a new embedded SQLite database in a temporary directory,
//     deleted by Close;
//   - "sqlite:PATH" is an SQLite database at PATH, kept;
//   - "postgres://..." or "postgresql://..." is Postgres, through pgx.
//
// With fresh set, a Postgres database gets a new schema of its own
// (namecheck_<random>), which Close drops: the race demo's rows never mix
// with earlier runs or with a running service. fresh does not apply to an
// SQLite path.
func OpenDatabase(ctx context.Context, dsn string, fresh bool) (*Database, error) {
	var (
		d   *Database
		err error
	)
	switch {
	case dsn == "":
		d, err = openTempSQLite()
	case strings.HasPrefix(dsn, "sqlite:"):
		if fresh {
			return nil, errors.New("a fresh database is either embedded SQLite (no -db) or Postgres, not an SQLite path")
		}
		path := strings.TrimPrefix(dsn, "sqlite:")
		d = openSQLite(path)
		d.Desc = "SQLite at " + path
	case isPostgresURL(dsn):
		d, err = openPostgres(ctx, dsn, fresh)
	default:
		return nil, fmt.Errorf("database %q: want postgres://..., sqlite:PATH, or nothing for embedded SQLite", dsn)
	}
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, d.DB, d.Dialect); err != nil {
		return nil, errors.Join(fmt.Errorf("migrate %s: %w", d.Desc, err), d.Close())
	}
	return d, nil
}

// migrate applies the schema.
func migrate(ctx context.Context, db *sql.DB, dialect Dialect) error {
	return migrations.Up(ctx, db, string(dialect))
}

func openSQLite(path string) *Database {
	// sql.Open only checks its arguments; the file is opened on first use.
	db, _ := sql.Open("sqlite", path+sqliteParams)
	db.SetMaxOpenConns(sqliteMaxConns)
	return &Database{DB: db, Dialect: SQLite}
}

func openTempSQLite() (*Database, error) {
	dir, err := os.MkdirTemp("", "namecheck-")
	if err != nil {
		return nil, fmt.Errorf("embedded SQLite: %w", err)
	}
	path := filepath.Join(dir, "namecheck.db")
	d := openSQLite(path)
	d.Desc = "embedded SQLite at " + path + " (temporary)"
	d.cleanup = func() error { return os.RemoveAll(dir) }
	return d, nil
}

func openPostgres(ctx context.Context, dsn string, fresh bool) (*Database, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres URL: %w", err)
	}
	d := &Database{Dialect: Postgres, Desc: fmt.Sprintf("Postgres %s:%d/%s", cfg.Host, cfg.Port, cfg.Database)}
	if fresh {
		schema, drop, err := createSchema(ctx, cfg)
		if err != nil {
			return nil, err
		}
		cfg.RuntimeParams["search_path"] = schema
		d.Desc += ", schema " + schema + " (dropped afterwards)"
		d.cleanup = drop
	}
	d.DB = stdlib.OpenDB(*cfg)
	d.DB.SetMaxOpenConns(postgresMaxConns)
	d.DB.SetMaxIdleConns(postgresMaxConns)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.DB.PingContext(pctx); err != nil {
		return nil, errors.Join(fmt.Errorf("connect to %s: %w", d.Desc, err), d.Close())
	}
	return d, nil
}

// createSchema creates a schema with a random name and returns it with a
// function that drops it.
func createSchema(ctx context.Context, cfg *pgx.ConnConfig) (string, func() error, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "namecheck_" + hex.EncodeToString(b[:])
	exec := func(ctx context.Context, stmt string) error {
		admin := stdlib.OpenDB(*cfg)
		defer admin.Close()
		_, err := admin.ExecContext(ctx, stmt)
		return err
	}
	if err := exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return "", nil, fmt.Errorf("create schema %s: %w", schema, err)
	}
	drop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			return fmt.Errorf("drop schema %s: %w", schema, err)
		}
		return nil
	}
	return schema, drop, nil
}

// The locker names -locker accepts.
const (
	lockerLocal     = "local"
	lockerMemcached = "memcached"
	lockerAdvisory  = "advisory"
)

// Lockers are the lockers a service runs with, and what they need closed.
type Lockers struct {
	List []txlock.Locker
	// Name is the -locker value they came from, for the log and the
	// race table.
	Name string

	mc *memcache.Client
}

// Close closes the memcached client, if any.
func (l *Lockers) Close() error {
	if l.mc == nil {
		return nil
	}
	return l.mc.Close()
}

// NewLockers builds the lockers named by spec, a comma-separated list taken
// in order ("memcached,advisory" queues writers in memcached, then takes
// an advisory lock as the guarantee). An empty spec means memcached when
// servers are given and local otherwise. advisory needs Postgres; memcached
// needs servers, and they must answer.
func NewLockers(spec string, dialect Dialect, servers []string) (*Lockers, error) {
	if spec == "" {
		spec = lockerLocal
		if len(servers) > 0 {
			spec = lockerMemcached
		}
	}
	ls := &Lockers{Name: spec}
	fail := func(err error) (*Lockers, error) { return nil, errors.Join(err, ls.Close()) }
	for _, name := range strings.Split(spec, ",") {
		switch strings.TrimSpace(name) {
		case lockerLocal:
			ls.List = append(ls.List, txlock.NewLocalLocker())
		case lockerAdvisory:
			if dialect != Postgres {
				return fail(errors.New("-locker advisory needs Postgres (-db postgres://...)"))
			}
			ls.List = append(ls.List, advisorylock.New())
		case lockerMemcached:
			if len(servers) == 0 {
				return fail(errors.New("-locker memcached needs servers (-memcached host:port,...)"))
			}
			if ls.mc == nil {
				ls.mc = memcache.New(servers...)
				if err := ls.mc.Ping(); err != nil {
					return fail(fmt.Errorf("memcached %v: %w", servers, err))
				}
			}
			ls.List = append(ls.List, memcachelock.New(ls.mc, memcachelock.WithPrefix("namecheck:")))
		default:
			return fail(fmt.Errorf("-locker %q: want %s, %s or %s, or a comma-separated list of them",
				spec, lockerMemcached, lockerAdvisory, lockerLocal))
		}
	}
	return ls, nil
}

// splitList splits a comma-separated list and drops empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
