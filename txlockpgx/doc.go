// Package txlockpgx is txlock.Run for pgx, without database/sql: it runs a
// pgx transaction while named locks are held, releases them when the
// transaction ends, and runs the whole transaction again when PostgreSQL
// reports a conflict.
//
// It is not a copy of txlock: Run is built on txlock.RunTx, with an adapter
// from pgx to txlock.Database, so the attempts, the lockers (LocalLocker,
// memcachelock, advisorylock), the options, the observers and the decision
// of what is retried are txlock's own, and its documentation holds here
// ("What is retried", "Keys and release", "Inside the body"), with
// pgx.ErrTxClosed where it says sql.ErrTxDone (Run's errors match both).
// Only the transaction is pgx's: the body receives a plain pgx.Tx, so
// existing pgx repository code, sqlc's pgx/v5 output among it, runs
// unchanged, and the errors Run returns wrap pgx's (errors.As finds a
// *pgconn.PgError). A run of either package in the other's body is
// txlock.ErrNestedRun, and with the same Locker (the in-process default
// among them) runs of both packages on the same keys exclude each other.
//
// A complete program, reserving a name that may be active only once at a
// time (no UNIQUE constraint can say that), with memcached to queue writers
// outside the database and advisory locks as the guarantee inside it:
//
//	package main
//
//	import (
//		"context"
//		"errors"
//		"log"
//
//		"github.com/bradfitz/gomemcache/memcache"
//		"github.com/jackc/pgx/v5"
//		"github.com/jackc/pgx/v5/pgxpool"
//
//		"github.com/txlock/txlock"
//		"github.com/txlock/txlock/advisorylock"
//		"github.com/txlock/txlock/memcachelock"
//		"github.com/txlock/txlock/txlockpgx"
//	)
//
//	var errTaken = errors.New("name taken")
//
//	func main() {
//		ctx := context.Background()
//		pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/app")
//		if err != nil {
//			log.Fatal(err)
//		}
//		defer pool.Close()
//		lockers := txlock.WithLocker(memcachelock.New(memcache.New("127.0.0.1:11211")), advisorylock.New())
//
//		name := "ann"
//		err = txlockpgx.Run(ctx, pool, []string{"name:" + name}, func(ctx context.Context, tx pgx.Tx) error {
//			var taken bool
//			err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM name_reservations
//				WHERE name = $1 AND expires_at > now())`, name).Scan(&taken)
//			if err != nil {
//				return err
//			}
//			if taken {
//				return errTaken
//			}
//			_, err = tx.Exec(ctx, `INSERT INTO name_reservations (name, owner, expires_at)
//				VALUES ($1, $2, now() + interval '1 hour')`, name, "me")
//			return err
//		}, lockers)
//		switch {
//		case errors.Is(err, errTaken):
//			log.Printf("%s is taken", name)
//		case err != nil:
//			log.Fatal(err)
//		default:
//			log.Printf("%s is yours", name)
//		}
//	}
//
// # Databases
//
// Run takes a Beginner: a *pgxpool.Pool, a *pgx.Conn or a *pgxpool.Conn.
//
// With a *pgxpool.Pool each attempt begins its transaction on a connection
// of the pool; an attempt whose Locker works on the connection before BEGIN
// (advisorylock at REPEATABLE READ and SERIALIZABLE, whose session locks
// must come before the snapshot) acquires one for the whole attempt and
// releases it after the locks are given back. When a lock on it cannot be
// confirmed released, the connection is taken from the pool (Hijack) and
// closed instead, which ends its server session and every lock it holds.
// Every attempt that fails for a lost connection runs again on another.
//
// A *pgx.Conn or a *pgxpool.Conn is the one connection every attempt runs
// on. It is the caller's and stays open, except when a session lock on it
// cannot be confirmed released: then Run closes it (a *pgxpool.Conn is
// then destroyed by the pool when the caller releases it). A connection
// lost under an attempt is lost for the next ones too.
//
// # Unknown COMMIT outcomes
//
// When the connection breaks while COMMIT is in flight, Run can look the
// transaction up by id on another connection (txlock.CommitCheck). Only a
// pool has another connection. The first time a lookup may be needed, Run
// asks the server whether it can (PostgreSQL 10 and later can), on a
// connection of the pool, before the attempt holds one; it remembers the
// answer while the pool lives, but not a question that went unanswered (a
// timeout, a failed connection). On a single connection an unknown outcome
// is txlock.ErrAmbiguousCommit.
//
// # Transaction options
//
// txlock.WithTxOptions takes database/sql's options, which map to
// pgx.TxOptions as pgx's own database/sql driver maps them (see Run).
// COMMIT gets the run's context (pgx takes one for it). Unlike database/sql,
// pgx does not roll a transaction back when a context ends; Run does, for
// every attempt that did not commit, on every path.
package txlockpgx
