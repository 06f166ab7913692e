package advisorylock_test

import (
	"context"
	"database/sql"
	"log"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/memcachelock"
)

// Advisory locks alone: the database holds them, so the check-then-insert is
// correct at any isolation level. Each waiter holds a connection.
func Example() {
	var db *sql.DB // sql.Open("pgx", ...)
	reserve := func(ctx context.Context, name string) error {
		return txlock.Run(ctx, db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
			// SELECT ... WHERE name = $1 AND expires_at > now(); INSERT ...
			return nil
		}, txlock.WithLocker(advisorylock.New()), txlock.WithLockWait(5*time.Second))
	}
	_ = reserve
}

// memcached first, outside the database, so that waiters queue without a
// connection; then the advisory lock, the guarantee that survives memcached
// losing the key.
func Example_combined() {
	var db *sql.DB // sql.Open("pgx", ...)
	mc := memcache.New("127.0.0.1:11211")
	lockers := txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
	err := txlock.Run(context.Background(), db, []string{"name:ann"}, func(ctx context.Context, tx *sql.Tx) error {
		return nil
	}, lockers)
	if err != nil {
		log.Print(err)
	}
}
