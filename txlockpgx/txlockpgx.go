package txlockpgx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
)

// Beginner starts a pgx transaction. *pgxpool.Pool, *pgx.Conn and
// *pgxpool.Conn satisfy it.
//
// Run holds a connection for a whole attempt when a Locker takes its locks
// on the connection before BEGIN (advisorylock at REPEATABLE READ and
// SERIALIZABLE): a *pgxpool.Pool lends one (Acquire), a *pgx.Conn or a
// *pgxpool.Conn is that connection. Any other Beginner cannot hold one, and
// Run takes those locks inside the transaction instead (see
// txlock.Database).
type Beginner interface {
	BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error)
}

var (
	_ Beginner = (*pgxpool.Pool)(nil)
	_ Beginner = (*pgx.Conn)(nil)
	_ Beginner = (*pgxpool.Conn)(nil)
)

// Run runs fn inside a pgx transaction while the named locks are held, and
// runs all of it again when the database reports a conflict. It is
// txlock.Run for pgx: the same attempts, lockers, options and retry
// decisions (it is built on txlock.RunTx), and everything txlock.Run
// documents holds for it. fn receives a plain pgx.Tx, so existing pgx
// repository code runs unchanged; txlock.Lock, txlock.Attempt and
// txlock.AfterCommit work with its context.
//
// The transaction options of txlock.WithTxOptions map to pgx.TxOptions as
// pgx's database/sql driver maps them: sql.LevelSnapshot is REPEATABLE
// READ, which in PostgreSQL is snapshot isolation, and ReadOnly is READ
// ONLY. sql.LevelWriteCommitted and sql.LevelLinearizable, which
// PostgreSQL does not have, make Run return an error wrapping
// txlock.ErrInvalid.
//
// A nil ctx, a nil or typed-nil db, or a nil fn is an error wrapping
// txlock.ErrInvalid, returned before anything touches the database.
func Run(ctx context.Context, db Beginner, keys []string, fn func(ctx context.Context, tx pgx.Tx) error, opts ...txlock.Option) error {
	// txlock.RunTx checks the context, the database and the body in that
	// order, and reports each as txlock.Run does; a nil one stays nil here.
	var d txlock.Database
	if !isNil(db) {
		d = database{db}
	}
	var body func(context.Context, txlock.Tx) error
	if fn != nil {
		body = func(ctx context.Context, tx txlock.Tx) error {
			t, ok := tx.(pgxTx)
			if !ok {
				return errNotPgxTx
			}
			return fn(ctx, t.tx)
		}
	}
	return txlock.RunTx(ctx, d, keys, body, opts...)
}

var errNotPgxTx = fmt.Errorf("%w: txlockpgx: the transaction is not a pgx one", txlock.ErrInvalid)

// isNil reports whether v is nil or an interface holding a nil pointer
// (a typed nil), which would panic on first use.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

// database adapts a Beginner to txlock.Database.
type database struct{ b Beginner }

func (d database) BeginTx(ctx context.Context, opts *sql.TxOptions) (txlock.Tx, error) {
	return begin(ctx, d.b, opts)
}

// Conn holds the connection of an attempt: one acquired from a pool, or
// the caller's own connection. Other Beginners cannot hold one.
func (d database) Conn(ctx context.Context) (txlock.Conn, error) {
	switch b := d.b.(type) {
	case *pgxpool.Pool:
		c, err := b.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		return &pooledConn{c: c}, nil
	case *pgx.Conn:
		return ownConn{b}, nil
	case *pgxpool.Conn:
		return acquiredConn{b}, nil
	}
	return nil, nil
}

// Postgres reports whether the database can look up the transaction of an
// unknown COMMIT (see txlock.CommitCheck). Only a pool can: after an
// unknown COMMIT on a single connection, that connection is the one that
// broke, leaving none to ask on.
func (d database) Postgres(ctx context.Context) bool {
	if p, ok := d.b.(*pgxpool.Pool); ok {
		return poolIsPostgres(ctx, p)
	}
	return false
}

// System names the database for observers (txlock.RunInfo.System), as
// OpenTelemetry does: pgx only talks to PostgreSQL.
func (database) System() string { return "postgresql" }

// begin starts a transaction on b with opts mapped to pgx's options.
func begin(ctx context.Context, b Beginner, opts *sql.TxOptions) (txlock.Tx, error) {
	o, err := txOptions(opts)
	if err != nil {
		return nil, err
	}
	if closed(b) {
		// One connection, already lost: running the attempt again on it
		// cannot succeed, so this is not the retryable "connection lost".
		return nil, errConnGone
	}
	tx, err := b.BeginTx(ctx, o)
	if err != nil {
		return nil, err
	}
	if isNil(tx) {
		return nil, fmt.Errorf("%w: txlockpgx: %T.BeginTx returned a nil pgx.Tx and no error", txlock.ErrInvalid, b)
	}
	return pgxTx{tx}, nil
}

var errConnGone = errors.New("txlockpgx: the connection is closed, and a single connection is not replaced: open a new one")

// closed reports whether b is a single connection that has been closed.
func closed(b Beginner) bool {
	switch b := b.(type) {
	case *pgx.Conn:
		return b.IsClosed()
	case *pgxpool.Conn:
		return b.Conn().IsClosed()
	}
	return false
}

// txOptions maps database/sql's transaction options to pgx's, as pgx's
// database/sql driver (pgx/v5/stdlib) does.
func txOptions(opts *sql.TxOptions) (pgx.TxOptions, error) {
	var o pgx.TxOptions
	if opts == nil {
		return o, nil
	}
	switch opts.Isolation {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		o.IsoLevel = pgx.ReadUncommitted
	case sql.LevelReadCommitted:
		o.IsoLevel = pgx.ReadCommitted
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		o.IsoLevel = pgx.RepeatableRead
	case sql.LevelSerializable:
		o.IsoLevel = pgx.Serializable
	default:
		return o, fmt.Errorf("%w: txlockpgx: isolation level %v is not one PostgreSQL has", txlock.ErrInvalid, opts.Isolation)
	}
	if opts.ReadOnly {
		o.AccessMode = pgx.ReadOnly
	}
	return o, nil
}

// closeTimeout bounds closing a connection that is discarded.
const closeTimeout = 5 * time.Second

// errDiscarded is what Close reports when it closed a connection instead of
// keeping it, as the database/sql adapter does.
var errDiscarded = errors.New("txlockpgx: connection closed: a lock on it could not be confirmed released")

// closeConn closes c, ending its server session and every session lock.
func closeConn(c *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		return fmt.Errorf("%w (closing it: %w)", errDiscarded, err)
	}
	return errDiscarded
}

// pooledConn is a connection Run acquired from a *pgxpool.Pool.
type pooledConn struct{ c *pgxpool.Conn }

func (c *pooledConn) QueryRow(ctx context.Context, query string, args ...any) txlock.Row {
	return c.c.QueryRow(ctx, query, args...)
}

func (c *pooledConn) BeginTx(ctx context.Context, opts *sql.TxOptions) (txlock.Tx, error) {
	return begin(ctx, c.c, opts)
}

// Close gives the connection back to the pool or, to discard it, takes it
// from the pool and closes it, which ends its server session.
func (c *pooledConn) Close(discard bool) error {
	if discard {
		return closeConn(c.c.Hijack())
	}
	c.c.Release()
	return nil
}

// ownConn is the caller's *pgx.Conn.
type ownConn struct{ c *pgx.Conn }

func (c ownConn) QueryRow(ctx context.Context, query string, args ...any) txlock.Row {
	return c.c.QueryRow(ctx, query, args...)
}

func (c ownConn) BeginTx(ctx context.Context, opts *sql.TxOptions) (txlock.Tx, error) {
	return begin(ctx, c.c, opts)
}

// Close keeps the connection, which is the caller's, except to discard it:
// then it closes it, because its session may still hold a lock.
func (c ownConn) Close(discard bool) error {
	if discard {
		return closeConn(c.c)
	}
	return nil
}

// acquiredConn is a *pgxpool.Conn the caller acquired and will release.
type acquiredConn struct{ c *pgxpool.Conn }

func (c acquiredConn) QueryRow(ctx context.Context, query string, args ...any) txlock.Row {
	return c.c.QueryRow(ctx, query, args...)
}

func (c acquiredConn) BeginTx(ctx context.Context, opts *sql.TxOptions) (txlock.Tx, error) {
	return begin(ctx, c.c, opts)
}

// Close keeps the connection, except to discard it: then it closes the
// underlying *pgx.Conn, and the pool destroys it when the caller releases
// it.
func (c acquiredConn) Close(discard bool) error {
	if discard {
		return closeConn(c.c.Conn())
	}
	return nil
}

// pgxTx adapts a pgx.Tx to txlock.Tx.
type pgxTx struct{ tx pgx.Tx }

func (t pgxTx) QueryRow(ctx context.Context, query string, args ...any) txlock.Row {
	return row{t.tx.QueryRow(ctx, query, args...)}
}

// Commit commits with ctx, which pgx uses for the COMMIT statement.
// Commit commits. When ctx has already ended, pgx does not send COMMIT
// (its error is safe to retry and wraps the context's): that is reported
// as sql.ErrTxDone, so that it is not taken for a COMMIT cut off in flight.
func (t pgxTx) Commit(ctx context.Context) error {
	err := t.tx.Commit(ctx)
	if err != nil && ctx.Err() != nil && pgconn.SafeToRetry(err) && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w (pgx did not send COMMIT: %w)", sql.ErrTxDone, err)
	}
	return txDone(err)
}

func (t pgxTx) Rollback(ctx context.Context) error { return txDone(t.tx.Rollback(ctx)) }

// row reports a statement on an ended transaction as database/sql does.
type row struct{ r pgx.Row }

func (r row) Scan(dest ...any) error { return txDone(r.r.Scan(dest...)) }

// txDone makes pgx's "tx is closed" also sql.ErrTxDone, which is what
// txlock and its lockers look for: the transaction had already ended (the
// body committed or rolled it back itself).
func txDone(err error) error {
	if err != nil && errors.Is(err, pgx.ErrTxClosed) {
		return txClosedError{err}
	}
	return err
}

// txClosedError is pgx.ErrTxClosed that also matches sql.ErrTxDone.
type txClosedError struct{ err error }

func (e txClosedError) Error() string        { return e.err.Error() }
func (e txClosedError) Unwrap() error        { return e.err }
func (e txClosedError) Is(target error) bool { return target == sql.ErrTxDone }
