package txlock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock/sqladapter"
)

// TestDecide walks the package documentation's "What is retried" list,
// row by row: each case names the row it checks.
func TestDecide(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("statement: %w", &pgconn.PgError{Code: code}) }
	lost := fmt.Errorf("%w: expired", ErrLockLost)
	body := errors.New("name taken")
	for _, tc := range []struct {
		row        string
		err        error
		ph         phase
		lost       error
		callerDone bool
		want       verdict
		reason     string
	}{
		{"1 lease lost, body saw the cancellation", context.Canceled, phaseBody, lost, false, again, "lock_lost"},
		{"1 lease lost, reported by Verify", lost, phaseVerify, nil, false, again, "lock_lost"},
		{"1 lease lost, found at acquire", lost, phaseLock, nil, false, again, "lock_lost"},
		{"2 verify: service unavailable", fmt.Errorf("%w: dial", ErrLockUnavailable), phaseVerify, nil, false, again, "lock_unavailable"},
		{"3 serialization failure in the body", pg("40001"), phaseBody, nil, false, again, "serialization_failure"},
		{"3 deadlock in a lock statement", pg("40P01"), phaseLock, nil, false, again, "deadlock"},
		{"3 unique violation", pg("23505"), phaseBody, nil, false, again, "unique_violation"},
		{"3 backend terminated in the body", pg("57P01"), phaseBody, nil, false, again, "connection_lost"},
		{"3 connection failure at BEGIN", pg("08006"), phaseBegin, nil, false, again, "connection_lost"},
		{"3 broken connection in the body", io.ErrUnexpectedEOF, phaseBody, nil, false, again, "connection_lost"},
		{"3 bad connection at BEGIN", driver.ErrBadConn, phaseBegin, nil, false, again, "connection_lost"},
		{"4 serialization failure at COMMIT", pg("40001"), phaseCommit, nil, false, again, "serialization_failure"},
		{"4 deferred unique violation at COMMIT", pg("23505"), phaseCommit, nil, false, again, "unique_violation"},
		{"6 caller gone during the body", context.Canceled, phaseBody, nil, true, final, ""},
		{"6 caller gone, even with a conflict", pg("40001"), phaseBody, nil, true, final, ""},
		{"6 caller gone, even with a lost lease", context.Canceled, phaseBody, lost, true, final, ""},
		{"6 caller gone, COMMIT refused", pg("40001"), phaseCommit, nil, true, final, ""},
		{"7 lock busy", fmt.Errorf("%w: key", ErrLockBusy), phaseLock, nil, false, final, ""},
		{"7 lock service down past the wait", fmt.Errorf("%w: dial", ErrLockUnavailable), phaseLock, nil, false, final, ""},
		{"7 invalid", invalid("bad"), phaseLock, nil, false, final, ""},
		{"7 nested run in the body", ErrNestedRun, phaseBody, nil, false, final, ""},
		{"7 not in run", ErrNotInRun, phaseBody, nil, false, final, ""},
		{"8 body's own error", body, phaseBody, nil, false, final, ""},
		{"8 lock wait timeout from the database", pg("55P03"), phaseBody, nil, false, final, ""},
		{"8 statement timeout", pg("57014"), phaseBody, nil, false, final, ""},
		{"8 the body's own context deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), phaseBody, nil, false, final, ""},
		{"8 check violation at COMMIT", pg("23514"), phaseCommit, nil, false, final, ""},
		{"9 body ended the transaction", fmt.Errorf("commit: %w", sql.ErrTxDone), phaseCommit, nil, false, final, ""},
		{"9 database/sql rolled back for a gone caller", fmt.Errorf("commit: %w", sql.ErrTxDone), phaseCommit, nil, true, final, ""},
		{"10 connection broke during COMMIT", io.ErrUnexpectedEOF, phaseCommit, nil, false, ambiguous, ""},
		{"10 backend terminated during COMMIT", pg("57P01"), phaseCommit, nil, false, ambiguous, ""},
		{"10 transaction resolution unknown", pg("08007"), phaseCommit, nil, false, ambiguous, ""},
		{"10 COMMIT interrupted by its context", context.DeadlineExceeded, phaseCommit, nil, false, ambiguous, ""},
		{"10 COMMIT interrupted, caller gone", context.Canceled, phaseCommit, nil, true, ambiguous, ""},
		{"10 lease lost while COMMIT was in flight", io.ErrUnexpectedEOF, phaseCommit, lost, false, ambiguous, ""},
	} {
		t.Run(tc.row, func(t *testing.T) {
			v, reason := decide(tc.err, tc.ph, tc.lost, tc.callerDone, sqladapter.Classify)
			if v != tc.want || reason != tc.reason {
				t.Errorf("decide(%v, phase %d) = %d %q, want %d %q", tc.err, tc.ph, v, reason, tc.want, tc.reason)
			}
		})
	}
}
