package txlock_test

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlocktest"
)

// syncBuf is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWithLogger: retries after a conflict at Debug, a lost lease at Warn,
// an unknown COMMIT at Error; repeated warnings are rate-limited; key
// values never appear.
func TestWithLogger(t *testing.T) {
	h := newHostileEnv(t)
	defer h.db.Close()
	var out syncBuf
	logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	logged := txlock.WithLogger(logger)
	const secret = "name:alice@example.com"
	run := func(opts ...txlock.Option) error {
		return txlock.Run(context.Background(), h.db, []string{secret}, write, append([]txlock.Option{logged}, opts...)...)
	}
	if err := run(txlocktest.ConflictOn(1)); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := run(txlocktest.LoseLeaseOn(1)); err != nil {
			t.Fatal(err)
		}
	}
	_ = run(txlocktest.UnknownCommitOn(true, 1))
	_ = run(txlocktest.ConflictOn(1, 2), txlock.WithMaxAttempts(2))
	s := out.String()
	for _, want := range []string{
		`level=DEBUG msg="txlock: retrying after a conflict" attempt=1 sqlstate=40001 reason=serialization_failure`,
		`level=WARN msg="txlock: lease lost" attempt=1`,
		`level=ERROR msg="txlock: commit outcome unknown" attempt=1`,
		`level=WARN msg="txlock: too many attempts" attempts=2`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("log lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, `msg="txlock: lease lost"`); n != 1 {
		t.Errorf("%d lost-lease lines for 5 losses within a second, want 1:\n%s", n, s)
	}
	if strings.Contains(s, "alice") {
		t.Errorf("a key value was logged:\n%s", s)
	}
}

var _ = sql.ErrTxDone
