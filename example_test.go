package txlock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite, so the examples run anywhere

	"github.com/txlock/txlock"
)

// openExampleDB opens an in-memory SQLite database with a reservations
// table. One connection: every connection to ":memory:" is its own database.
func openExampleDB() *sql.DB {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE reservations (name TEXT NOT NULL, owner TEXT NOT NULL, expires_at INTEGER NOT NULL)`); err != nil {
		log.Fatal(err)
	}
	return db
}

var ErrNameTaken = errors.New("name taken")

// nameActive and insertName are ordinary repository functions: they take a
// *sql.Tx and know nothing about locks.
func nameActive(ctx context.Context, tx *sql.Tx, name string, now time.Time) (bool, error) {
	var n int
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM reservations WHERE name = ? AND expires_at > ?`, name, now.UnixMilli()).Scan(&n)
	return n > 0, err
}

func insertName(ctx context.Context, tx *sql.Tx, name, owner string, expires time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO reservations (name, owner, expires_at) VALUES (?, ?, ?)`, name, owner, expires.UnixMilli())
	return err
}

// The flagship use: check that a name is free, then reserve it, with the
// gap between the two closed by a lock on the name.
func ExampleRun() {
	db := openExampleDB()
	defer db.Close()
	ctx := context.Background()

	reserve := func(name, owner string) error {
		return txlock.Run(ctx, db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
			now := time.Now()
			taken, err := nameActive(ctx, tx, name, now)
			if err != nil {
				return err
			}
			if taken {
				return ErrNameTaken
			}
			return insertName(ctx, tx, name, owner, now.Add(time.Hour))
		})
	}

	fmt.Println(reserve("ann", "first"))
	fmt.Println(reserve("ann", "second"))
	// Output:
	// <nil>
	// name taken
}

// Lock takes more locks from inside the body, when the keys are known only
// there. They are released with the transaction.
func ExampleLock() {
	db := openExampleDB()
	defer db.Close()
	err := txlock.Run(context.Background(), db, []string{"user:42"}, func(ctx context.Context, tx *sql.Tx) error {
		var team string = "blue" // read from the database in real code
		if err := txlock.Lock(ctx, "team:"+team); err != nil {
			return err
		}
		return txlock.Lock(ctx, "user:42") // already held: a no-op
	})
	fmt.Println(err)
	// Output: <nil>
}

// AfterCommit keeps side effects out of a body that may run more than once.
func ExampleAfterCommit() {
	db := openExampleDB()
	defer db.Close()
	err := txlock.Run(context.Background(), db, []string{"name:bob"}, func(ctx context.Context, tx *sql.Tx) error {
		if err := insertName(ctx, tx, "bob", "me", time.Now().Add(time.Hour)); err != nil {
			return err
		}
		return txlock.AfterCommit(ctx, func() { fmt.Println("welcome mail sent") })
	})
	fmt.Println(err)
	// Output:
	// welcome mail sent
	// <nil>
}

// WithLockWait(0) asks "did I get it?": a busy lock is an
// error at once instead of a wait.
func ExampleWithLockWait() {
	db := openExampleDB()
	defer db.Close()
	ctx := context.Background()
	_ = txlock.Run(ctx, db, []string{"report"}, func(ctx context.Context, tx *sql.Tx) error {
		// A second Run on the same key while the first holds it. (Its
		// context must not come from this body: that is ErrNestedRun.)
		err := txlock.Run(context.Background(), db, []string{"report"}, func(context.Context, *sql.Tx) error { return nil },
			txlock.WithLockWait(0))
		fmt.Println(errors.Is(err, txlock.ErrLockBusy))
		return nil
	})
	// Output: true
}

// Attempt tells the body which attempt it is in, for logs and metrics.
func ExampleAttempt() {
	db := openExampleDB()
	defer db.Close()
	_ = txlock.Run(context.Background(), db, nil, func(ctx context.Context, tx *sql.Tx) error {
		fmt.Println("attempt", txlock.Attempt(ctx))
		return nil
	})
	fmt.Println("outside:", txlock.Attempt(context.Background()))
	// Output:
	// attempt 1
	// outside: 0
}
