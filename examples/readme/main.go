// Command readme is the complete example of the README: it reserves a
// display name that may be active only once at a time. README.md shows
// this file as it is, and a test keeps the two the same and runs it.
package main

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"os"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/memcachelock"
	"github.com/txlock/txlock/migrations"
)

var ErrNameTaken = errors.New("name taken")

func main() {
	ctx := context.Background()
	db, err := sql.Open("pgx", env("TXLOCK_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// The name_reservations table (migrations/postgres holds the SQL).
	if err := migrations.Up(ctx, db, migrations.Postgres); err != nil {
		log.Fatal(err)
	}
	mc := memcache.New(env("TXLOCK_MEMCACHED", "127.0.0.1:11211"))

	// memcached queues writers outside the database (waiters hold no
	// connection); the advisory lock is the guarantee inside it.
	lockers := txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
	if err := txlock.Check(ctx, lockers); err != nil {
		log.Fatal(err) // a bad option, or memcached not answering: found at startup
	}

	name := "ann"
	err = txlock.Run(ctx, db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
		var active bool
		err := tx.QueryRowContext(ctx,
			`SELECT EXISTS (SELECT 1 FROM name_reservations WHERE name = $1 AND expires_at > now())`,
			name).Scan(&active)
		if err != nil {
			return err
		}
		if active {
			return ErrNameTaken
		}
		_, err = tx.ExecContext(ctx,
			`INSERT INTO name_reservations (name, owner, expires_at) VALUES ($1, $2, $3)`,
			name, "me", time.Now().Add(time.Hour))
		if err != nil {
			return err
		}
		return txlock.AfterCommit(ctx, func() { log.Printf("reserved %q", name) })
	}, lockers, txlock.WithLockWait(5*time.Second))
	switch {
	case errors.Is(err, ErrNameTaken):
		log.Printf("%q is taken", name)
	case errors.Is(err, txlock.ErrAmbiguousCommit):
		log.Printf("commit outcome unknown: read back before retrying: %v", err)
	case err != nil:
		log.Fatal(err)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
