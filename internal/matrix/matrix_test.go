// Package matrix_test proves txlock's correctness model (locks for
// throughput, the transaction for truth) against the real PostgreSQL: a hot check-then-insert of reusable names keeps exactly
// one active reservation per name, and loses no acknowledged one, at every
// isolation level with every locker. The same harness shows that it can
// fail: the naive check-then-insert (no transaction, no lock) and an
// advisory lock taken as the first statement of a REPEATABLE READ body
// (without advisorylock's snapshot check) both produce duplicates.
//
// Workers run in several OS processes (this test binary, re-executed with
// -test.run=^TestMatrixChild$) for every locker that spans processes; the
// in-process locker guards one process, so its rows run in one. All
// workers of a row start together: each child connects, reports "ready",
// and waits for the parent's "go" on stdin.
//
// Which locker when (see also the advisorylock and memcachelock docs):
//
//   - in-process: one process only; tests and single-server apps.
//   - memcached: waiters queue outside the database and hold no
//     connection; the lock is soft (eviction, restart, a paused holder), so
//     at READ COMMITTED and REPEATABLE READ it is the only thing that
//     serializes the writers: zero duplicates in a fault-free run, but the
//     guarantee under faults needs one of the two below.
//   - advisory: a guarantee held by the database, released exactly at
//     transaction end; every waiter holds a connection.
//   - memcached+advisory: a queue outside the database and a guarantee
//     inside it.
//   - retry-only (SERIALIZABLE, no keys): the database detects the conflict
//     and Run redoes the loser's work.
//
// Every row that must hold runs twice, once per driver: through
// database/sql (txlock.Run on a *sql.DB with pgx's stdlib driver) and
// through pgx itself (txlockpgx.Run on a *pgxpool.Pool), with the same
// body, the same invariants and the same verdicts. The controls run
// through database/sql only: they test the harness, not a driver.
//
// Run it:
//
//	CI=true go test -race -count=1 -v -run TestMatrix ./internal/matrix/   # short form, in CI
//	TXLOCK_MATRIX=long go test -count=1 -v -run TestMatrix ./internal/matrix/
package matrix_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/memcachelock"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/retry"
	"github.com/txlock/txlock/sqladapter"
	"github.com/txlock/txlock/txlockpgx"
)

// Lockers of the matrix. The last two are the controls that must fail.
const (
	local      = "local"
	memcached  = "memcached"
	advisory   = "advisory"
	combined   = "memcached+advisory"
	retryOnly  = "retry-only"
	naive      = "naive"
	rawAdvisor = "raw-advisory"
)

// Drivers of the matrix: how the workers reach Postgres.
const (
	viaSQL = "database/sql" // txlock.Run on a *sql.DB (pgx's stdlib driver)
	viaPgx = "pgx"          // txlockpgx.Run on a *pgxpool.Pool
)

// Environment of a child process (TestMatrixChild).
const (
	envDriver  = "TXLOCK_MATRIX_DRIVER"
	envDB      = "TXLOCK_MATRIX_DB"
	envMC      = "TXLOCK_MATRIX_MEMCACHED"
	envLocker  = "TXLOCK_MATRIX_LOCKER"
	envLevel   = "TXLOCK_MATRIX_LEVEL"
	envNames   = "TXLOCK_MATRIX_NAMES" // JSON array: a name may hold any byte
	envWorkers = "TXLOCK_MATRIX_WORKERS"
	envPrefix  = "TXLOCK_MATRIX_PREFIX"

	readyLine  = "matrix: ready"
	resultMark = "matrix-result: "
)

// cell is one row of the matrix as one process runs it.
type cell struct {
	Level   string // read committed | repeatable read | serializable | "" (naive)
	Locker  string
	Driver  string // viaSQL | viaPgx
	DB      string
	MC      string
	Prefix  string // separates the rows' memcached keys and advisory ids
	Names   []string
	Workers int // in this process
}

func (c cell) env() []string {
	names, _ := json.Marshal(c.Names)
	return []string{
		envDriver + "=" + c.Driver, envDB + "=" + c.DB, envMC + "=" + c.MC, envLocker + "=" + c.Locker, envLevel + "=" + c.Level,
		envNames + "=" + string(names), envWorkers + "=" + strconv.Itoa(c.Workers), envPrefix + "=" + c.Prefix,
	}
}

func cellFromEnv() (cell, error) {
	c := cell{Driver: os.Getenv(envDriver), DB: os.Getenv(envDB), MC: os.Getenv(envMC), Locker: os.Getenv(envLocker),
		Level: os.Getenv(envLevel), Prefix: os.Getenv(envPrefix)}
	if err := json.Unmarshal([]byte(os.Getenv(envNames)), &c.Names); err != nil {
		return c, fmt.Errorf("%s: %w", envNames, err)
	}
	n, err := strconv.Atoi(os.Getenv(envWorkers))
	if err != nil {
		return c, fmt.Errorf("%s: %w", envWorkers, err)
	}
	c.Workers = n
	return c, nil
}

// outcome is what one process's workers saw.
type outcome struct {
	Acked    []int64 // ids of reservations whose Run returned nil
	Taken    int     // runs that found the name active and committed nothing
	Attempts int     // every attempt of every Run, counted by WithObserver
	// Retries by cause: serialization failure (40001), a lock lost or a
	// stale REPEATABLE READ snapshot (advisorylock), anything else.
	Serialization, Lost, OtherRetries int
	Errors                            []string
}

func (o *outcome) add(p outcome) {
	o.Acked = append(o.Acked, p.Acked...)
	o.Taken += p.Taken
	o.Attempts += p.Attempts
	o.Serialization += p.Serialization
	o.Lost += p.Lost
	o.OtherRetries += p.OtherRetries
	o.Errors = append(o.Errors, p.Errors...)
}

var levels = map[string]sql.IsolationLevel{
	"read committed":  sql.LevelReadCommitted,
	"repeatable read": sql.LevelRepeatableRead,
	"serializable":    sql.LevelSerializable,
}

// TestMatrixChild is one worker process of TestMatrix; run on its own it
// skips.
func TestMatrixChild(t *testing.T) {
	if os.Getenv(envLocker) == "" {
		t.Skip("a worker process of TestMatrix")
	}
	c, err := cellFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	db := open(t, c)
	defer db.close()
	gate := make(chan struct{})
	done := make(chan outcome, 1)
	go func() { done <- work(context.Background(), db, c, gate) }()
	db.warm(t, c.Workers)
	fmt.Println(readyLine)
	// The parent writes one line when every process is ready.
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("waiting for the start signal: %v", err)
	}
	close(gate)
	b, err := json.Marshal(<-done)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(resultMark + string(b))
}

// conns reaches Postgres through a row's driver: a *sql.DB, or a
// *pgxpool.Pool.
type conns struct {
	db   *sql.DB
	pool *pgxpool.Pool
}

// open opens c's database through c's driver, with room for all of c's
// workers.
func open(t testing.TB, c cell) conns {
	t.Helper()
	if c.Driver != viaPgx {
		db, err := sql.Open("pgx", c.DB)
		if err != nil {
			t.Fatal(err)
		}
		return conns{db: db}
	}
	cfg, err := pgxpool.ParseConfig(c.DB)
	if err != nil {
		t.Fatal(err)
	}
	// pgxpool's default (at least 4, else one per CPU) would queue the
	// workers in the pool rather than in the lockers.
	cfg.MaxConns = int32(c.Workers + 2)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return conns{pool: pool}
}

func (k conns) close() {
	if k.pool != nil {
		k.pool.Close()
		return
	}
	_ = k.db.Close()
}

// warm opens n connections, so that the barrier is not followed by a
// burst of connection setups that would spread the workers' start.
func (k conns) warm(t testing.TB, n int) {
	t.Helper()
	if k.pool != nil {
		held := make([]*pgxpool.Conn, 0, n)
		for range n {
			c, err := k.pool.Acquire(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		for _, c := range held {
			c.Release()
		}
		return
	}
	k.db.SetMaxIdleConns(n + 2)
	held := make([]*sql.Conn, 0, n)
	for range n {
		c, err := k.db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	for _, c := range held {
		_ = c.Close()
	}
}

// counter is a WithObserver that counts attempts and why they failed. It
// is shared by all workers of a process.
type counter struct{ attempts, serialization, lost, other atomic.Int64 }

func (k *counter) observe(_ context.Context, _ txlock.RunInfo, ev txlock.Event) {
	k.attempts.Add(1)
	if !ev.Retry {
		return
	}
	code, _ := sqladapter.SQLState(ev.Err)
	switch {
	case code == sqladapter.CodeSerializationFailure:
		k.serialization.Add(1)
	case errors.Is(ev.Err, txlock.ErrLockLost):
		k.lost.Add(1)
	default:
		k.other.Add(1)
	}
}

func options(c cell, k *counter) []txlock.Option {
	mc := func() txlock.Locker {
		return memcachelock.New(memcache.New(c.MC), memcachelock.WithPrefix(c.Prefix))
	}
	adv := func() txlock.Locker { return advisorylock.New(advisorylock.WithNamespace(c.Prefix)) }
	opts := []txlock.Option{
		txlock.WithMaxAttempts(200),
		txlock.WithBackoff(retry.Exponential{Base: time.Millisecond, Max: 50 * time.Millisecond}),
		txlock.WithObserver(txlock.Observer{AttemptDone: k.observe}),
	}
	if lv, ok := levels[c.Level]; ok {
		opts = append(opts, txlock.WithTxOptions(&sql.TxOptions{Isolation: lv}))
	}
	switch c.Locker {
	case local:
		opts = append(opts, txlock.WithLocker(txlock.NewLocalLocker()))
	case memcached:
		opts = append(opts, txlock.WithLocker(mc()))
	case advisory:
		opts = append(opts, txlock.WithLocker(adv()))
	case combined:
		opts = append(opts, txlock.WithLocker(mc(), adv()))
	}
	return opts
}

// work runs c.Workers workers in this process once gate is closed; each
// reserves every name of c.Names, in the same order.
func work(ctx context.Context, db conns, c cell, gate <-chan struct{}) outcome {
	var k counter
	opts := options(c, &k)
	var mu sync.Mutex
	var out outcome
	var wg sync.WaitGroup
	for w := range c.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("p%d-w%d", os.Getpid(), w)
			<-gate
			for _, name := range c.Names {
				id, taken, err := reserve(ctx, db, c, opts, name, owner)
				mu.Lock()
				switch {
				case err != nil:
					out.Errors = append(out.Errors, err.Error())
				case taken:
					out.Taken++
				default:
					out.Acked = append(out.Acked, id)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	out.Attempts = int(k.attempts.Load())
	out.Serialization, out.Lost, out.OtherRetries = int(k.serialization.Load()), int(k.lost.Load()), int(k.other.Load())
	if c.Locker == naive {
		out.Attempts = len(out.Acked) + out.Taken + len(out.Errors)
	}
	return out
}

const (
	qActive = `SELECT EXISTS (SELECT 1 FROM name_reservations WHERE name = $1 AND expires_at > now())`
	qInsert = `INSERT INTO name_reservations (name, owner, expires_at) VALUES ($1, $2, now() + interval '1 hour') RETURNING id`
)

// querier is what the body needs of a transaction, whichever the driver.
type querier interface {
	exec(ctx context.Context, query string, args ...any) error
	queryRow(ctx context.Context, query string, args ...any) interface{ Scan(...any) error }
}

type sqlTx struct{ tx *sql.Tx }

func (q sqlTx) exec(ctx context.Context, query string, args ...any) error {
	_, err := q.tx.ExecContext(ctx, query, args...)
	return err
}

func (q sqlTx) queryRow(ctx context.Context, query string, args ...any) interface{ Scan(...any) error } {
	return q.tx.QueryRowContext(ctx, query, args...)
}

type pgxTx struct{ tx pgx.Tx }

func (q pgxTx) exec(ctx context.Context, query string, args ...any) error {
	_, err := q.tx.Exec(ctx, query, args...)
	return err
}

func (q pgxTx) queryRow(ctx context.Context, query string, args ...any) interface{ Scan(...any) error } {
	return q.tx.QueryRow(ctx, query, args...)
}

// reserve is the example's check-then-insert. taken reports that the name
// was active; that run commits nothing but still commits.
func reserve(ctx context.Context, db conns, c cell, opts []txlock.Option, name, owner string) (id int64, taken bool, err error) {
	if c.Locker == naive {
		// The bug txlock exists for: check, then insert, no transaction, no lock.
		// The pause stands for the request's other work between the
		// two and makes the race show on every run. Only here: the
		// locked variants get no help from a widened window.
		if err := db.db.QueryRowContext(ctx, qActive, name).Scan(&taken); err != nil || taken {
			return 0, taken, err
		}
		time.Sleep(5 * time.Millisecond)
		return id, false, db.db.QueryRowContext(ctx, qInsert, name, owner).Scan(&id)
	}
	var keys []string
	if c.Locker != retryOnly && c.Locker != rawAdvisor {
		keys = []string{"name:" + name}
	}
	body := func(ctx context.Context, tx querier) error {
		id, taken = 0, false
		if c.Locker == rawAdvisor {
			// What a hand-written advisory lock looks like: the lock
			// is the body's first statement. At REPEATABLE READ that
			// statement also fixes the snapshot, before the wait.
			if err := tx.exec(ctx, `SELECT pg_advisory_xact_lock($1)`, advisorylock.ID(c.Prefix, "name:"+name)); err != nil {
				return err
			}
		}
		if err := tx.queryRow(ctx, qActive, name).Scan(&taken); err != nil || taken {
			return err
		}
		return tx.queryRow(ctx, qInsert, name, owner).Scan(&id)
	}
	if c.Driver == viaPgx {
		err = txlockpgx.Run(ctx, db.pool, keys, func(ctx context.Context, tx pgx.Tx) error {
			return body(ctx, pgxTx{tx})
		}, opts...)
	} else {
		err = txlock.Run(ctx, db.db, keys, func(ctx context.Context, tx *sql.Tx) error {
			return body(ctx, sqlTx{tx})
		}, opts...)
	}
	return id, taken, err
}

// runRow runs c with `procs` processes of c.Workers/procs workers each (1:
// in this process) and merges what they saw. seconds is from the start
// signal to the last worker's end.
func runRow(t *testing.T, c cell, procs int) (out outcome, seconds float64) {
	t.Helper()
	if procs <= 1 {
		// A pool for this row only: warm keeps c.Workers connections
		// idle, and the rows together would exhaust the server's.
		db := open(t, c)
		defer db.close()
		db.warm(t, c.Workers)
		gate := make(chan struct{})
		start := time.Now()
		done := make(chan outcome, 1)
		go func() { done <- work(context.Background(), db, c, gate) }()
		close(gate)
		out = <-done
		return out, time.Since(start).Seconds()
	}
	per := c
	per.Workers = c.Workers / procs
	type proc struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		stdout *bufio.Reader
	}
	ps := make([]proc, procs)
	for i := range ps {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMatrixChild$", "-test.count=1")
		// A race-enabled binary sleeps a second at exit unless told not
		// to; that is a second per row.
		cmd.Env = append(os.Environ(), append(per.env(), "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))...)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		ps[i] = proc{cmd, stdin, bufio.NewReader(stdout)}
	}
	for i, p := range ps {
		if _, err := readUntil(p.stdout, readyLine); err != nil {
			t.Fatalf("process %d never got ready: %v", i, err)
		}
	}
	start := time.Now()
	for _, p := range ps {
		_, _ = io.WriteString(p.stdin, "go\n")
	}
	outs := make([]outcome, procs)
	errs := make([]error, procs)
	ends := make([]time.Duration, procs)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, err := readUntil(p.stdout, resultMark)
			ends[i] = time.Since(start)
			if err == nil {
				err = json.Unmarshal([]byte(strings.TrimPrefix(line, resultMark)), &outs[i])
			}
			_, _ = io.Copy(io.Discard, p.stdout) // the test binary's PASS
			if werr := p.cmd.Wait(); err == nil {
				err = werr
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seconds = slices.Max(ends).Seconds()
	for i := range ps {
		if errs[i] != nil {
			t.Fatalf("process %d: %v", i, errs[i])
		}
		out.add(outs[i])
	}
	return out, seconds
}

// readUntil reads lines until one starts with prefix and returns it. The
// lines it skipped are in its error: a child's test failure is printed there.
func readUntil(r *bufio.Reader, prefix string) (string, error) {
	var skipped strings.Builder
	for {
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, prefix) {
			return strings.TrimSuffix(line, "\n"), nil
		}
		skipped.WriteString(line)
		if err != nil {
			return "", fmt.Errorf("no %q line (%w) in:\n%s", prefix, err, skipped.String())
		}
	}
}

type verdict struct {
	duplicates int // names with more than one active reservation
	missing    int // acknowledged reservations not in the table
	unacked    int // rows nobody acknowledged
	noneActive int // names nobody managed to reserve
}

func check(t *testing.T, db *sql.DB, names []string, acked []int64) verdict {
	t.Helper()
	var v verdict
	q := `SELECT count(*) FROM (SELECT name FROM name_reservations WHERE expires_at > now()
		GROUP BY name HAVING count(*) > 1) d`
	if err := db.QueryRow(q).Scan(&v.duplicates); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(`SELECT id FROM name_reservations`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		stored[id] = true
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	ackedSet := map[int64]bool{}
	for _, id := range acked {
		ackedSet[id] = true
		if !stored[id] {
			v.missing++
		}
	}
	for id := range stored {
		if !ackedSet[id] {
			v.unacked++
		}
	}
	var active int
	if err := db.QueryRow(`SELECT count(DISTINCT name) FROM name_reservations WHERE expires_at > now()`).Scan(&active); err != nil {
		t.Fatal(err)
	}
	v.noneActive = len(names) - active
	return v
}

type row struct {
	level, locker, driver string
	procs                 int
	mustFail              bool // a control: the harness must see duplicates
}

func matrixRows(procs int) []row {
	var rows []row
	for _, level := range []string{"read committed", "repeatable read", "serializable"} {
		for _, l := range []string{local, memcached, advisory, combined} {
			p := procs
			if l == local {
				p = 1 // it guards one process
			}
			for _, d := range []string{viaSQL, viaPgx} {
				rows = append(rows, row{level: level, locker: l, driver: d, procs: p})
			}
		}
	}
	return append(rows,
		row{level: "serializable", locker: retryOnly, driver: viaSQL, procs: procs},
		row{level: "serializable", locker: retryOnly, driver: viaPgx, procs: procs},
		row{level: "", locker: naive, driver: viaSQL, procs: procs, mustFail: true},
		row{level: "repeatable read", locker: rawAdvisor, driver: viaSQL, procs: procs, mustFail: true},
	)
}

func TestMatrix(t *testing.T) {
	names, workers, procs := 20, 16, 2
	if os.Getenv("TXLOCK_MATRIX") == "long" {
		names, workers, procs = 100, 32, 4
	}
	url := testenv.PostgresURL(t)
	db := testenv.OpenURL(t, url)
	if err := migrations.Up(context.Background(), db, migrations.Postgres); err != nil {
		t.Fatal(err)
	}
	mc := testenv.StartMemcached(t)
	nameList := make([]string, names)
	for i := range nameList {
		nameList[i] = fmt.Sprintf("name-%02d", i)
	}

	var table strings.Builder
	fmt.Fprintf(&table, "\n%-16s %-19s %-12s %5s %7s %10s %7s %6s %9s %12s %8s\n",
		"level", "locker", "driver", "procs", "workers", "duplicates", "missing", "errors",
		"att/commit", "40001/lost", "seconds")
	for i, r := range matrixRows(procs) {
		if _, err := db.Exec(`TRUNCATE name_reservations`); err != nil {
			t.Fatal(err)
		}
		c := cell{Level: r.level, Locker: r.locker, Driver: r.driver, DB: url, MC: mc.Addr(), Prefix: fmt.Sprintf("m%d:", i),
			Names: nameList, Workers: workers}
		out, secs := runRow(t, c, r.procs)
		v := check(t, db, nameList, out.Acked)
		commits := len(out.Acked) + out.Taken
		level := r.level
		if level == "" {
			level = "(none)"
		}
		fmt.Fprintf(&table, "%-16s %-19s %-12s %5d %7d %10d %7d %6d %9.3f %12s %8.2f\n",
			level, r.locker, r.driver, r.procs, workers, v.duplicates, v.missing, len(out.Errors),
			float64(out.Attempts)/float64(max(commits, 1)),
			fmt.Sprintf("%d/%d", out.Serialization, out.Lost), secs)

		name := level + "/" + r.locker + "/" + r.driver
		if r.mustFail {
			if v.duplicates == 0 {
				t.Errorf("%s produced no duplicates: the harness cannot tell right from wrong", name)
			}
			continue
		}
		if v.duplicates != 0 {
			t.Errorf("%s: %d names with more than one active reservation", name, v.duplicates)
		}
		if v.missing != 0 || v.unacked != 0 {
			t.Errorf("%s: %d acknowledged reservations missing, %d rows nobody acknowledged", name, v.missing, v.unacked)
		}
		if v.noneActive != 0 {
			t.Errorf("%s: %d names ended with no reservation", name, v.noneActive)
		}
		if len(out.Errors) > 0 {
			t.Errorf("%s: %d errors, first: %s", name, len(out.Errors), out.Errors[0])
		}
		if out.OtherRetries != 0 {
			t.Errorf("%s: %d retries for an unexpected cause", name, out.OtherRetries)
		}
		if got, want := commits+len(out.Errors), workers*names; got != want {
			t.Errorf("%s: %d outcomes, want %d", name, got, want)
		}
	}
	t.Log(table.String())
}
