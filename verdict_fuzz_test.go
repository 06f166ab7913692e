package txlock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock/sqladapter"
)

// FuzzDecide checks the promises of "What is retried" for any SQLSTATE, in
// any phase, wrapped or not: a caller who has gone is never retried; an
// error at COMMIT that may hide a commit is never retried blindly; txlock's
// own final errors stay final; a lost lease before COMMIT is always
// retried.
func FuzzDecide(f *testing.F) {
	for _, code := range []string{"40001", "40P01", "23505", "08006", "08007", "40003", "57P01", "57P02", "57P03",
		"55P03", "57014", "23514", "42883", "XX000", "", "0", "08", "40"} {
		for ph := range 5 {
			f.Add(code, ph, false, false, 0)
			f.Add(code, ph, true, false, 1)
			f.Add(code, ph, false, true, 2)
		}
	}
	f.Fuzz(func(t *testing.T, code string, ph int, callerDone, lost bool, kind int) {
		p := phase(((ph % 5) + 5) % 5)
		var err error
		switch ((kind % 6) + 6) % 6 {
		case 0:
			err = &pgconn.PgError{Code: code}
		case 1:
			err = fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code})
		case 2:
			err = io.ErrUnexpectedEOF
		case 3:
			err = context.Canceled
		case 4:
			err = fmt.Errorf("%w: %s", ErrLockBusy, code)
		case 5:
			err = sql.ErrTxDone
		}
		var lostErr error
		if lost {
			lostErr = ErrLockLost
		}
		v, reason := decide(err, p, lostErr, callerDone, sqladapter.Classify)
		mayHideCommit := p == phaseCommit && (isContextErr(err) || sqladapter.Classify(err, sqladapter.AtCommit) == sqladapter.Ambiguous)
		switch {
		case callerDone && v == again:
			t.Fatalf("retried for a caller who has gone: %v at phase %d", err, p)
		case mayHideCommit && v != ambiguous:
			t.Fatalf("an error that may hide a commit (%v) got verdict %d", err, v)
		case errors.Is(err, ErrLockBusy) && p != phaseCommit && !lost && v != final:
			t.Fatalf("ErrLockBusy retried")
		case lost && !callerDone && p != phaseCommit && (v != again || reason != "lock_lost"):
			t.Fatalf("a lost lease at phase %d: verdict %d %q", p, v, reason)
		case v == again && reason == "":
			t.Fatalf("a retry without a reason")
		}
	})
}
