package sqladapter

import (
	"context"
	"database/sql/driver"
	"errors"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/txlock/txlock/internal/neterr"
)

// Class is what an error means for the transaction that returned it.
type Class int

const (
	// Permanent: do not run the transaction again; return the error.
	Permanent Class = iota
	// Retryable: the transaction did not commit; run all of it again.
	Retryable
	// Ambiguous: COMMIT was sent and its outcome is unknown; do not retry.
	Ambiguous
)

// String returns the class name in lower case.
func (c Class) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Retryable:
		return "retryable"
	case Ambiguous:
		return "ambiguous"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Phase says where in the transaction an error happened. The same connection
// error means "nothing was committed" before COMMIT and "unknown" during it.
type Phase int

const (
	// InTx covers BEGIN and every statement before COMMIT.
	InTx Phase = iota
	// AtCommit is the COMMIT itself.
	AtCommit
)

// Postgres SQLSTATE codes this package acts on.
const (
	CodeSerializationFailure       = "40001"
	CodeDeadlockDetected           = "40P01"
	CodeUniqueViolation            = "23505"
	CodeStatementCompletionUnknown = "40003"
	CodeTransactionResolutionUnk   = "08007"
	CodeLockNotAvailable           = "55P03"
	CodeAdminShutdown              = "57P01"
	CodeCrashShutdown              = "57P02"
	CodeCannotConnectNow           = "57P03"
)

// SQLite result codes (primary and extended) this package acts on.
const (
	sqliteBusy             = 5
	sqliteLocked           = 6
	sqliteConstraintUnique = 2067 // SQLITE_CONSTRAINT_UNIQUE
	sqliteConstraintPK     = 1555 // SQLITE_CONSTRAINT_PRIMARYKEY
)

// Classifier decides which errors make a transaction run again. The zero
// value is the default policy described in the package documentation.
type Classifier struct {
	// UniqueConstraints, when not empty, narrows the retry on a unique
	// violation (23505) to violations of these constraints (Postgres) and
	// makes every other unique violation permanent. Names are compared
	// exactly. It has no effect on SQLite, whose errors do not carry the
	// constraint name in a structured form.
	UniqueConstraints []string

	// NoUniqueRetry makes every unique violation permanent.
	NoUniqueRetry bool
}

// Classify sorts err with the default policy. It is the zero Classifier's
// Classify.
func Classify(err error, phase Phase) Class {
	return Classifier{}.Classify(err, phase)
}

// Classify sorts err into a Class. A nil error is Permanent: there is
// nothing to retry. Wrapped errors are unwrapped with errors.As.
func (c Classifier) Classify(err error, phase Phase) Class {
	if err == nil {
		return Permanent
	}
	if code, ok := SQLState(err); ok {
		switch {
		case code == CodeSerializationFailure, code == CodeDeadlockDetected:
			return Retryable
		case code == CodeUniqueViolation:
			if c.uniqueRetryable(err) {
				return Retryable
			}
			return Permanent
		case code == CodeStatementCompletionUnknown, code == CodeTransactionResolutionUnk:
			return Ambiguous
		case strings.HasPrefix(code, "08"),
			code == CodeAdminShutdown, code == CodeCrashShutdown, code == CodeCannotConnectNow:
			// The session is gone. Before COMMIT the server rolled the
			// transaction back with it; during COMMIT nobody can say.
			return connLost(phase)
		}
		return Permanent
	}
	if code, ok := sqliteCode(err); ok {
		switch {
		case code&0xff == sqliteBusy, code&0xff == sqliteLocked:
			// A busy COMMIT in SQLite did not commit either: the
			// transaction stays open; txlock rolls it back on the
			// connection it held for it, before the next attempt.
			return Retryable
		case code == sqliteConstraintUnique, code == sqliteConstraintPK:
			if c.NoUniqueRetry || len(c.UniqueConstraints) > 0 {
				return Permanent
			}
			return Retryable
		}
		return Permanent
	}
	// Before COMMIT a lost connection is a retry whatever was sent: the
	// server rolls the transaction back with the session. At COMMIT,
	// pgx's SafeToRetry cannot be trusted: a connection that breaks while
	// COMMIT's answer is being read comes back as a SafeToRetry "conn
	// closed" (pgconn notes the read error, closes the connection, and
	// reports the next read on it as a lock error), though COMMIT was sent
	// and may have been applied. So at COMMIT it is a connection error
	// like any other: ambiguous.
	if IsConnError(err) {
		return connLost(phase)
	}
	return Permanent
}

func connLost(phase Phase) Class {
	if phase == AtCommit {
		return Ambiguous
	}
	return Retryable
}

func (c Classifier) uniqueRetryable(err error) bool {
	if c.NoUniqueRetry {
		return false
	}
	if len(c.UniqueConstraints) == 0 {
		return true
	}
	name, ok := ConstraintName(err)
	return ok && slices.Contains(c.UniqueConstraints, name)
}

// SQLState returns the Postgres SQLSTATE of the first error in err's chain
// that has a SQLState() string method, as pgx's *pgconn.PgError and lib/pq's
// *pq.Error do.
func SQLState(err error) (string, bool) {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		if code := e.SQLState(); code != "" {
			return code, true
		}
	}
	return "", false
}

// ConstraintName returns the name of the constraint a Postgres error is
// about: pgx's PgError.ConstraintName, or lib/pq's Error.Get('n').
func ConstraintName(err error) (string, bool) {
	var named interface {
		SQLState() string
		Error() string
	}
	if !errors.As(err, &named) {
		return "", false
	}
	// lib/pq exposes every field of the error message by its protocol
	// letter; 'n' is the constraint name.
	if pq, ok := named.(interface{ Get(byte) string }); ok {
		if n := pq.Get('n'); n != "" {
			return n, true
		}
	}
	return constraintField(named)
}

func sqliteCode(err error) (int, bool) {
	var e interface{ Code() int }
	if errors.As(err, &e) {
		return e.Code(), true
	}
	return 0, false
}

func safeToRetry(err error) bool {
	var e interface{ SafeToRetry() bool }
	return errors.As(err, &e) && e.SafeToRetry()
}

// IsConnError reports whether err means the database connection, not the
// statement, failed: driver.ErrBadConn, pgconn's errors marked safe to
// retry (a closed connection among them), a connection broken, reset or
// refused, or another network error. It never counts the context's own
// errors (a deadline the body set, a cancellation: those are the caller's
// to judge) nor an HTTP client's (*url.Error: a body's call to another
// service, not the database).
func IsConnError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return false
	}
	return errors.Is(err, driver.ErrBadConn) || safeToRetry(err) || neterr.Unreachable(err)
}

// Reason names what makes a retryable error retryable, in snake case:
// "serialization_failure" (40001), "deadlock" (40P01), "unique_violation"
// (23505 and SQLite's unique constraint), "connection_lost" (class 08,
// 57P01–57P03, a broken connection), "database_busy" (SQLite's BUSY and
// LOCKED). It returns "" for any other error.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	if code, ok := SQLState(err); ok {
		switch {
		case code == CodeSerializationFailure:
			return "serialization_failure"
		case code == CodeDeadlockDetected:
			return "deadlock"
		case code == CodeUniqueViolation:
			return "unique_violation"
		case strings.HasPrefix(code, "08"), code == CodeAdminShutdown, code == CodeCrashShutdown, code == CodeCannotConnectNow:
			return "connection_lost"
		}
		return ""
	}
	if code, ok := sqliteCode(err); ok {
		switch {
		case code&0xff == sqliteBusy, code&0xff == sqliteLocked:
			return "database_busy"
		case code == sqliteConstraintUnique, code == sqliteConstraintPK:
			return "unique_violation"
		}
		return ""
	}
	if IsConnError(err) {
		return "connection_lost"
	}
	return ""
}

// constraintField reads a string field named ConstraintName from the
// struct behind e, which is how pgx's *pgconn.PgError carries it. Reflection
// keeps pgx out of the import graph of users who run another driver.
func constraintField(e any) (string, bool) {
	v := reflect.ValueOf(e)
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return "", false
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return "", false
	}
	f := v.FieldByName("ConstraintName")
	if !f.IsValid() || f.Kind() != reflect.String || f.String() == "" {
		return "", false
	}
	return f.String(), true
}
