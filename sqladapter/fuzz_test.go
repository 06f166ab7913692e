package sqladapter_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txlock/txlock/sqladapter"
)

// FuzzClassify: any SQLSTATE, wrapped any number of times, in either
// phase: Classify never panics; a connection failure is a retry before
// COMMIT and ambiguous at it; only COMMIT is ever ambiguous, except for
// the codes that say so themselves; conflicts are retried in both phases;
// and Reason names every retryable code.
func FuzzClassify(f *testing.F) {
	for _, code := range []string{"40001", "40P01", "23505", "08000", "08006", "08007", "40003",
		"57P01", "57P02", "57P03", "55P03", "57014", "23514", "", "x", "08", "40001 "} {
		f.Add(code, 0, false)
		f.Add(code, 3, true)
	}
	f.Fuzz(func(t *testing.T, code string, depth int, atCommit bool) {
		var err error = &pgconn.PgError{Code: code}
		for range min(max(depth, 0), 20) {
			err = fmt.Errorf("layer: %w", err)
		}
		phase := sqladapter.InTx
		if atCommit {
			phase = sqladapter.AtCommit
		}
		c := sqladapter.Classify(err, phase)
		connLost := strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03"
		unknownOutcome := code == "40003" || code == "08007"
		switch {
		case code == "":
			if c != sqladapter.Permanent {
				t.Fatalf("an error without a SQLSTATE is %v", c)
			}
		case unknownOutcome:
			if c != sqladapter.Ambiguous {
				t.Fatalf("%s is %v, want ambiguous", code, c)
			}
		case connLost && atCommit && c != sqladapter.Ambiguous:
			t.Fatalf("%s at COMMIT is %v, want ambiguous", code, c)
		case connLost && !atCommit && c != sqladapter.Retryable:
			t.Fatalf("%s before COMMIT is %v, want retryable", code, c)
		case (code == "40001" || code == "40P01" || code == "23505") && c != sqladapter.Retryable:
			t.Fatalf("%s is %v, want retryable", code, c)
		case !connLost && !unknownOutcome && c == sqladapter.Ambiguous:
			t.Fatalf("%s is ambiguous", code)
		}
		if c == sqladapter.Retryable && sqladapter.Reason(err) == "" {
			t.Fatalf("retryable %s has no reason", code)
		}
	})
}
