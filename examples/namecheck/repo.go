package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/sqladapter"
)

// Reservation is one row of the name_reservations table: name is held by
// owner from CreatedAt until ExpiresAt. A name may have many rows over time
// but at most one active one (ExpiresAt in the future); nothing in the schema
// enforces that, which is the whole point of the example.
type Reservation struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Owner     string    `json:"owner"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ErrNotFound means a name has no active reservation.
var ErrNotFound = errors.New("no active reservation")

// The repository functions below are written as an application would
// write them: plain functions over a sqladapter.DBTX, with no knowledge of
// locks. Pass a *sql.Tx (inside txlock.Run), a *sql.DB or a *sql.Conn. The
// statements use $1 placeholders and bind times as time.Time, which both
// Postgres and modernc.org/sqlite accept, so one set of statements serves
// both databases.

const (
	table = migrations.Table

	qNameActive = `SELECT EXISTS (SELECT 1 FROM ` + table + ` WHERE name = $1 AND expires_at > $2)`

	qInsertName = `INSERT INTO ` + table + ` (name, owner, created_at, expires_at) VALUES ($1, $2, $3, $4) RETURNING id`

	qActiveReservation = `SELECT id, name, owner, created_at, expires_at FROM ` + table + `
		WHERE name = $1 AND expires_at > $2 ORDER BY expires_at DESC, id DESC LIMIT 1`

	qCountDuplicates = `SELECT count(*) FROM (SELECT name FROM ` + table + `
		WHERE expires_at > $1 GROUP BY name HAVING count(*) > 1) AS d`
)

// NameActive reports whether name has a reservation that is still active at
// now.
func NameActive(ctx context.Context, q sqladapter.DBTX, name string, now time.Time) (bool, error) {
	var active bool
	if err := q.QueryRowContext(ctx, qNameActive, name, now).Scan(&active); err != nil {
		return false, fmt.Errorf("check name %q: %w", name, err)
	}
	return active, nil
}

// InsertName stores res (its ID is ignored) and returns the new row's ID.
func InsertName(ctx context.Context, q sqladapter.DBTX, res Reservation) (int64, error) {
	var id int64
	err := q.QueryRowContext(ctx, qInsertName, res.Name, res.Owner,
		res.CreatedAt, res.ExpiresAt).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert name %q: %w", res.Name, err)
	}
	return id, nil
}

// ActiveReservation returns the reservation of name that is active at now,
// or an error wrapping ErrNotFound.
func ActiveReservation(ctx context.Context, q sqladapter.DBTX, name string, now time.Time) (Reservation, error) {
	var res Reservation
	err := q.QueryRowContext(ctx, qActiveReservation, name, now).Scan(
		&res.ID, &res.Name, &res.Owner, timeScanner{&res.CreatedAt}, timeScanner{&res.ExpiresAt})
	if errors.Is(err, sql.ErrNoRows) {
		return Reservation{}, fmt.Errorf("name %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Reservation{}, fmt.Errorf("read name %q: %w", name, err)
	}
	return res, nil
}

// CountDuplicates returns how many names have more than one reservation
// active at now: the bug the example exists to prevent. It is always 0 when
// every writer goes through txlock.Run.
func CountDuplicates(ctx context.Context, q sqladapter.DBTX, now time.Time) (int, error) {
	var n int
	if err := q.QueryRowContext(ctx, qCountDuplicates, now).Scan(&n); err != nil {
		return 0, fmt.Errorf("count duplicates: %w", err)
	}
	return n, nil
}

// sqliteTimeLayout is how times are stored in SQLite, as
// migrations/sqlite says: the text modernc.org/sqlite writes for a
// time.Time with _time_format=sqlite, in UTC (_timezone=UTC; see
// sqliteParams), so that comparing the text compares the instants.
const sqliteTimeLayout = "2006-01-02 15:04:05.999999999-07:00"

// timeScanner scans a time column in any of the forms the dialects return.
type timeScanner struct{ t *time.Time }

// Scan implements sql.Scanner.
func (s timeScanner) Scan(src any) error {
	switch v := src.(type) {
	case time.Time:
		*s.t = v.UTC()
		return nil
	case string:
		return s.parse(v)
	case []byte:
		return s.parse(string(v))
	}
	return fmt.Errorf("scan time: unexpected %T", src)
}

func (s timeScanner) parse(v string) error {
	t, err := time.Parse(sqliteTimeLayout, v)
	if err != nil {
		return fmt.Errorf("scan time: %w", err)
	}
	*s.t = t.UTC()
	return nil
}
