package txlocktest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	_ "modernc.org/sqlite"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlocktest"
)

func openDB() *sql.DB {
	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE names (name TEXT NOT NULL)`); err != nil {
		log.Fatal(err)
	}
	return db
}

func count(db *sql.DB) int {
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM names`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	return n
}

// reserve is the code under test: a check-then-insert whose mail goes out
// only once the reservation is stored.
func reserve(ctx context.Context, db *sql.DB, name string, sent *int, opts ...txlock.Option) error {
	return txlock.Run(ctx, db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
		var taken bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM names WHERE name = ?)`, name).Scan(&taken); err != nil {
			return err
		}
		if taken {
			return errors.New("taken")
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO names VALUES (?)`, name); err != nil {
			return err
		}
		return txlock.AfterCommit(ctx, func() { *sent++ })
	}, opts...)
}

// Prove that a body is safe to run again: with its first COMMIT turned into
// a serialization failure, the reservation is stored once and the mail is
// sent once.
func ExampleConflictOn() {
	db := openDB()
	defer db.Close()
	sent := 0
	err := reserve(context.Background(), db, "ann", &sent, txlocktest.ConflictOn(1))
	fmt.Println(err, count(db), sent)
	// Output: <nil> 1 1
}

// See what the code under test does when its lease is lost on the first
// attempt: the body's context is cancelled and Run tries again.
func ExampleLoseLeaseOn() {
	db := openDB()
	defer db.Close()
	sent := 0
	attempts := 0
	err := reserve(context.Background(), db, "ann", &sent, txlocktest.LoseLeaseOn(1),
		txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
			attempts++
			if e.Err != nil {
				fmt.Println("attempt", e.Attempt, "retried:", e.Reason)
			}
		}}))
	fmt.Println(err, attempts, count(db), sent)
	// Output:
	// attempt 1 retried: lock_lost
	// <nil> 2 1 1
}

// See what the code under test does when the outcome of COMMIT is unknown:
// here the reservation was stored, but Run cannot know it (SQLite cannot be
// asked) and says so. The mail is not sent: only a COMMIT known to have
// succeeded runs the after-commit callbacks.
func ExampleUnknownCommitOn() {
	db := openDB()
	defer db.Close()
	sent := 0
	err := reserve(context.Background(), db, "ann", &sent, txlocktest.UnknownCommitOn(true, 1))
	fmt.Println(errors.Is(err, txlock.ErrAmbiguousCommit), count(db), sent)
	// Output: true 1 0
}

// A Locker for unit tests: it needs no server, records the keys the code
// under test locks, and can make a lock service outage happen on demand.
func ExampleLocker() {
	db := openDB()
	defer db.Close()
	l := txlocktest.NewLocker()
	sent := 0
	err := reserve(context.Background(), db, "ann", &sent, txlock.WithLocker(l))
	fmt.Println(err, l.Taken(), l.Held())

	l.SetUnavailable(errors.New("memcached restarting"))
	err = reserve(context.Background(), db, "bob", &sent, txlock.WithLocker(l), txlock.WithLockWait(0))
	fmt.Println(errors.Is(err, txlock.ErrLockUnavailable))
	// Output:
	// <nil> [name:ann] []
	// true
}
