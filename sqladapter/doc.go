// Package sqladapter tells what a database driver's error means for a
// transaction that may be run again, and defines the small interfaces that
// let repository code run unchanged on a *sql.DB, a *sql.Conn or a *sql.Tx.
//
// # Classes
//
// [Classify] sorts an error into one of three classes:
//
//   - [Retryable]: the transaction did not commit and running all of it again,
//     from a new BEGIN, may succeed. Postgres serialization failures (40001),
//     deadlocks (40P01) and unique violations (23505); SQLite's SQLITE_BUSY,
//     SQLITE_LOCKED and unique-constraint failures; and, before COMMIT, a
//     connection that broke or that the driver marks safe to retry
//     (driver.ErrBadConn, pgconn's SafeToRetry, class 08, a terminated backend).
//   - [Ambiguous]: COMMIT was sent but its outcome is unknown: 40003, 08007,
//     or a connection or I/O error while COMMIT was in flight, pgconn's
//     SafeToRetry errors included (pgx reports a connection that broke while
//     it read COMMIT's answer as a SafeToRetry "conn closed"). Running the
//     transaction again could apply it twice, so it must not be retried
//     blindly: txlock looks the transaction up first.
//   - [Permanent]: everything else, including every error the application
//     itself returns.
//
// Drivers are recognised by behaviour, not by import: any error in the chain
// (errors.As) with a SQLState() string method (pgx's *pgconn.PgError, lib/pq's
// *pq.Error) is read as Postgres, any with a Code() int method (modernc.org/sqlite's
// *sqlite.Error) as SQLite. So this package links no driver into your binary.
//
// Unique violations are retryable because the usual source of one in a
// check-then-insert is a concurrent writer: on the next attempt the body sees
// the row and decides for itself. [Classifier.UniqueConstraints] narrows that
// to the constraints you name, so an unrelated violation fails at once.
package sqladapter
