// Package sqlc shows that a repository layer written the way sqlc generates
// it runs unchanged inside a txlock transaction, in both of sqlc's driver
// flavours:
//
//   - dbsql, sqlc's database/sql flavour, inside txlock.Run: New takes the
//     *sql.Tx the body gets (dbsql.New(tx));
//   - dbpgx, sqlc's pgx/v5 flavour, inside txlockpgx.Run: New takes the
//     pgx.Tx the body gets (dbpgx.New(tx)).
//
// Both packages come from one query.sql over the migrations package's
// name_reservations table, as sqlc.yaml configures them (their files are
// written by hand as sqlc generates them). ReserveSQL and ReservePgx are
// the same check-then-insert in each: a name may have one active
// reservation at a time, and is reusable once it expires, which no UNIQUE
// constraint can say, so the lock on "name:"+name closes the gap between
// the check and the insert. Both use that key, so the two flavours exclude
// each other when their Runs share a Locker (the in-process default, or
// advisorylock).
package sqlc

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/examples/sqlc/dbpgx"
	"github.com/txlock/txlock/examples/sqlc/dbsql"
	"github.com/txlock/txlock/txlockpgx"
)

// ErrTaken is returned when the name already has an active reservation.
var ErrTaken = errors.New("sqlc example: name taken")

// Key is the lock that guards the reservations of name.
func Key(name string) string { return "name:" + name }

// ReserveSQL reserves name for owner until expires, through database/sql:
// dbsql's queries, unchanged, on the *sql.Tx of txlock.Run. It returns
// ErrTaken when the name has an active reservation.
func ReserveSQL(ctx context.Context, db txlock.Beginner, name, owner string, expires time.Time, opts ...txlock.Option) (dbsql.NameReservation, error) {
	var r dbsql.NameReservation
	err := txlock.Run(ctx, db, []string{Key(name)}, func(ctx context.Context, tx *sql.Tx) error {
		q := dbsql.New(tx)
		active, err := q.NameActive(ctx, name)
		if err != nil {
			return err
		}
		if active {
			return ErrTaken
		}
		r, err = q.InsertReservation(ctx, dbsql.InsertReservationParams{Name: name, Owner: owner, ExpiresAt: expires})
		return err
	}, opts...)
	if err != nil {
		return dbsql.NameReservation{}, err
	}
	return r, nil
}

// ReservePgx is ReserveSQL through pgx: dbpgx's queries, unchanged, on the
// pgx.Tx of txlockpgx.Run.
func ReservePgx(ctx context.Context, db txlockpgx.Beginner, name, owner string, expires time.Time, opts ...txlock.Option) (dbpgx.NameReservation, error) {
	var r dbpgx.NameReservation
	err := txlockpgx.Run(ctx, db, []string{Key(name)}, func(ctx context.Context, tx pgx.Tx) error {
		q := dbpgx.New(tx)
		active, err := q.NameActive(ctx, name)
		if err != nil {
			return err
		}
		if active {
			return ErrTaken
		}
		r, err = q.InsertReservation(ctx, dbpgx.InsertReservationParams{
			Name: name, Owner: owner, ExpiresAt: pgtype.Timestamptz{Time: expires, Valid: true}})
		return err
	}, opts...)
	if err != nil {
		return dbpgx.NameReservation{}, err
	}
	return r, nil
}
