package txlockpgx_test

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlockpgx"
)

// fakeBeginner returns tx and err from BeginTx, and counts its calls and
// the options it was given. It needs no server.
type fakeBeginner struct {
	calls atomic.Int32
	opts  pgx.TxOptions
	tx    pgx.Tx
	err   error
}

func (f *fakeBeginner) BeginTx(_ context.Context, o pgx.TxOptions) (pgx.Tx, error) {
	f.calls.Add(1)
	f.opts = o
	return f.tx, f.err
}

// TestBadInput: bad arguments are errors wrapping ErrInvalid, returned
// before anything reaches the database, never a panic.
func TestBadInput(t *testing.T) {
	var nilPool *pgxpool.Pool
	var nilConn *pgx.Conn
	var nilPoolConn *pgxpool.Conn
	fb := &fakeBeginner{err: errors.New("should not be called")}
	fn := func(context.Context, pgx.Tx) error { return nil }
	for _, tc := range []struct {
		name string
		ctx  context.Context
		db   txlockpgx.Beginner
		fn   func(context.Context, pgx.Tx) error
		keys []string
		opts []txlock.Option
	}{
		{name: "nil context", db: fb, fn: fn},
		{name: "nil db", ctx: context.Background(), fn: fn},
		{name: "typed nil *pgxpool.Pool", ctx: context.Background(), db: nilPool, fn: fn},
		{name: "typed nil *pgx.Conn", ctx: context.Background(), db: nilConn, fn: fn},
		{name: "typed nil *pgxpool.Conn", ctx: context.Background(), db: nilPoolConn, fn: fn},
		{name: "nil fn", ctx: context.Background(), db: fb},
		{name: "everything nil"},
		{name: "empty key", ctx: context.Background(), db: fb, fn: fn, keys: []string{""}},
		{name: "bad option", ctx: context.Background(), db: fb, fn: fn, opts: []txlock.Option{txlock.WithMaxAttempts(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := txlockpgx.Run(tc.ctx, tc.db, tc.keys, tc.fn, tc.opts...)
			if !errors.Is(err, txlock.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if n := fb.calls.Load(); n != 0 {
		t.Errorf("bad input reached the database %d times", n)
	}
}

// TestNilTxWithoutError: a Beginner that returns neither a transaction nor
// an error is an error wrapping ErrInvalid, not a nil dereference, and is
// not retried.
func TestNilTxWithoutError(t *testing.T) {
	var typedNil *pgxpool.Tx
	for _, tx := range []pgx.Tx{nil, typedNil} {
		fb := &fakeBeginner{tx: tx}
		err := txlockpgx.Run(context.Background(), fb, []string{"k"}, func(context.Context, pgx.Tx) error {
			t.Error("the body ran without a transaction")
			return nil
		})
		if !errors.Is(err, txlock.ErrInvalid) {
			t.Fatalf("tx %#v: err = %v, want ErrInvalid", tx, err)
		}
		if n := fb.calls.Load(); n != 1 {
			t.Errorf("BeginTx called %d times, want 1", n)
		}
	}
}

// TestTxOptions: database/sql's options map to pgx's as pgx's database/sql
// driver maps them; a level PostgreSQL does not have is ErrInvalid, before
// BeginTx.
func TestTxOptions(t *testing.T) {
	errBegin := errors.New("begin reached")
	for _, tc := range []struct {
		opts    *sql.TxOptions
		want    pgx.TxOptions
		invalid bool
	}{
		{nil, pgx.TxOptions{}, false},
		{&sql.TxOptions{}, pgx.TxOptions{}, false},
		{&sql.TxOptions{Isolation: sql.LevelReadUncommitted}, pgx.TxOptions{IsoLevel: pgx.ReadUncommitted}, false},
		{&sql.TxOptions{Isolation: sql.LevelReadCommitted}, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, false},
		{&sql.TxOptions{Isolation: sql.LevelRepeatableRead}, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, false},
		{&sql.TxOptions{Isolation: sql.LevelSnapshot}, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, false},
		{&sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true}, pgx.TxOptions{IsoLevel: pgx.Serializable, AccessMode: pgx.ReadOnly}, false},
		{&sql.TxOptions{ReadOnly: true}, pgx.TxOptions{AccessMode: pgx.ReadOnly}, false},
		{&sql.TxOptions{Isolation: sql.LevelWriteCommitted}, pgx.TxOptions{}, true},
		{&sql.TxOptions{Isolation: sql.LevelLinearizable}, pgx.TxOptions{}, true},
		{&sql.TxOptions{Isolation: sql.IsolationLevel(42)}, pgx.TxOptions{}, true},
	} {
		fb := &fakeBeginner{err: errBegin}
		err := txlockpgx.Run(context.Background(), fb, nil, func(context.Context, pgx.Tx) error { return nil },
			txlock.WithTxOptions(tc.opts), txlock.WithMaxAttempts(1))
		switch {
		case tc.invalid:
			if !errors.Is(err, txlock.ErrInvalid) || fb.calls.Load() != 0 {
				t.Errorf("%+v: err = %v after %d BeginTx calls, want ErrInvalid before any", tc.opts, err, fb.calls.Load())
			}
		case !errors.Is(err, errBegin):
			t.Errorf("%+v: err = %v, want BeginTx's error", tc.opts, err)
		case fb.opts != tc.want:
			t.Errorf("%+v: pgx options %+v, want %+v", tc.opts, fb.opts, tc.want)
		}
	}
}

// TestCancelledContext: a context already done returns its error without
// touching the database.
func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	fb := &fakeBeginner{}
	err := txlockpgx.Run(ctx, fb, []string{"k"}, func(context.Context, pgx.Tx) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) || fb.calls.Load() != 0 {
		t.Fatalf("err = %v after %d BeginTx calls, want DeadlineExceeded before any", err, fb.calls.Load())
	}
}
