package txlockpgx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/txlockpgx"
)

var errNameTaken = errors.New("name taken")

// nameActive and insertName are ordinary pgx repository functions: they
// take a pgx.Tx and know nothing about locks.
func nameActive(ctx context.Context, tx pgx.Tx, name string) (bool, error) {
	var active bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM name_reservations
		WHERE name = $1 AND expires_at > now())`, name).Scan(&active)
	return active, err
}

func insertName(ctx context.Context, tx pgx.Tx, name, owner string) error {
	_, err := tx.Exec(ctx, `INSERT INTO name_reservations (name, owner, expires_at)
		VALUES ($1, $2, now() + interval '1 hour')`, name, owner)
	return err
}

// The flagship use with pgx: check that a name is free, then reserve it,
// with the gap between the two closed by an advisory lock on the name,
// which PostgreSQL holds and ends with the transaction. It needs a server
// (DATABASE_URL) with the name_reservations table of the migrations
// package, so it is compiled but not run by go test.
func ExampleRun() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	reserve := func(name, owner string) error {
		return txlockpgx.Run(ctx, pool, []string{"name:" + name}, func(ctx context.Context, tx pgx.Tx) error {
			taken, err := nameActive(ctx, tx, name)
			if err != nil {
				return err
			}
			if taken {
				return errNameTaken
			}
			return insertName(ctx, tx, name, owner)
		}, txlock.WithLocker(advisorylock.New()))
	}

	fmt.Println(reserve("ann", "first"))
	fmt.Println(reserve("ann", "second"))
}

// Run checks what it is given before it touches the database. Here the
// pool has never connected (pgxpool connects when first used), and
// nothing is ever sent to it: a missing body and an isolation level that
// PostgreSQL does not have are both errors wrapping txlock.ErrInvalid.
func ExampleRun_invalid() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://nobody@127.0.0.1:1/none")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	err = txlockpgx.Run(ctx, pool, []string{"k"}, nil)
	fmt.Println(errors.Is(err, txlock.ErrInvalid))

	err = txlockpgx.Run(ctx, pool, []string{"k"}, func(ctx context.Context, tx pgx.Tx) error { return nil },
		txlock.WithTxOptions(&sql.TxOptions{Isolation: sql.LevelLinearizable}))
	fmt.Println(errors.Is(err, txlock.ErrInvalid))
	fmt.Println(pool.Stat().TotalConns())
	// Output:
	// true
	// true
	// 0
}
