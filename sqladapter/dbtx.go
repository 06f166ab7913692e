package sqladapter

import (
	"context"
	"database/sql"
)

// Beginner starts a transaction. *sql.DB and *sql.Conn satisfy it.
type Beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// DBTX is the part of database/sql that repository code needs to run a
// statement. *sql.DB, *sql.Conn and *sql.Tx satisfy it, so a function written
// against DBTX runs the same inside and outside a transaction.
type DBTX interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

var (
	_ Beginner = (*sql.DB)(nil)
	_ Beginner = (*sql.Conn)(nil)
	_ DBTX     = (*sql.DB)(nil)
	_ DBTX     = (*sql.Conn)(nil)
	_ DBTX     = (*sql.Tx)(nil)
)
