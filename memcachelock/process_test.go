package memcachelock

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// Child processes: the test binary run again with helperEnv set to a mode.
// TestMain sends them to helperMain before any test runs.
const helperEnv = "MEMCACHELOCK_HELPER"

// helperConfig is what a parent tells its children, as JSON in an
// environment variable.
type helperConfig struct {
	Mode     string        // "exclusion" or "probe"
	Addr     string        // memcached
	DB       string        // Postgres URL
	Dir      string        // exclusion: where the occupied flag lives
	Key      string        // the hot key
	Workers  int           // goroutines in the child
	Runs     int           // exclusion: Runs per worker
	Until    time.Time     // probe: when to stop
	Work     time.Duration // probe: CPU work per body
	Handoffs int           // probe: WithHandoffLimit, 0 for the default
}

// helperResult is what a child prints on stdout.
type helperResult struct {
	Latencies []time.Duration // probe: one per committed Run, wait included
	Attempts  int
	Commits   int
	Err       string
}

func helperMain() int {
	var cfg helperConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	res := runHelper(cfg)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 2
	}
	if res.Err != "" {
		return 1
	}
	return 0
}

func runHelper(cfg helperConfig) (res helperResult) {
	switch cfg.Mode {
	case "hold":
		return holdUntilKilled(cfg)
	case "pause":
		return pausedHolder(cfg)
	}
	db, err := sql.Open("pgx", cfg.DB)
	if err != nil {
		return helperResult{Err: err.Error()}
	}
	defer db.Close()
	db.SetMaxOpenConns(cfg.Workers)
	db.SetMaxIdleConns(cfg.Workers)
	var opts []Option
	if cfg.Handoffs > 0 {
		opts = append(opts, WithHandoffLimit(cfg.Handoffs))
	}
	l := New(client(nil, cfg.Addr), opts...)
	var mu sync.Mutex
	var wg sync.WaitGroup
	fail := func(err error) {
		mu.Lock()
		if res.Err == "" {
			res.Err = err.Error()
		}
		mu.Unlock()
	}
	flag := filepath.Join(cfg.Dir, "occupied")
	body := func(ctx context.Context, tx *sql.Tx) error {
		if cfg.Mode == "exclusion" {
			f, err := os.OpenFile(flag, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if errors.Is(err, fs.ErrExist) {
				fail(errors.New("two holders at once: the occupied flag was set"))
			} else if err != nil {
				return err
			} else {
				f.Close()
				defer os.Remove(flag)
			}
		} else {
			spin(cfg.Work)
		}
		return increment(ctx, tx)
	}
	observer := txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, _ txlock.Event) {
		mu.Lock()
		res.Attempts++
		mu.Unlock()
	}})
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; cfg.Mode == "exclusion" && i < cfg.Runs || cfg.Mode == "probe" && time.Now().Before(cfg.Until); i++ {
				start := time.Now()
				if err := txlock.Run(context.Background(), db, []string{cfg.Key}, body, txlock.WithLocker(l), observer); err != nil {
					fail(err)
					return
				}
				d := time.Since(start)
				mu.Lock()
				res.Commits++
				res.Latencies = append(res.Latencies, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// spin burns d of CPU: the body's work.
func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// startHelpers runs n children with cfg and returns their results.
func startHelpers(t testing.TB, n int, cfg helperConfig) []helperResult {
	t.Helper()
	env, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	type out struct {
		res helperResult
		err error
	}
	outs := make(chan out, n)
	for i := 0; i < n; i++ {
		go func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
			cmd.Env = append(os.Environ(), helperEnv+"="+string(env))
			cmd.Stderr = os.Stderr
			b, err := cmd.Output()
			var r helperResult
			if jerr := json.Unmarshal(b, &r); jerr != nil && err == nil {
				err = fmt.Errorf("child output %q: %w", b, jerr)
			}
			if r.Err != "" {
				err = errors.New(r.Err)
			}
			outs <- out{r, err}
		}()
	}
	var rs []helperResult
	for i := 0; i < n; i++ {
		o := <-outs
		if o.err != nil {
			t.Errorf("child process: %v", o.err)
		}
		rs = append(rs, o.res)
	}
	return rs
}

// TestHelperProcess is where children start; run on its own it does nothing.
func TestHelperProcess(t *testing.T) {}

func TestExclusionAcrossProcesses(t *testing.T) {
	t.Parallel()
	m := testenv.StartMemcached(t)
	u := testenv.PostgresURL(t)
	db := testenv.OpenURL(t, u)
	if _, err := db.Exec(`CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	const procs, workers, runs = 4, 4, 20
	rs := startHelpers(t, procs, helperConfig{Mode: "exclusion", Addr: m.Addr(), DB: u, Dir: t.TempDir(),
		Key: "shared", Workers: workers, Runs: runs})
	commits := 0
	for _, r := range rs {
		commits += r.Commits
	}
	if n := count(t, db); n != procs*workers*runs || commits != n {
		t.Fatalf("counter = %d, commits = %d, want %d", n, commits, procs*workers*runs)
	}
	t.Logf("%d processes x %d workers: %s", procs, workers, strconv.Itoa(commits)+" commits, no overlap")
}

// holdUntilKilled takes cfg.Key with a 2 s lease, says so on stdout, and
// then waits to be killed: a worker that dies holding a lock.
func holdUntilKilled(cfg helperConfig) helperResult {
	l := New(client(nil, cfg.Addr), WithTTL(2*time.Second))
	if _, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{cfg.Key}, Lost: func(error) {}}); err != nil {
		return helperResult{Err: err.Error()}
	}
	fmt.Println("held")
	select {}
}

// TestHolderKilled: a process killed (SIGKILL) while it holds a lock
// leaves it behind no longer than its lease; then another takes it.
func TestHolderKilled(t *testing.T) {
	t.Parallel()
	m := testenv.StartMemcached(t)
	env, err := json.Marshal(helperConfig{Mode: "hold", Addr: m.Addr(), Key: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(env))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 5)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "held\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child did not take the lock: %q, %v", line, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()

	l := New(client(nil, m.Addr()))
	lost := func(error) {}
	if _, err := l.Acquire(context.Background(), txlock.Request{Keys: []string{"victim"}, TryOnce: true, Lost: lost}); !errors.Is(err, txlock.ErrLockBusy) {
		t.Fatalf("right after the kill: %v, want ErrLockBusy (the dead holder's lease still runs)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, err := l.Acquire(ctx, txlock.Request{Keys: []string{"victim"}, Lost: lost})
	if err != nil {
		t.Fatalf("the dead holder's lock outlived its lease: %v", err)
	}
	waited := time.Since(killed)
	if err := lease.Release(context.Background()); err != nil {
		t.Error(err)
	}
	// memcached expires at whole seconds, so a 2 s lease can last up to 3 s.
	if waited > 4*time.Second {
		t.Errorf("waited %v after the kill for a 2 s lease", waited)
	}
	t.Logf("lock of a killed holder taken over %v after the kill", waited.Round(time.Millisecond))
}

// pausedHolder runs one Run on cfg.Key with a 2 s lease whose first attempt
// says "inbody" on stdout and then dawdles, so that its parent can stop the
// process past the lease.
func pausedHolder(cfg helperConfig) helperResult {
	db, err := sql.Open("pgx", cfg.DB)
	if err != nil {
		return helperResult{Err: err.Error()}
	}
	defer db.Close()
	l := New(client(nil, cfg.Addr), WithTTL(2*time.Second))
	var res helperResult
	err = txlock.Run(context.Background(), db, []string{cfg.Key}, func(ctx context.Context, tx *sql.Tx) error {
		n := txlock.Attempt(ctx)
		res.Attempts = n
		if _, err := tx.ExecContext(ctx, `INSERT INTO writes VALUES ('child', $1)`, n); err != nil {
			return err
		}
		if n == 1 {
			fmt.Println("inbody")
			select {
			case <-ctx.Done(): // the refresher found the lock gone
				return ctx.Err()
			case <-time.After(6 * time.Second):
			}
		}
		return nil
	}, txlock.WithLocker(l), txlock.WithMaxAttempts(3))
	if err != nil {
		res.Err = err.Error()
	} else {
		res.Commits = 1
	}
	return res
}

// TestHolderPausedPastItsLease: a holder stopped (SIGSTOP) past its lease
// loses the lock to another process, and once resumed it must not commit
// under it: the attempt that was paused rolls back and the Run retries.
func TestHolderPausedPastItsLease(t *testing.T) {
	t.Parallel()
	m := testenv.StartMemcached(t)
	u := testenv.PostgresURL(t)
	db := testenv.OpenURL(t, u)
	if _, err := db.Exec(`CREATE TABLE writes (who text NOT NULL, attempt int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	env, err := json.Marshal(helperConfig{Mode: "pause", Addr: m.Addr(), DB: u, Key: "paused"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(env))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	line := make([]byte, 7)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "inbody\n" {
		t.Fatalf("child did not reach its body: %q, %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond) // the 2 s lease, and memcached's rounding up to the next second

	l := New(client(nil, m.Addr()))
	err = txlock.Run(context.Background(), db, []string{"paused"}, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO writes VALUES ('parent', 1)`)
		return err
	}, txlock.WithLocker(l), txlock.WithLockWait(3*time.Second))
	if err != nil {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		t.Fatalf("the lease of the stopped holder did not run out: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(stdout)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	var res helperResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	if res.Err != "" || res.Commits != 1 {
		t.Fatalf("child: %+v", res)
	}
	rows, err := db.Query(`SELECT who, attempt FROM writes ORDER BY who, attempt`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var who string
		var n int
		if err := rows.Scan(&who, &n); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s#%d", who, n))
	}
	if len(got) != 2 || got[0] != "child#2" || got[1] != "parent#1" {
		t.Fatalf("committed writes = %v, want [child#2 parent#1]: the paused attempt must not commit", got)
	}
}
