// Package advisorylock is a txlock.Locker that holds PostgreSQL advisory
// locks.
//
// The locks are held by the database itself, and Postgres ends them with
// the transaction or the session that holds them: there is no lease to
// lose, no owner to check, nothing to leak when the process dies. That makes
// advisory locks a guarantee on their own: with them a check-then-insert is
// correct at every isolation level Postgres offers. And it makes them the
// guard of a run that combines them with a lock outside the database:
//
//	txlock.WithLocker(memcachelock.New(mc), advisorylock.New())
//
// Writers then queue in memcached, outside the database, holding no
// connection; the advisory lock is the guarantee inside it, and the run
// goes on under it alone when memcached cannot be reached.
//
// The price of advisory locks alone is that every waiter holds a database
// connection while it waits, so a hot key can drain the connection pool
// that other requests need. memcachelock's waiters hold none. A waiter
// also holds a snapshot (Postgres keeps one for the statement that waits
// in its lock queue), and while it waits Postgres cannot mark the row
// versions that the holders replace as dead to everyone: in txlockbench's
// hot-key row (31 waiters in 4 processes) the holder's index scan of the
// hot row reads about 32 index entries where it reads 2 with the waiters
// in memcached. That costs little there, and grows with the number of
// waiters and how long they wait. And as each waiter holds its own
// connection, a hot key moves to another backend with every commit, which
// costs more: txlock's in-process locker made to do the same (each worker
// on a connection of its own, txlockbench's local-conns row) lost 2-16% of
// its goodput there, in 13 runs on three machines. memcachelock in front
// of advisorylock keeps the waiters, their connections and their
// snapshots out of the database.
//
// # Keys
//
// Postgres advisory locks are named by a 64-bit integer. Each key maps to
// one through a hash computed in Go, the first eight bytes of
// SHA-256(len(namespace), namespace, key) (see ID), which never changes
// across Postgres versions (hashtext makes no such promise). Keys are sent
// as bind parameters, never as SQL text. Two keys that hash alike (about one
// chance in 2^64 per pair) share a lock: they serialize more, which never
// breaks correctness. Distinct integers are taken in ascending order, so
// two transactions over the same keys never deadlock each other. A run may
// lock at most MaxKeys keys (WithMaxKeys): every advisory lock takes a slot
// of Postgres's shared lock table (max_locks_per_transaction × connections),
// and a run that fills it makes unrelated transactions fail.
//
// # Isolation levels, and where the lock is taken
//
// At READ COMMITTED (Postgres's default) the lock is a transaction-level
// lock (pg_advisory_xact_lock), taken by the transaction's first statement:
// every statement after it sees what earlier holders committed. It costs
// one round trip and ends exactly with the transaction. A run that must
// wait costs two, a try and then the wait, except on a key that this
// Locker found busy in the last second: a hot key is most likely busy
// still, and such a run waits at once, in one statement.
//
// At REPEATABLE READ and SERIALIZABLE the transaction's snapshot is fixed by
// its first statement, which would be the lock statement itself: a waiter's
// snapshot would predate the commit of the holder it waited for. So at
// these levels the lock is a session-level lock (pg_advisory_lock), taken on
// the connection before BEGIN (stage txlock.OnConn), and the snapshot comes
// after it. Run holds that connection for the attempt and releases the lock
// right after COMMIT or ROLLBACK (pg_advisory_unlock), one more round trip;
// if the unlock cannot be confirmed, Run closes the connection instead of
// returning it to the pool, which ends the session and its locks. Measured
// on a 2-core machine where Postgres is CPU-bound (txlockbench, 8 workers
// on distinct names), that costs throughput: 0.65 of a bare transaction's
// at REPEATABLE READ against 0.83 at READ COMMITTED. In exchange a waiter
// never needs a second attempt: under contention every Run commits on its
// first.
//
// Session locks need the same server session for the lock, the
// transaction and the unlock. Behind pgbouncer in transaction pooling mode
// consecutive transactions of one client connection may run on different
// server sessions, so a session lock can outlive the client's transaction
// and stay with a session someone else uses: use session pooling, connect
// directly, or stay at READ COMMITTED, where only transaction-level locks
// are used and any pooling mode works.
//
// When the isolation level is left to the server (no txlock.WithTxOptions)
// and the server's default is REPEATABLE READ or SERIALIZABLE, or a key is
// added with txlock.Lock from inside a body, the lock can only be taken
// inside the transaction. At REPEATABLE READ, Acquire then checks, in one
// more round trip, whether a transaction that could have held the lock
// committed after the snapshot was taken, and if so fails as a
// serialization failure (its SQLState is 40001, as Postgres's own), so that
// Run retries with a new snapshot. The check cannot tell which transaction
// held our lock, so any commit in the cluster in that window counts: it
// costs retries, never correctness. At SERIALIZABLE no check is needed:
// Postgres's own conflict detection refuses such a transaction with 40001,
// which Run retries.
//
// # Waiting
//
// Acquire first tries every lock without waiting, in one round trip. That
// succeeds in the uncontended case. With a zero lock wait a busy lock is
// txlock.ErrLockBusy at once. Otherwise it waits in Postgres's queue,
// bounded by the lock wait through Postgres's lock_timeout (SQLSTATE 55P03
// becomes ErrLockBusy), set for the wait's statement only (waits longer
// than Postgres's limit of about 24.8 days are cut to it). A caller's
// cancellation is honoured too; pgx then closes the connection, which is
// how it interrupts a statement. Postgres applies lock_timeout to each lock
// it waits for, so when several keys are busy one after another the wait
// could add up past the deadline; one second after it, Acquire interrupts
// the statement from the client (costing the connection) and the result is
// ErrLockBusy all the same.
//
// With a lock outside the database earlier in the same run
// (txlock.WithLocker(memcachelock.New(mc), advisorylock.New())), writers
// queue there and the advisory lock is normally free when asked for. When
// it is not, its holder outlived its memcached lease (it was paused or cut
// off), or memcached is down and writers come straight here; Acquire then
// polls the lock (every 1 ms, backing off to 20 ms) instead of waiting in
// Postgres's queue: Postgres grants a queued lock to a waiter even while
// that waiter's process is paused, and the waiter then holds it for the
// whole pause; under repeated pauses such holds chain.
//
// A failed lock statement aborts the transaction, as any failed statement
// does in Postgres: Run rolls it back. When txlock.Lock fails inside a body,
// return its error.
//
// Advisory locks need PostgreSQL: on another database Acquire fails with an
// error wrapping txlock.ErrInvalid that says so. The REPEATABLE READ check
// needs Postgres 13 or later (pg_current_snapshot); it assigns the
// transaction an id, so it does not work on a hot standby, where advisory
// locks guard nothing anyway.
package advisorylock

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/sqladapter"
)

// DefaultMaxKeys is how many keys one Acquire may lock unless WithMaxKeys
// says otherwise: Postgres's default max_locks_per_transaction.
const DefaultMaxKeys = 64

// maxLockTimeout is the longest lock_timeout Postgres accepts: INT_MAX
// milliseconds, about 24.8 days.
const maxLockTimeout = math.MaxInt32 * time.Millisecond

// Locker holds Postgres advisory locks. It is safe for concurrent use; its
// zero value is not usable, call New.
type Locker struct {
	cfg  config
	busy busyLocks // locks recently found busy
}

type config struct {
	namespace string
	maxKeys   int
	err       error // the first bad option, reported by Check and Acquire
}

// Option configures a Locker. As in every package of this module, a bad
// value is an error wrapping txlock.ErrInvalid; since New cannot return
// it, Check and every Acquire do.
type Option func(*config) error

// WithNamespace hashes every key together with ns, so that two
// applications sharing a database do not share locks for equal keys.
// The default namespace is empty. Any string is a namespace.
func WithNamespace(ns string) Option {
	return func(c *config) error {
		c.namespace = ns
		return nil
	}
}

// WithMaxKeys sets how many keys one Acquire may lock (DefaultMaxKeys,
// 64, by default); more is an error wrapping txlock.ErrInvalid, before any
// lock is taken. Raise it together with Postgres's
// max_locks_per_transaction. n must be at least 1.
func WithMaxKeys(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("%w: advisorylock: WithMaxKeys(%d): want at least 1", txlock.ErrInvalid, n)
		}
		c.maxKeys = n
		return nil
	}
}

// New returns a Locker. It never fails: a bad option is reported by Check
// and by every Acquire.
func New(opts ...Option) *Locker {
	l := &Locker{cfg: config{maxKeys: DefaultMaxKeys}}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&l.cfg); err != nil && l.cfg.err == nil {
			l.cfg.err = err
		}
	}
	return l
}

// Check reports a bad option. Advisory locks need no service of their own:
// the database is checked by the first Run.
func (l *Locker) Check(context.Context) error {
	if l == nil {
		return fmt.Errorf("%w: advisorylock: nil *Locker", txlock.ErrInvalid)
	}
	return l.cfg.err
}

// Traits reports that advisory locks are held by the database and cannot
// be lost: taken on the connection before BEGIN at REPEATABLE READ and
// SERIALIZABLE (so that the snapshot follows the lock), inside the
// transaction otherwise.
func (l *Locker) Traits(opts *sql.TxOptions) txlock.Traits {
	if opts != nil && snapshotLevel(opts.Isolation) {
		return txlock.Traits{Stage: txlock.OnConn, Stable: true}
	}
	return txlock.Traits{Stage: txlock.InTx, Stable: true}
}

// snapshotLevel reports the levels whose snapshot is fixed by the first
// statement of the transaction.
func snapshotLevel(level sql.IsolationLevel) bool {
	switch level {
	case sql.LevelRepeatableRead, sql.LevelSnapshot, sql.LevelSerializable, sql.LevelLinearizable:
		return true
	}
	return false
}

// ID returns the 64-bit advisory lock identifier of key in namespace, as
// it appears in pg_locks (classid = high 32 bits, objid = low 32 bits): the
// first eight bytes, big-endian, of SHA-256 over the namespace's length as
// eight bytes big-endian, the namespace and the key. The length prefix
// keeps every (namespace, key) pair apart.
func ID(namespace, key string) int64 {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(namespace)))
	h.Write(n[:])
	h.Write([]byte(namespace))
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return int64(binary.BigEndian.Uint64(h.Sum(sum[:0])))
}

// graceAfterTimeout is how long past the lock wait Acquire lets Postgres
// report lock_timeout before it interrupts the statement from the client,
// which costs the connection.
const graceAfterTimeout = time.Second

// undoTimeout bounds the statement that gives back the session locks of a
// failed Acquire.
const undoTimeout = 5 * time.Second

// Acquire takes the advisory locks of req.Keys: session-level locks on
// req.Conn when req.Stage is txlock.OnConn, transaction-level locks in it
// otherwise. It returns an error wrapping txlock.ErrLockBusy when a lock
// stays taken past the wait, and an error wrapping txlock.ErrInvalid for a
// bad configuration, too many keys, no connection, or a database that is
// not PostgreSQL.
func (l *Locker) Acquire(ctx context.Context, req txlock.Request) (txlock.Lease, error) {
	if err := l.Check(ctx); err != nil {
		return nil, err
	}
	if req.Conn == nil {
		return nil, fmt.Errorf("%w: advisorylock: no connection (advisory locks live in the database)", txlock.ErrInvalid)
	}
	ids, err := l.ids(req.Keys)
	switch {
	case err != nil:
		return nil, err
	case len(ids) == 0:
		return noLease{}, nil
	}
	s := stmts{q: req.Conn, session: req.Stage == txlock.OnConn}

	// Statements run on a context that ignores the wait deadline for a
	// moment: lock_timeout ends the wait on the server, cleanly, while an
	// interrupted statement costs pgx the connection.
	qctx, stop := graceContext(ctx)
	defer stop()

	var busy int
	var isolation string
	if !req.TryOnce && !req.Queued && l.busy.recently(ids[0]) && waitLeft(ctx) {
		// Busy a moment ago: most likely busy still, so wait at once, one
		// statement instead of two. Whether the wait was needed is not
		// known, which only the REPEATABLE READ check below cares about.
		if isolation, err = s.wait(qctx, ctx, ids); err != nil {
			return nil, s.undo(qctx, ids, l.fail(ctx, err))
		}
		busy = -1
	} else if busy, isolation, err = s.try(qctx, ids); err != nil {
		return nil, l.fail(ctx, err)
	}
	if busy >= 0 {
		l.busy.note(ids[busy])
		if req.TryOnce {
			return nil, s.undo(qctx, ids, fmt.Errorf("%w: advisory lock %d", txlock.ErrLockBusy, ids[busy]))
		}
		if req.Queued {
			err = s.poll(qctx, ctx, ids[busy:])
		} else {
			_, err = s.wait(qctx, ctx, ids[busy:])
		}
		if err != nil {
			return nil, s.undo(qctx, ids, l.fail(ctx, err))
		}
	}
	if s.session {
		return &sessionLease{q: req.Conn, ids: ids}, nil
	}
	if isolation == repeatableRead {
		// The snapshot was fixed by the lock statement, before the lock
		// was held. If we waited, the holder has since committed; if not,
		// one may have committed between the snapshot and the lock.
		stale := busy >= 0
		if !stale {
			if stale, err = snapshotStale(qctx, req.Conn); err != nil {
				return nil, l.fail(ctx, err)
			}
		}
		if stale {
			return nil, errStaleSnapshot
		}
	}
	return noLease{}, nil
}

// ids returns the distinct lock ids of keys, ascending: the order in which
// every Acquire takes them, so that two never deadlock.
func (l *Locker) ids(keys []string) ([]int64, error) {
	ids := make([]int64, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, ID(l.cfg.namespace, k))
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > l.cfg.maxKeys {
		return nil, fmt.Errorf("%w: advisorylock: %d keys in one run, at most %d (WithMaxKeys)", txlock.ErrInvalid, len(ids), l.cfg.maxKeys)
	}
	return ids, nil
}

// graceContext returns a context that ends with ctx, except that when ctx
// ends by its deadline it ends graceAfterTimeout later.
func graceContext(ctx context.Context) (context.Context, func()) {
	qctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var mu sync.Mutex
	var grace *time.Timer
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			mu.Lock()
			grace = time.AfterFunc(graceAfterTimeout, cancel)
			mu.Unlock()
			return
		}
		cancel()
	})
	return qctx, func() {
		stop()
		mu.Lock()
		if grace != nil {
			grace.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// errStaleSnapshot makes Run retry: under REPEATABLE READ a snapshot taken
// before the lock may miss the previous holder's writes, and only a new
// transaction gets a new snapshot. Nothing was lost: it is a serialization
// failure, and says so to Run's classifier through its SQLState.
var errStaleSnapshot error = staleSnapshotError{}

type staleSnapshotError struct{}

func (staleSnapshotError) Error() string {
	return "advisorylock: serialization failure: the transaction's snapshot was taken before its advisory lock was held " +
		"(a lock taken inside a REPEATABLE READ transaction cannot see what the previous holder committed); " +
		"the transaction must run again with a new snapshot"
}

// SQLState reports serialization_failure, which Run retries.
func (staleSnapshotError) SQLState() string { return sqladapter.CodeSerializationFailure }

func (l *Locker) fail(ctx context.Context, err error) error {
	if code, ok := sqladapter.SQLState(err); ok {
		switch code {
		case sqladapter.CodeLockNotAvailable:
			return fmt.Errorf("%w: advisory lock wait timed out: %w", txlock.ErrLockBusy, err)
		case "42883": // undefined_function: a server that talks Postgres but has no advisory locks
			return fmt.Errorf("%w: advisorylock: this database has no advisory locks (they need PostgreSQL): %w", txlock.ErrInvalid, err)
		}
	} else if ctx.Err() == nil && !sqladapter.IsConnError(err) && !errors.Is(err, sql.ErrTxDone) && !errors.Is(err, sql.ErrConnDone) {
		// Not a Postgres error, not a broken connection: another database.
		return fmt.Errorf("%w: advisorylock: advisory locks need PostgreSQL: %w", txlock.ErrInvalid, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("advisorylock: %w (%w)", ctx.Err(), err)
	}
	return fmt.Errorf("advisorylock: %w", err)
}

// Statements. The try statements take every lock in array order without
// waiting and stop at the first busy one (unnest keeps the order, LIMIT 1
// stops the scan), returning its 1-based position or 0; the one-key forms
// are cheaper for the server. They also return the isolation level, which
// decides whether staleQuery must run. Locks before a busy one stay held:
// a transaction-level lock cannot be given back early, and taking it again
// later only raises its count; session-level ones are undone.
const (
	tryOneXact = `SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 0 ELSE 1 END,
	current_setting('transaction_isolation')`
	tryXact = `SELECT coalesce((SELECT i FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, i)
		WHERE NOT pg_try_advisory_xact_lock(id) LIMIT 1), 0),
	current_setting('transaction_isolation')`
	tryOneSession = `SELECT CASE WHEN pg_try_advisory_lock($1) THEN 0 ELSE 1 END, ''`
	trySession    = `SELECT coalesce((SELECT i FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, i)
		WHERE NOT pg_try_advisory_lock(id) LIMIT 1), 0), ''`

	// The wait statements set lock_timeout for the wait, take the locks in
	// array order, and put lock_timeout back, in one round trip, so that
	// a waiter that gets its lock goes straight on. The inner select's
	// target list is evaluated left to right (OFFSET 0 keeps it from being
	// merged into the outer one): read the old timeout, set the new one,
	// then wait for the locks (the scalar subquery is evaluated when its
	// column is reached). The outer select restores the old value.
	// set_config(..., true) lasts until the end of the transaction, which
	// outside a transaction block is this statement's own. If the wait
	// times out, the statement fails with 55P03.
	waitXact = `SELECT set_config('lock_timeout', old, true), current_setting('transaction_isolation') FROM (
	SELECT current_setting('lock_timeout') AS old,
		set_config('lock_timeout', $2, true) AS new,
		(SELECT count(*) FROM (SELECT pg_advisory_xact_lock(id) FROM unnest($1::bigint[]) AS t(id)) AS l) AS n
	OFFSET 0) AS s`
	waitSession = `SELECT set_config('lock_timeout', old, true), '' FROM (
	SELECT current_setting('lock_timeout') AS old,
		set_config('lock_timeout', $2, true) AS new,
		(SELECT count(*) FROM (SELECT pg_advisory_lock(id) FROM unnest($1::bigint[]) AS t(id)) AS l) AS n
	OFFSET 0) AS s`

	// unlockSession gives session locks back and counts those that were
	// not held.
	unlockSession = `SELECT count(*) FILTER (WHERE NOT pg_advisory_unlock(id)) FROM unnest($1::bigint[]) AS t(id)`
)

// staleQuery runs under REPEATABLE READ only, right after locks taken
// inside the transaction. The transaction's snapshot was fixed when the
// lock statement started, before the lock was held. It reports whether
// any transaction that could have held the lock before us committed after
// that snapshot: one that was in progress then, or one that started since
// (whose ids lie between the snapshot's xmax and ours). It can say yes for
// a transaction that never touched our keys; that costs a retry, never a
// duplicate.
const staleQuery = `SELECT
	EXISTS (SELECT 1 FROM pg_snapshot_xip(pg_current_snapshot()) AS x
		WHERE pg_xact_status(x) = 'committed')
	OR EXISTS (SELECT 1 FROM generate_series(
			pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
			pg_current_xact_id()::text::bigint - 1) AS g
		WHERE pg_xact_status(g::text::xid8) = 'committed')`

const repeatableRead = "repeatable read"

// stmts runs the lock statements of one Acquire: session-level or
// transaction-level.
type stmts struct {
	q       txlock.Querier
	session bool
}

// try tries the locks. busy is the index of the first busy lock, or -1.
func (s stmts) try(ctx context.Context, ids []int64) (busy int, isolation string, err error) {
	one, many := tryOneXact, tryXact
	if s.session {
		one, many = tryOneSession, trySession
	}
	var first int64
	if len(ids) == 1 {
		err = s.q.QueryRow(ctx, one, ids[0]).Scan(&first, &isolation)
	} else {
		err = s.q.QueryRow(ctx, many, arrayLiteral(ids)).Scan(&first, &isolation)
	}
	if err != nil {
		return 0, "", err
	}
	return int(first) - 1, isolation, nil
}

// waitLeft reports whether the wait that ctx bounds has time left.
func waitLeft(ctx context.Context) bool {
	deadline, ok := ctx.Deadline()
	return !ok || time.Until(deadline) > 0
}

// wait takes the locks, waiting at most until waitCtx's deadline, or
// without a timeout when waitCtx has no deadline.
func (s stmts) wait(ctx, waitCtx context.Context, ids []int64) (isolation string, err error) {
	timeout := "0" // Postgres: no timeout
	if deadline, ok := waitCtx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return "", fmt.Errorf("%w: advisory lock %d", txlock.ErrLockBusy, ids[0])
		}
		timeout = strconv.FormatInt(max(min(left, maxLockTimeout).Milliseconds(), 1), 10) + "ms"
	}
	q := waitXact
	if s.session {
		q = waitSession
	}
	var restored string
	err = s.q.QueryRow(ctx, q, arrayLiteral(ids), timeout).Scan(&restored, &isolation)
	return isolation, err
}

// Polling bounds: the pause between two tries of a busy lock starts at
// pollMin and doubles up to pollMax, jittered.
const (
	pollMin = time.Millisecond
	pollMax = 20 * time.Millisecond
)

// poll takes the locks by trying them again and again until waitCtx ends,
// instead of waiting in Postgres's queue, where a lock can be granted to a
// waiter whose client has stopped (see txlock.Request.Queued). Each lock is
// taken once: a try stops at the first busy one, and the next starts there.
func (s stmts) poll(ctx, waitCtx context.Context, ids []int64) error {
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for delay := pollMin; ; delay = min(2*delay, pollMax) {
		t.Reset(delay/2 + rand.N(delay/2+1))
		select {
		case <-waitCtx.Done():
			return fmt.Errorf("%w (%w: advisory lock %d)", waitCtx.Err(), txlock.ErrLockBusy, ids[0])
		case <-t.C:
		}
		busy, _, err := s.try(ctx, ids)
		if err != nil {
			return err
		}
		if busy < 0 {
			return nil
		}
		ids = ids[busy:]
	}
}

// undo gives back the session locks a failed Acquire may hold, and
// returns err. If that fails, the error no longer wraps ErrLockBusy, and
// Run closes the connection, which ends the session and its locks.
func (s stmts) undo(ctx context.Context, ids []int64, err error) error {
	if !s.session {
		return err // transaction-level: the rollback ends them
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	var notHeld int64
	if uerr := s.q.QueryRow(ctx, unlockSession, arrayLiteral(ids)).Scan(&notHeld); uerr != nil {
		return fmt.Errorf("advisorylock: %w; then giving back the session locks taken before it failed: %w", err, uerr)
	}
	return err
}

func snapshotStale(ctx context.Context, q txlock.Querier) (bool, error) {
	var stale bool
	err := q.QueryRow(ctx, staleQuery).Scan(&stale)
	return stale, err
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

// noLease holds transaction-level locks: Postgres ends them with the
// transaction.
type noLease struct{}

// Verify succeeds: an advisory lock cannot be lost while its transaction
// lives, and if the session dies the transaction dies with it.
func (noLease) Verify(context.Context) error { return nil }

// Release does nothing: COMMIT or ROLLBACK has already released the locks.
func (noLease) Release(context.Context) error { return nil }

// sessionLease holds session-level locks on one connection.
type sessionLease struct {
	q   txlock.Querier
	ids []int64
}

// Verify succeeds: a session lock lasts as long as its session.
func (*sessionLease) Verify(context.Context) error { return nil }

// Release unlocks every lock on the connection. An error (the statement
// failed, or a lock was not held) makes Run close the connection.
func (s *sessionLease) Release(ctx context.Context) error {
	var notHeld int64
	if err := s.q.QueryRow(ctx, unlockSession, arrayLiteral(s.ids)).Scan(&notHeld); err != nil {
		return fmt.Errorf("advisorylock: unlock: %w", err)
	}
	if notHeld != 0 {
		return fmt.Errorf("advisorylock: unlock: %d of %d session locks were not held", notHeld, len(s.ids))
	}
	return nil
}
