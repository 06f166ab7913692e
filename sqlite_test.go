package txlock_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/retry"
)

// TestSQLiteBusyCommitLeavesNoOpenTransaction: SQLite keeps a transaction
// open after a COMMIT refused with SQLITE_BUSY. Run retries it, and neither
// its next attempt nor the next user of the connection may find that
// transaction still open: every acknowledged write must be on disk.
func TestSQLiteBusyCommitLeavesNoOpenTransaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.db")
	dsn := "file:" + path + "?_pragma=journal_mode(DELETE)&_pragma=busy_timeout(50)"
	w, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	w.SetMaxOpenConns(1)
	if _, err := w.Exec(`CREATE TABLE t (v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	r, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A reader holds a read transaction, so a writer's COMMIT is BUSY
	// until it ends.
	rtx, err := r.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := rtx.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { _ = rtx.Rollback() })
	attempts := 0
	err = txlock.Run(context.Background(), w, []string{"k"}, func(ctx context.Context, tx *sql.Tx) error {
		attempts++
		_, err := tx.ExecContext(ctx, `INSERT INTO t VALUES ('run')`)
		return err
	}, txlock.WithBackoff(retry.Constant(50*time.Millisecond)), txlock.WithMaxAttempts(20))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if attempts < 2 {
		t.Fatalf("%d attempts: the test did not meet a busy COMMIT", attempts)
	}
	if _, err := w.Exec(`INSERT INTO t VALUES ('after')`); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rows on disk, want 2: an acknowledged write was lost", n)
	}
}
