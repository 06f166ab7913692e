package sqladapter_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock/sqladapter"
)

// pqError mimics lib/pq's *pq.Error: SQLState() and Get(field byte).
type pqError struct{ code, constraint string }

func (e *pqError) Error() string    { return "pq: " + e.code }
func (e *pqError) SQLState() string { return e.code }
func (e *pqError) Get(k byte) string {
	if k == 'n' {
		return e.constraint
	}
	return ""
}

// sqliteError mimics modernc.org/sqlite's *sqlite.Error.
type sqliteError struct{ code int }

func (e *sqliteError) Error() string { return fmt.Sprintf("sqlite: code %d", e.code) }
func (e *sqliteError) Code() int     { return e.code }

type safeErr struct{}

func (safeErr) Error() string     { return "dial failed before sending" }
func (safeErr) SafeToRetry() bool { return true }

func TestClassify(t *testing.T) {
	netErr := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, tc := range []struct {
		name  string
		err   error
		phase sqladapter.Phase
		want  sqladapter.Class
	}{
		{"nil", nil, sqladapter.InTx, sqladapter.Permanent},
		{"plain", errors.New("boom"), sqladapter.InTx, sqladapter.Permanent},
		{"pgx 40001", &pgconn.PgError{Code: "40001"}, sqladapter.InTx, sqladapter.Retryable},
		{"pgx 40001 at commit", &pgconn.PgError{Code: "40001"}, sqladapter.AtCommit, sqladapter.Retryable},
		{"pgx 40P01", &pgconn.PgError{Code: "40P01"}, sqladapter.InTx, sqladapter.Retryable},
		{"pgx 23505", &pgconn.PgError{Code: "23505"}, sqladapter.InTx, sqladapter.Retryable},
		{"pgx 23505 wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", &pgconn.PgError{Code: "23505"})), sqladapter.InTx, sqladapter.Retryable},
		{"pgx 40003 at commit", &pgconn.PgError{Code: "40003"}, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"pgx 08007 at commit", &pgconn.PgError{Code: "08007"}, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"pgx 08006 in tx", &pgconn.PgError{Code: "08006"}, sqladapter.InTx, sqladapter.Retryable},
		{"pgx 08006 at commit", &pgconn.PgError{Code: "08006"}, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"terminated backend in tx", &pgconn.PgError{Code: "57P01"}, sqladapter.InTx, sqladapter.Retryable},
		{"terminated backend at commit", &pgconn.PgError{Code: "57P01"}, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"lock timeout", &pgconn.PgError{Code: "55P03"}, sqladapter.InTx, sqladapter.Permanent},
		{"statement timeout", &pgconn.PgError{Code: "57014"}, sqladapter.InTx, sqladapter.Permanent},
		{"check violation", &pgconn.PgError{Code: "23514"}, sqladapter.AtCommit, sqladapter.Permanent},
		{"lib/pq 40001", &pqError{code: "40001"}, sqladapter.InTx, sqladapter.Retryable},
		{"lib/pq 23505", &pqError{code: "23505"}, sqladapter.InTx, sqladapter.Retryable},
		{"lib/pq 08007", &pqError{code: "08007"}, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"sqlite busy", &sqliteError{5}, sqladapter.InTx, sqladapter.Retryable},
		{"sqlite busy snapshot", &sqliteError{517}, sqladapter.InTx, sqladapter.Retryable},
		{"sqlite locked", &sqliteError{6}, sqladapter.AtCommit, sqladapter.Retryable},
		{"sqlite unique", &sqliteError{2067}, sqladapter.InTx, sqladapter.Retryable},
		{"sqlite primary key", &sqliteError{1555}, sqladapter.InTx, sqladapter.Retryable},
		{"sqlite not null", &sqliteError{1299}, sqladapter.InTx, sqladapter.Permanent},
		{"bad conn in tx", driver.ErrBadConn, sqladapter.InTx, sqladapter.Retryable},
		{"bad conn at commit", driver.ErrBadConn, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"safe to retry in tx", safeErr{}, sqladapter.InTx, sqladapter.Retryable},
		{"safe to retry at commit", safeErr{}, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"EOF in tx", io.ErrUnexpectedEOF, sqladapter.InTx, sqladapter.Retryable},
		{"EOF at commit", fmt.Errorf("commit: %w", io.ErrUnexpectedEOF), sqladapter.AtCommit, sqladapter.Ambiguous},
		{"net error at commit", netErr, sqladapter.AtCommit, sqladapter.Ambiguous},
		{"context canceled", context.Canceled, sqladapter.InTx, sqladapter.Permanent},
		{"the body's own deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), sqladapter.InTx, sqladapter.Permanent},
		{"an HTTP call of the body's", &url.Error{Op: "Post", URL: "http://payments", Err: netErr}, sqladapter.InTx, sqladapter.Permanent},
		{"another service's message", errors.New("payment service: unexpected EOF"), sqladapter.InTx, sqladapter.Permanent},
		{"connection refused in tx", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, sqladapter.InTx, sqladapter.Retryable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sqladapter.Classify(tc.err, tc.phase); got != tc.want {
				t.Errorf("Classify(%v, %v) = %v, want %v", tc.err, tc.phase, got, tc.want)
			}
		})
	}
}

func TestClassifierNarrowsUniqueRetry(t *testing.T) {
	c := sqladapter.Classifier{UniqueConstraints: []string{"names_active"}}
	for _, tc := range []struct {
		err  error
		want sqladapter.Class
	}{
		{&pgconn.PgError{Code: "23505", ConstraintName: "names_active"}, sqladapter.Retryable},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "23505", ConstraintName: "names_active"}), sqladapter.Retryable},
		{&pgconn.PgError{Code: "23505", ConstraintName: "users_email_key"}, sqladapter.Permanent},
		{&pgconn.PgError{Code: "23505"}, sqladapter.Permanent},
		{&pqError{code: "23505", constraint: "names_active"}, sqladapter.Retryable},
		{&pqError{code: "23505", constraint: "other"}, sqladapter.Permanent},
		{&sqliteError{2067}, sqladapter.Permanent},
		{&pgconn.PgError{Code: "40001"}, sqladapter.Retryable},
	} {
		if got := c.Classify(tc.err, sqladapter.InTx); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	none := sqladapter.Classifier{NoUniqueRetry: true}
	if got := none.Classify(&pgconn.PgError{Code: "23505"}, sqladapter.InTx); got != sqladapter.Permanent {
		t.Errorf("NoUniqueRetry: %v", got)
	}
}

func TestSQLStateAndConstraintName(t *testing.T) {
	err := fmt.Errorf("x: %w", &pgconn.PgError{Code: "23505", ConstraintName: "c"})
	if code, ok := sqladapter.SQLState(err); !ok || code != "23505" {
		t.Errorf("SQLState = %q, %v", code, ok)
	}
	if name, ok := sqladapter.ConstraintName(err); !ok || name != "c" {
		t.Errorf("ConstraintName = %q, %v", name, ok)
	}
	if _, ok := sqladapter.SQLState(errors.New("plain")); ok {
		t.Error("SQLState of a plain error")
	}
	if _, ok := sqladapter.ConstraintName(errors.New("plain")); ok {
		t.Error("ConstraintName of a plain error")
	}
	for c, want := range map[sqladapter.Class]string{sqladapter.Permanent: "permanent", sqladapter.Retryable: "retryable", sqladapter.Ambiguous: "ambiguous", 9: "Class(9)"} {
		if c.String() != want {
			t.Errorf("%d.String() = %q", int(c), c.String())
		}
	}
}
