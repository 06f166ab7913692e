// Package advisorylock is a txlock.Locker that holds Postgres
// transaction-level advisory locks (pg_advisory_xact_lock).
//
// The locks are held by the database itself, inside the transaction Run
// begins, and Postgres releases them exactly when that transaction commits
// or rolls back: there is no lease to lose, no owner to check, nothing to
// leak, even when the process dies. That makes advisory locks the guarantee
// of BRIEF's correctness model ("locks for throughput, the transaction for
// truth"): with them a check-then-insert is correct at every isolation level
// Postgres offers.
//
// The price is that every waiter holds a database connection while it
// waits, so a hot key can drain the connection pool that other requests
// need. memcachelock's waiters hold none. Combine them to get both: writers
// queue in memcached outside the database, and the advisory lock is the
// guarantee inside it:
//
//	txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
//
// # Keys
//
// Postgres advisory locks are named by a 64-bit integer. Each key maps to
// one through a hash computed in Go, the first eight bytes of
// SHA-256(namespace, 0, key), which never changes across Postgres versions
// (hashtext makes no such promise). Keys are sent as bind parameters, never
// as SQL text. Two keys that hash alike (about one chance in 2^64 per pair)
// share a lock: they serialize more, which never breaks correctness.
// Distinct integers are taken in ascending order in one statement, so two
// transactions over the same keys never deadlock each other.
//
// # Waiting
//
// Acquire first tries every lock without waiting, in one round trip. That
// succeeds in the uncontended case. With a zero lock wait a busy lock is
// txlock.ErrLockBusy at once. Otherwise it waits, bounded by the lock wait
// through Postgres's lock_timeout (SQLSTATE 55P03 becomes ErrLockBusy), set
// for the wait only and restored afterwards. A caller's cancellation is
// honoured too; pgx then closes the connection, which is how it interrupts
// a statement. Postgres applies lock_timeout to each lock it waits for, so
// when several keys are busy one after another the wait could add up past
// the deadline; one second after it, Acquire interrupts the statement from
// the client (costing the connection) and the result is ErrLockBusy all
// the same.
//
// A failed lock statement aborts the transaction, as any failed statement
// does in Postgres: Run rolls it back. When txlock.Lock fails inside a body,
// return its error.
//
// # Isolation levels
//
// At READ COMMITTED (Postgres's default) every statement after the lock sees
// what earlier holders committed: the lock alone makes check-then-insert
// correct. At SERIALIZABLE, Postgres itself detects the conflict with an
// earlier holder and Run retries it. REPEATABLE READ is the odd one: the
// transaction's snapshot is fixed by its first statement, which is the lock
// statement itself, so it can predate the commit of the holder it waited
// for. Acquire checks that right after taking the locks, in one more round
// trip that only REPEATABLE READ pays (has a transaction that was running at
// the snapshot, or started since, committed?), and fails with
// an error wrapping txlock.ErrLockLost, so that Run retries with a new
// snapshot. Under contention that costs an attempt per wait. Keys taken
// later with txlock.Lock at REPEATABLE READ hit the same check against an
// older snapshot: pass them to Run instead.
// The check cannot tell which transaction held our lock (Postgres keeps no
// such record), so any commit in the cluster between the snapshot and the
// check counts: under a heavy unrelated write load REPEATABLE READ attempts
// are retried more often than they need to be, never less, even with
// memcachelock in front, where waits are rare. In the long form of
// internal/matrix (32 workers over 4 processes, 100 hot names) REPEATABLE
// READ took about 2.1 attempts per commit with advisory locks alone and 1.7
// with memcachelock in front, against 1.0 at READ COMMITTED. So prefer READ
// COMMITTED, where the lock alone is exact and costs nothing more, or
// SERIALIZABLE, where Postgres finds the conflict itself (see the matrix
// for its rate of serialization failures). The check
// assigns the transaction an id (pg_current_xact_id), so it does not work
// on a hot standby, where advisory locks guard nothing anyway.
// Postgres 13 or later is required (pg_current_snapshot).
package advisorylock

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/sqladapter"
)

// Locker holds Postgres transaction-level advisory locks. It is safe for
// concurrent use; its zero value is not usable, call New.
type Locker struct {
	namespace string
}

// Option configures a Locker.
type Option func(*Locker)

// WithNamespace hashes every key together with ns, so that two
// applications sharing a database do not share locks for equal keys.
// The default namespace is empty.
func WithNamespace(ns string) Option {
	return func(l *Locker) { l.namespace = ns }
}

// New returns a Locker.
func New(opts ...Option) *Locker {
	l := &Locker{}
	for _, o := range opts {
		if o != nil {
			o(l)
		}
	}
	return l
}

// LeasesCannotBeLost reports true: an advisory lock lasts as long as its
// transaction (see txlock.Stable).
func (l *Locker) LeasesCannotBeLost() bool { return true }

// InTx reports true: advisory locks are taken inside the transaction.
func (l *Locker) InTx() bool { return true }

// ID returns the 64-bit advisory lock identifier of key in the namespace,
// as it appears in pg_locks (classid = high 32 bits, objid = low 32 bits).
func ID(namespace, key string) int64 {
	h := sha256.New()
	h.Write([]byte(namespace))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return int64(binary.BigEndian.Uint64(h.Sum(sum[:0])))
}

// graceAfterTimeout is how long past the lock wait Acquire lets Postgres
// report lock_timeout before it interrupts the statement from the client,
// which costs the connection.
const graceAfterTimeout = time.Second

// Acquire takes the advisory locks of req.Keys in req.Tx. It returns an
// error wrapping txlock.ErrLockBusy when a lock stays taken past the wait,
// and an error wrapping txlock.ErrInvalid when req.Tx is nil.
func (l *Locker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	if l == nil {
		return nil, fmt.Errorf("%w: advisorylock: nil *Locker", txlock.ErrInvalid)
	}
	if req.Tx == nil {
		return nil, fmt.Errorf("%w: advisorylock: no transaction (advisory locks live inside one)", txlock.ErrInvalid)
	}
	ids := make([]int64, 0, len(req.Keys))
	for _, k := range req.Keys {
		ids = append(ids, ID(l.namespace, k))
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) == 0 {
		return lease{}, nil
	}

	// Statements run on a context that ignores the wait deadline for a
	// moment: lock_timeout ends the wait on the server, cleanly, while an
	// interrupted statement costs pgx the connection.
	qctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var grace *time.Timer
	var graceMu sync.Mutex
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			graceMu.Lock()
			grace = time.AfterFunc(graceAfterTimeout, cancel)
			graceMu.Unlock()
			return
		}
		cancel()
	})
	defer func() {
		stop()
		graceMu.Lock()
		if grace != nil {
			grace.Stop()
		}
		graceMu.Unlock()
	}()

	busy, isolation, err := tryLock(qctx, req.Tx, ids)
	if err != nil {
		return nil, l.fail(ctx, err)
	}
	if busy < 0 {
		if isolation == repeatableRead {
			stale, err := snapshotStale(qctx, req.Tx)
			if err != nil {
				return nil, l.fail(ctx, err)
			}
			if stale {
				return nil, errStaleSnapshot
			}
		}
		return lease{}, nil
	}
	if req.TryOnce {
		return nil, fmt.Errorf("%w: advisory lock %d", txlock.ErrLockBusy, ids[busy])
	}
	if err := waitLock(qctx, ctx, req.Tx, ids[busy:]); err != nil {
		return nil, l.fail(ctx, err)
	}
	if isolation == repeatableRead {
		// We waited for a holder that has since committed; our
		// snapshot, fixed before the wait, cannot see its writes.
		return nil, errStaleSnapshot
	}
	return lease{}, nil
}

// errStaleSnapshot makes Run retry: under REPEATABLE READ a snapshot taken
// before the lock may miss the previous holder's writes, and only a new
// transaction gets a new snapshot. It wraps txlock.ErrLockLost, which Run
// retries.
var errStaleSnapshot = fmt.Errorf("%w: advisorylock: the REPEATABLE READ snapshot predates the lock; a new transaction is needed", txlock.ErrLockLost)

func (l *Locker) fail(ctx context.Context, err error) error {
	if code, ok := sqladapter.SQLState(err); ok && code == sqladapter.CodeLockNotAvailable {
		return fmt.Errorf("%w: advisory lock wait timed out: %w", txlock.ErrLockBusy, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("advisorylock: %w (%w)", ctx.Err(), err)
	}
	return fmt.Errorf("advisorylock: %w", err)
}

// tryQuery tries every lock in array order without waiting and stops at the
// first busy one (unnest keeps the order, LIMIT 1 stops the scan), returning
// its 1-based position or 0. Locks before a busy one stay held:
// transaction-level advisory locks cannot be given back early; taking them
// again later only raises their count. tryOneQuery is the same for the
// common single key, cheaper for the server. Both also return the
// transaction's isolation level, which decides whether staleQuery must run.
const (
	tryOneQuery = `SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 0 ELSE 1 END,
	current_setting('transaction_isolation')`
	tryQuery = `SELECT coalesce((SELECT i FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, i)
		WHERE NOT pg_try_advisory_xact_lock(id) LIMIT 1), 0),
	current_setting('transaction_isolation')`
)

// staleQuery runs under REPEATABLE READ only, right after the locks are
// taken. The transaction's snapshot was fixed when the lock statement
// started, before the lock was held. It reports whether any transaction
// that could have held the lock before us committed after that snapshot: one
// that was in progress then, or one that started since (whose ids lie
// between the snapshot's xmax and ours). It can say yes for a transaction
// that never touched our keys; that costs a retry, never a duplicate.
const staleQuery = `SELECT
	EXISTS (SELECT 1 FROM pg_snapshot_xip(pg_current_snapshot()) AS x
		WHERE pg_xact_status(x) = 'committed')
	OR EXISTS (SELECT 1 FROM generate_series(
			pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
			pg_current_xact_id()::text::bigint - 1) AS g
		WHERE pg_xact_status(g::text::xid8) = 'committed')`

const repeatableRead = "repeatable read"

// tryLock tries the locks. busy is the index of the first busy lock, or -1.
func tryLock(ctx context.Context, tx *sql.Tx, ids []int64) (busy int, isolation string, err error) {
	var first int64
	if len(ids) == 1 {
		err = tx.QueryRowContext(ctx, tryOneQuery, ids[0]).Scan(&first, &isolation)
	} else {
		err = tx.QueryRowContext(ctx, tryQuery, arrayLiteral(ids)).Scan(&first, &isolation)
	}
	if err != nil {
		return 0, "", err
	}
	return int(first) - 1, isolation, nil
}

func snapshotStale(ctx context.Context, tx *sql.Tx) (bool, error) {
	var stale bool
	err := tx.QueryRowContext(ctx, staleQuery).Scan(&stale)
	return stale, err
}

// waitQuery sets lock_timeout for the wait, takes the locks in array order,
// and puts lock_timeout back, in one round trip, so that a waiter that gets
// its lock goes straight on to its body. The inner select's target list is
// evaluated left to right (OFFSET 0 keeps it from being merged into the
// outer one): read the old timeout, set the new one, then wait for the
// locks (the scalar subquery is evaluated when its column is reached). The
// outer select restores the old value. If the wait times out, the
// statement fails with 55P03 and the transaction, aborted, is rolled back
// with its setting.
const waitQuery = `SELECT set_config('lock_timeout', old, true) FROM (
	SELECT current_setting('lock_timeout') AS old,
		set_config('lock_timeout', $2, true) AS new,
		(SELECT count(*) FROM (SELECT pg_advisory_xact_lock(id) FROM unnest($1::bigint[]) AS t(id)) AS l) AS n
	OFFSET 0) AS s`

// waitLock takes the locks, waiting at most until waitCtx's deadline, or
// without a timeout when waitCtx has no deadline.
func waitLock(ctx, waitCtx context.Context, tx *sql.Tx, ids []int64) error {
	timeout := "0" // Postgres: no timeout
	if deadline, ok := waitCtx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w: advisory lock %d", txlock.ErrLockBusy, ids[0])
		}
		timeout = strconv.FormatInt(max(left.Milliseconds(), 1), 10) + "ms"
	}
	var restored string
	return tx.QueryRowContext(ctx, waitQuery, arrayLiteral(ids), timeout).Scan(&restored)
}

// arrayLiteral formats ids as a Postgres array literal. Sending text and
// casting in SQL works with every driver, unlike native array parameters.
func arrayLiteral(ids []int64) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	b.WriteByte('}')
	return b.String()
}

// lease is a no-op: Postgres holds the locks and ends them with the
// transaction.
type lease struct{}

// Verify succeeds: an advisory lock cannot be lost while its transaction
// lives, and if the session dies the transaction dies with it.
func (lease) Verify(context.Context) error { return nil }

// Release does nothing: COMMIT or ROLLBACK has already released the locks.
func (lease) Release(context.Context) error { return nil }
