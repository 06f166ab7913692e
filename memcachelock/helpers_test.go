package memcachelock

import (
	"context"
	"database/sql"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/goleak"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// TestMain checks, after every test, that the package left no goroutine
// behind (refreshers, pollers, release workers).
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	goleak.VerifyTestMain(m)
}

// checkIdle fails t unless l holds nothing: no key in its local queue and no
// refresher running. Registered as a cleanup by newLocker.
func checkIdle(t testing.TB, l *Locker) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := l.local.Len()
		live := l.live.Load()
		if n == 0 && live == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: locker still has %d keys in its queue and %d refreshers", n, live)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counter counts the commands a client sends: gomemcache buffers each
// command with its data and flushes it in one Write, then reads the answer,
// so one Write is one round trip.
type counter struct{ n atomic.Int64 }

type countingConn struct {
	net.Conn
	c *counter
}

func (c countingConn) Write(b []byte) (int, error) {
	c.c.n.Add(1)
	return c.Conn.Write(b)
}

// client returns a gomemcache client for addrs whose commands are counted
// in cnt (may be nil).
func client(cnt *counter, addrs ...string) *memcache.Client {
	c := memcache.New(addrs...)
	if cnt != nil {
		c.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return countingConn{Conn: nc, c: cnt}, nil
		}
	}
	return c
}

func newLocker(t testing.TB, c *memcache.Client, opts ...Option) *Locker {
	l := New(c, opts...)
	t.Cleanup(func() { checkIdle(t, l) })
	return l
}

func startMemcached(t testing.TB) (*testenv.Memcached, *memcache.Client) {
	m := testenv.StartMemcached(t)
	return m, client(nil, m.Addr())
}

// counterDB creates a one-row counter table.
func counterDB(t testing.TB) *sql.DB {
	db := testenv.Postgres(t)
	if _, err := db.Exec(`CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0);
		CREATE TABLE names (name text NOT NULL, attempt int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return db
}

// increment reads the counter and writes it back plus one, in two
// statements: at READ COMMITTED two overlapping bodies lose an update, so
// the final count shows whether the lock excluded them.
func increment(ctx context.Context, tx *sql.Tx) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `UPDATE counter SET n = $1 WHERE id = 1`, n+1)
	return err
}

func count(t testing.TB, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func request(keys ...string) txlock.Request {
	return txlock.Request{Keys: keys, Lost: func(error) {}}
}
