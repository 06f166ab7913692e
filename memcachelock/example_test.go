package memcachelock_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"log/slog"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/memcachelock"
)

var errNameTaken = errors.New("name taken")

// Reserve a display name: check that it is free, then insert it, with the
// gap between the two closed by a memcached lock shared by every app
// server. The example needs a memcached and a Postgres, so it is compiled
// but not run.
func Example() {
	db, err := sql.Open("pgx", "postgres://localhost/app")
	if err != nil {
		log.Fatal(err)
	}
	mc := memcache.New("127.0.0.1:11211") // or several: memcache.New(a, b, c)
	locker := memcachelock.New(mc,
		memcachelock.WithTTL(10*time.Second),
		memcachelock.WithPrefix("myapp-lock"),
		memcachelock.WithFailOpen(slog.Default()), // the UNIQUE index below keeps it right
	)

	name := "alice"
	err = txlock.Run(context.Background(), db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
		var taken bool
		if err := tx.QueryRowContext(ctx,
			`SELECT EXISTS (SELECT 1 FROM names WHERE name = $1 AND expires_at > now())`, name).Scan(&taken); err != nil {
			return err
		}
		if taken {
			return errNameTaken
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO names (name, expires_at) VALUES ($1, now() + interval '1 hour')`, name)
		return err
	}, txlock.WithLocker(locker), txlock.WithLockWait(2*time.Second))
	switch {
	case errors.Is(err, errNameTaken):
		log.Printf("%s is taken", name)
	case errors.Is(err, txlock.ErrLockBusy):
		log.Printf("too busy, try again")
	case err != nil:
		log.Fatal(err)
	}
}

// Find a misconfigured locker, or an unreachable memcached, when the
// program starts rather than at its first request.
func ExampleLocker_Check() {
	mc := memcache.New("127.0.0.1:11211")
	opts := []txlock.Option{
		txlock.WithLocker(memcachelock.New(mc, memcachelock.WithTTL(10*time.Second))),
		txlock.WithLockWait(5 * time.Second),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := txlock.Check(ctx, opts...); err != nil {
		log.Fatal(err) // ErrInvalid: a bad option; ErrLockUnavailable: memcached does not answer
	}
	// ... txlock.Run(ctx, db, keys, body, opts...)
}
