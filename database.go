package txlock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// Database is what Run needs of a database, whatever its driver: a way to
// begin a transaction, and a way to hold one connection for a whole attempt.
// Run wraps a *sql.DB, a *sql.Conn or any other Beginner in one;
// txlockpgx wraps a *pgxpool.Pool or a *pgx.Conn. Implement it only to run
// transactions of another kind through RunTx.
type Database interface {
	// BeginTx starts a transaction on any connection.
	BeginTx(ctx context.Context, opts *sql.TxOptions) (Tx, error)

	// Conn holds one connection for an attempt whose lockers work on the
	// connection before BEGIN (stage OnConn). A Database that cannot hold
	// one returns (nil, nil): Run then takes those lockers inside the
	// transaction instead.
	Conn(ctx context.Context) (Conn, error)

	// A Database may also have a System() string method naming its
	// system as OpenTelemetry does ("postgresql"), for RunInfo.System.

	// Postgres reports whether the database is PostgreSQL 10 or later,
	// whose transactions Run can look up by id, on another connection,
	// when the outcome of a COMMIT is unknown (see CommitCheck). A
	// Database of a single connection should say no: the connection that
	// broke is the only one. Run calls it before each attempt begins its
	// transaction, while the attempt holds no connection, and only when a
	// lookup may be needed; it may cache its answer.
	Postgres(ctx context.Context) bool
}

// systemOf names db's system for observers: a Database may say it with a
// System() string method; otherwise "".
func systemOf(db Database) string {
	if s, ok := db.(interface{ System() string }); ok {
		return s.System()
	}
	return ""
}

// Conn is one database connection that Run holds for an attempt.
type Conn interface {
	Querier
	// BeginTx starts a transaction on this connection.
	BeginTx(ctx context.Context, opts *sql.TxOptions) (Tx, error)
	// Close gives the connection back. With discard it closes it instead
	// of returning it to a pool, which ends its database session and
	// every lock the session still holds.
	Close(discard bool) error
}

// Tx is a database transaction as Run drives it.
type Tx interface {
	Querier
	// Commit commits the transaction. An error wrapping sql.ErrTxDone
	// means the transaction had already ended (the body committed or
	// rolled it back itself).
	Commit(ctx context.Context) error
	// Rollback rolls the transaction back.
	Rollback(ctx context.Context) error
}

// sqlDatabase adapts a database/sql Beginner.
type sqlDatabase struct{ b Beginner }

func (d sqlDatabase) BeginTx(ctx context.Context, opts *sql.TxOptions) (Tx, error) {
	if db, ok := d.b.(*sql.DB); ok && systemOfDriver(db.Driver()) == "sqlite" {
		// SQLite keeps a transaction open after a COMMIT that failed
		// (SQLITE_BUSY), while database/sql puts the connection back in
		// the pool as if it had ended: the next user of that connection
		// would write inside it, and lose it all when it is closed. So
		// the transaction runs on a connection held for it, rolled back
		// after a failed COMMIT.
		c, err := db.Conn(ctx)
		if err != nil {
			return nil, err
		}
		tx, err := beginSQL(ctx, c, opts, c)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		tx.own = true
		return tx, nil
	}
	return beginSQL(ctx, d.b, opts, nil)
}

// beginSQL begins a transaction on b. conn, when not nil, is the
// connection it runs on, to roll back on after a failed COMMIT (SQLite).
func beginSQL(ctx context.Context, b Beginner, opts *sql.TxOptions, conn *sql.Conn) (*sqlTx, error) {
	tx, err := b.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	if tx == nil {
		return nil, invalid("%T.BeginTx returned a nil *sql.Tx and no error", b)
	}
	return &sqlTx{tx: tx, conn: conn}, nil
}

func (d sqlDatabase) Conn(ctx context.Context) (Conn, error) {
	switch b := d.b.(type) {
	case *sql.DB:
		c, err := b.Conn(ctx)
		if err != nil {
			return nil, err
		}
		return &sqlConn{c: c, owned: true}, nil
	case *sql.Conn:
		return &sqlConn{c: b}, nil
	}
	return nil, nil
}

func (d sqlDatabase) Postgres(ctx context.Context) bool { return isPostgres(ctx, d.b) }

// System names the database from its driver's package, for observers.
func (d sqlDatabase) System() string {
	var drv any
	switch b := d.b.(type) {
	case *sql.DB:
		drv = b.Driver()
	case *sql.Conn:
		_ = b.Raw(func(dc any) error { drv = dc; return nil })
	}
	return systemOfDriver(drv)
}

// sqlConn adapts a *sql.Conn: one Run reserved from a *sql.DB (owned), or
// the caller's own.
type sqlConn struct {
	c     *sql.Conn
	owned bool
}

func (c *sqlConn) QueryRow(ctx context.Context, query string, args ...any) Row {
	return c.c.QueryRowContext(ctx, query, args...)
}

func (c *sqlConn) BeginTx(ctx context.Context, opts *sql.TxOptions) (Tx, error) {
	var conn *sql.Conn
	var drv any
	_ = c.c.Raw(func(dc any) error { drv = dc; return nil })
	if systemOfDriver(drv) == "sqlite" {
		conn = c.c // see sqlDatabase.BeginTx
	}
	return beginSQL(ctx, c.c, opts, conn)
}

// Close returns a reserved connection to the pool. To discard one it makes
// database/sql close it: a Raw callback that returns driver.ErrBadConn
// does that. The caller's own *sql.Conn is not closed, only discarded when
// asked to, which leaves it unusable: better than a session that may still
// hold a lock.
func (c *sqlConn) Close(discard bool) error {
	var err error
	if discard {
		_ = c.c.Raw(func(any) error { return driver.ErrBadConn })
		err = errors.New("txlock: connection closed: a lock on it could not be confirmed released")
	}
	if c.owned {
		if cerr := c.c.Close(); cerr != nil && !discard {
			err = cerr
		}
	}
	return err
}

// sqlTx adapts a *sql.Tx.
type sqlTx struct {
	tx   *sql.Tx
	conn *sql.Conn // SQLite: the connection to roll back on after a failed COMMIT
	own  bool      // conn was taken for this transaction: close it when it ends
}

func (t *sqlTx) QueryRow(ctx context.Context, query string, args ...any) Row {
	return t.tx.QueryRowContext(ctx, query, args...)
}

// Commit commits; database/sql's Commit takes the context of BeginTx. When
// that context has ended, database/sql does not send COMMIT: it returns the
// context's error as it is (drivers wrap theirs), which is reported as
// sql.ErrTxDone, so that it is not taken for a COMMIT cut off in flight.
func (t *sqlTx) Commit(context.Context) error {
	err := t.tx.Commit()
	if err != nil && t.conn != nil && !errors.Is(err, sql.ErrTxDone) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = t.conn.ExecContext(ctx, "ROLLBACK") // nothing to roll back is fine too
		cancel()
	}
	t.done()
	if err == context.Canceled || err == context.DeadlineExceeded { // the bare value is database/sql's own
		return fmt.Errorf("%w (database/sql did not send COMMIT: %w)", sql.ErrTxDone, err)
	}
	return err
}

func (t *sqlTx) Rollback(context.Context) error {
	err := t.tx.Rollback()
	t.done()
	return err
}

// done gives back a connection taken for the transaction.
func (t *sqlTx) done() {
	if t.own {
		_ = t.conn.Close()
		t.own = false
	}
}

var errNotSQLTx = fmt.Errorf("%w: the transaction is not a database/sql one", ErrInvalid)
