package main

import (
	"hash/crc32"
	"strconv"
	"strings"

	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/retry"
)

const childEnv = "TXLOCKBENCH_CHILD"

// job is one process's share of a row.
type job struct {
	Mode        string
	DB          string
	MC          string
	Proc        int
	HotWorkers  int
	ColdWorkers int
	Pool        int // max open connections, 0 = unlimited
	Work        time.Duration
	Start       time.Time // all processes start together
	Duration    time.Duration
}

// tally is what a group of workers measured.
type tally struct {
	Commits  int // runs that committed before the row's time was up
	Late     int // runs that committed after it, while the queue drained
	Attempts int
	Errors   int
	FirstErr string
	Lat      []float64 // seconds, one per commit, late ones included
}

// record notes one run that started at start and ended now with err
// after attempts. A commit after the deadline counts in latencies, aborts
// and the loss check, not in the row's rate: with 32 workers queued on one
// key, the queue that drains after the deadline would add its commits to
// a time they were not made in.
func (t *tally) record(start, deadline time.Time, attempts int, err error) {
	now := time.Now()
	t.Attempts += attempts
	switch {
	case err != nil:
		t.Errors++
		if t.FirstErr == "" {
			t.FirstErr = err.Error()
		}
		return
	case now.After(deadline):
		t.Late++
	default:
		t.Commits++
	}
	t.Lat = append(t.Lat, now.Sub(start).Seconds())
}

// committed is every commit, late ones included.
func (t *tally) committed() int { return t.Commits + t.Late }

func (t *tally) merge(o tally) {
	t.Commits += o.Commits
	t.Late += o.Late
	t.Attempts += o.Attempts
	t.Errors += o.Errors
	if t.FirstErr == "" {
		t.FirstErr = o.FirstErr
	}
	t.Lat = append(t.Lat, o.Lat...)
}

type report struct {
	Hot, Cold tally
	// WindowCPU is the machine's busy CPU seconds from the row's start to
	// its deadline, as process 0 read them: the processes' start-up, their
	// connections and the drain stay out of it.
	WindowCPU float64
}

func childMain() int {
	var j job
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &j); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	r, err := runJob(context.Background(), j)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 1
	}
	return 0
}

// runProcs runs a row over procs processes (procs == 1 runs in this one)
// and merges what they measured.
func runProcs(ctx context.Context, j job, procs int) (report, error) {
	j.Start = time.Now().Add(300 * time.Millisecond)
	if procs <= 1 {
		return runJob(ctx, j)
	}
	self, err := os.Executable()
	if err != nil {
		return report{}, err
	}
	hot, cold := j.HotWorkers, j.ColdWorkers
	j.Start = time.Now().Add(time.Second) // children need time to start
	var wg sync.WaitGroup
	reports := make([]report, procs)
	errs := make([]error, procs)
	for p := range procs {
		pj := j
		pj.Proc = p
		pj.HotWorkers = share(hot, procs, p)
		pj.ColdWorkers = share(cold, procs, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _ := json.Marshal(pj)
			cmd := exec.CommandContext(ctx, self)
			cmd.Env = append(os.Environ(), childEnv+"="+string(b))
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				errs[p] = fmt.Errorf("process %d: %w", p, err)
				return
			}
			errs[p] = json.Unmarshal(out, &reports[p])
		}()
	}
	wg.Wait()
	var r report
	for p := range procs {
		if errs[p] != nil {
			return r, errs[p]
		}
		r.Hot.merge(reports[p].Hot)
		r.Cold.merge(reports[p].Cold)
	}
	r.WindowCPU = reports[0].WindowCPU
	return r, nil
}

func share(n, parts, i int) int {
	s := n / parts
	if i < n%parts {
		s++
	}
	return s
}

func runJob(ctx context.Context, j job) (report, error) {
	if pgxMode(j.Mode) {
		return runPgxJob(ctx, j)
	}
	db, err := sql.Open("pgx", j.DB)
	if err != nil {
		return report{}, err
	}
	defer db.Close()
	if j.Pool > 0 {
		db.SetMaxOpenConns(j.Pool)
		db.SetMaxIdleConns(j.Pool)
	} else {
		db.SetMaxIdleConns(j.HotWorkers + j.ColdWorkers)
	}
	lockOpts, err := lockers(j.Mode, j.MC)
	if err != nil {
		return report{}, err
	}
	// Open, and keep idle, a connection for every worker (or the whole
	// pool), so that connection set-up is not measured: holding them all
	// at once makes them distinct.
	warm := j.HotWorkers + j.ColdWorkers
	if j.Pool > 0 {
		warm = min(warm, j.Pool)
	}
	if err := warmSQL(ctx, db, warm); err != nil {
		return report{}, err
	}

	time.Sleep(time.Until(j.Start))
	deadline := j.Start.Add(j.Duration)
	var mu sync.Mutex
	var r report
	windowCPU := measureWindow(j, deadline)
	var wg sync.WaitGroup
	var seq atomic.Int64
	worker := func(hot bool, w int) {
		defer wg.Done()
		var t tally
		// The local-conns row: every worker runs on a connection of its
		// own, as advisory waiters do (each holds one while it waits), so
		// the key moves to another backend with every commit.
		var b txlock.Beginner = db
		if j.Mode == "local-conns" {
			c, err := db.Conn(ctx)
			if err != nil {
				mu.Lock()
				r.Hot.Errors++
				mu.Unlock()
				return
			}
			defer c.Close()
			b = c
		}
		for time.Now().Before(deadline) {
			name := "hot"
			if !hot {
				name = fmt.Sprintf("cold-%d-%d-%d", j.Proc, w, seq.Add(1))
			}
			start := time.Now()
			attempts, err := one(ctx, db, b, j, lockOpts, name, hot)
			t.record(start, deadline, attempts, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if hot {
			r.Hot.merge(t)
		} else {
			r.Cold.merge(t)
		}
	}
	for w := range j.HotWorkers {
		wg.Add(1)
		go worker(true, w)
	}
	for w := range j.ColdWorkers {
		wg.Add(1)
		go worker(false, w)
	}
	wg.Wait()
	r.WindowCPU = windowCPU()
	return r, nil
}

// measureWindow starts reading the machine's busy CPU, in process 0 only,
// now (the row's start) until deadline. The function it returns gives the
// seconds, waiting for the deadline if need be; call it once the workers
// are done.
func measureWindow(j job, deadline time.Time) func() float64 {
	if j.Proc != 0 {
		return func() float64 { return 0 }
	}
	cpu := make(chan float64, 1)
	cpu0 := cpuBusy()
	time.AfterFunc(time.Until(deadline), func() { cpu <- cpuBusy() - cpu0 })
	return func() float64 { return <-cpu }
}

// warmSQL opens n connections of db and returns them to its idle pool.
func warmSQL(ctx context.Context, db *sql.DB, n int) error {
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
		if err := c.PingContext(ctx); err != nil {
			return err
		}
	}
	return nil
}

var serializable = &sql.TxOptions{Isolation: sql.LevelSerializable}

// one runs a single reservation in the row's mode and returns how many
// attempts it took. Run gets b: db, or the worker's own connection.
func one(ctx context.Context, db *sql.DB, b txlock.Beginner, j job, lockOpts []txlock.Option, name string, hot bool) (int, error) {
	body := func(ctx context.Context, tx *sql.Tx) error {
		if hot {
			return rotate(ctx, tx, name, j.Work)
		}
		return reserve(ctx, tx, name)
	}
	if n, ok := floorTrips(j.Mode); ok {
		// The floor: a bare transaction plus n memcached round trips, as
		// raw gomemcache calls, which is what a memcached lock cannot do
		// with fewer.
		for i := range n {
			if _, err := floorClient(j.MC).Get("floor:" + name + ":" + strconv.Itoa(i)); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
				return 1, err
			}
		}
	}
	if j.Mode == "bare+mclock" {
		return 1, rawMemcachedLock(ctx, db, floorClient(j.MC), name, body)
	}
	if j.Mode == "bare+advlock" {
		// The floor of the advisory locker: its lock statement, raw, as
		// the first statement of a bare transaction.
		plain := body
		body = func(ctx context.Context, tx *sql.Tx) error {
			var busy int
			var isolation string
			if err := tx.QueryRowContext(ctx, rawAdvisoryLock, int64(crc32.ChecksumIEEE([]byte(name)))).Scan(&busy, &isolation); err != nil {
				return err
			}
			return plain(ctx, tx)
		}
	}
	if j.Mode == "bare+stmt1" {
		// The floor of a lock taken inside the transaction: one more
		// trivial statement in a bare transaction.
		plain := body
		body = func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			return plain(ctx, tx)
		}
	}
	if j.Mode == "bare" || j.Mode == "bare-cancellable" || strings.HasPrefix(j.Mode, "bare+") {
		if j.Mode == "bare-cancellable" {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return 1, err
		}
		if err := body(ctx, tx); err != nil {
			_ = tx.Rollback()
			return 1, err
		}
		return 1, tx.Commit()
	}
	attempts := 0
	opts := append(slices.Clip(lockOpts),
		txlock.WithMaxAttempts(1000),
		txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, _ txlock.Event) { attempts++ }}))
	var keys []string
	if j.Mode == "retry-only" {
		opts = append(opts, txlock.WithTxOptions(serializable), txlock.WithBackoff(retry.Default))
	} else {
		keys = []string{"name:" + name}
	}
	err := txlock.Run(ctx, b, keys, body, opts...)
	return attempts, err
}

// rawAdvisoryLock is advisorylock's statement for one key at READ
// COMMITTED.
const rawAdvisoryLock = `SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 0 ELSE 1 END, current_setting('transaction_isolation')`

// rawMemcachedLock is the floor of the memcached locker: the three round
// trips its uncontended Run makes, as raw gomemcache calls at the same
// points (add before BEGIN, gets before COMMIT, CAS to expired after it),
// with none of its bookkeeping.
func rawMemcachedLock(ctx context.Context, db *sql.DB, c *memcache.Client, name string, body func(context.Context, *sql.Tx) error) error {
	k := "floor:lock:" + name
	if err := c.Add(&memcache.Item{Key: k, Value: []byte("H owner-token"), Expiration: 30}); err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := body(ctx, tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	it, err := c.Get(k)
	if err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	it.Value, it.Expiration = []byte("X"), -1
	return c.CompareAndSwap(it)
}

var errTaken = errors.New("name taken")

// reserve is the uncontended check-then-insert.
func reserve(ctx context.Context, tx *sql.Tx, name string) error {
	var active bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM bench_names WHERE name = $1 AND expires_at > now())`, name).Scan(&active); err != nil {
		return err
	}
	if active {
		return errTaken
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO bench_names (name, owner, expires_at) VALUES ($1, 'bench', now() + interval '1 hour')`, name)
	return err
}

// rotate is the hot-key body: read the active reservation, spend work of
// CPU (the expensive work a conflict wastes), expire it, insert the next.
func rotate(ctx context.Context, tx *sql.Tx, name string, work time.Duration) error {
	var id int64
	err := tx.QueryRowContext(ctx, `SELECT id FROM bench_names WHERE name = $1 AND expires_at > now() ORDER BY id DESC LIMIT 1`, name).Scan(&id)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	spin(work)
	if id != 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE bench_names SET expires_at = now() WHERE id = $1`, id); err != nil {
			return err
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO bench_names (name, owner, expires_at) VALUES ($1, 'bench', now() + interval '1 hour')`, name)
	return err
}

func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// floorTrips reads the n of a floor mode, "bare+mcN".
func floorTrips(mode string) (int, bool) {
	rest, ok := strings.CutPrefix(mode, "bare+mc")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n > 0
}

var floorMC struct {
	sync.Once
	c *memcache.Client
}

// floorClient is the process's client for the floor modes, configured as
// the lockers' clients are.
func floorClient(addr string) *memcache.Client {
	floorMC.Do(func() {
		floorMC.c = memcache.New(addr)
		floorMC.c.Timeout = 500 * time.Millisecond
		floorMC.c.MaxIdleConns = 64
	})
	return floorMC.c
}
