// Package matrix_test proves the correctness model of BRIEF §5 against the
// real PostgreSQL: a hot check-then-insert of reusable names keeps exactly
// one active reservation per name, and loses no acknowledged one, at every
// isolation level with every locker. The same harness shows that the naive
// check-then-insert (no transaction, no lock) does produce duplicates, so it
// can fail.
//
// Workers run in several OS processes (this test binary, re-executed) for
// every locker that spans processes; the in-process locker guards one
// process, so its rows run in one.
//
//	go test -v -run TestMatrix ./internal/matrix/          # short form, in CI
//	TXLOCK_MATRIX=long go test -v -run TestMatrix ./internal/matrix/
package matrix_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/memcachelock"
	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/retry"
)

const childEnv = "TXLOCK_MATRIX_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(child(spec))
	}
	os.Exit(m.Run())
}

// cell is one run of the matrix, and what a child process is told to do.
type cell struct {
	Level   string // read committed | repeatable read | serializable | "" for naive
	Locker  string // local | memcached | advisory | memcached+advisory | retry-only | naive
	DB      string
	MC      string
	Prefix  string
	Names   []string
	Workers int
	Procs   int
	Start   time.Time
}

// outcome is what one process's workers saw.
type outcome struct {
	Acked    []int64 // ids of reservations whose Run returned nil
	Taken    int     // reservations refused because the name was active
	Attempts int
	Errors   []string
}

var levels = map[string]sql.IsolationLevel{
	"read committed":  sql.LevelReadCommitted,
	"repeatable read": sql.LevelRepeatableRead,
	"serializable":    sql.LevelSerializable,
}

var errTaken = errors.New("name taken")

func child(spec string) int {
	var c cell
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	db, err := sql.Open("pgx", c.DB)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer db.Close()
	out := work(context.Background(), db, c)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

func lockerOptions(c cell) []txlock.Option {
	mc := func() *memcache.Client { return memcache.New(c.MC) }
	opts := []txlock.Option{
		txlock.WithMaxAttempts(200),
		txlock.WithBackoff(retry.Exponential{Base: time.Millisecond, Max: 50 * time.Millisecond}),
	}
	if lv, ok := levels[c.Level]; ok {
		opts = append(opts, txlock.WithTxOptions(&sql.TxOptions{Isolation: lv}))
	}
	switch c.Locker {
	case "local":
		opts = append(opts, txlock.WithLocker(txlock.NewLocalLocker()))
	case "memcached":
		opts = append(opts, txlock.WithLocker(memcachelock.New(mc(), memcachelock.WithPrefix(c.Prefix))))
	case "advisory":
		opts = append(opts, txlock.WithLocker(advisorylock.New(advisorylock.WithNamespace(c.Prefix))))
	case "memcached+advisory":
		opts = append(opts, txlock.WithLocker(
			memcachelock.New(mc(), memcachelock.WithPrefix(c.Prefix)),
			advisorylock.New(advisorylock.WithNamespace(c.Prefix))))
	}
	return opts
}

// work runs c.Workers workers in this process; each reserves every name of
// c.Names, in the same order, once.
func work(ctx context.Context, db *sql.DB, c cell) outcome {
	opts := lockerOptions(c)
	var mu sync.Mutex
	var out outcome
	var wg sync.WaitGroup
	time.Sleep(time.Until(c.Start))
	for w := range c.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("p%d-w%d", os.Getpid(), w)
			for _, name := range c.Names {
				id, attempts, err := reserve(ctx, db, c, opts, name, owner)
				mu.Lock()
				out.Attempts += attempts
				switch {
				case err == nil:
					out.Acked = append(out.Acked, id)
				case errors.Is(err, errTaken):
					out.Taken++
				default:
					out.Errors = append(out.Errors, err.Error())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

const (
	qActive = `SELECT EXISTS (SELECT 1 FROM name_reservations WHERE name = $1 AND expires_at > now())`
	qInsert = `INSERT INTO name_reservations (name, owner, expires_at) VALUES ($1, $2, now() + interval '1 hour') RETURNING id`
)

func reserve(ctx context.Context, db *sql.DB, c cell, opts []txlock.Option, name, owner string) (int64, int, error) {
	if c.Locker == "naive" {
		// The seeds' bug: check, then insert, no transaction, no lock.
		// The pause stands for the request's other work between the
		// two, and makes the race show on every run.
		var active bool
		if err := db.QueryRowContext(ctx, qActive, name).Scan(&active); err != nil {
			return 0, 1, err
		}
		if active {
			return 0, 1, errTaken
		}
		time.Sleep(5 * time.Millisecond)
		var id int64
		return id, 1, db.QueryRowContext(ctx, qInsert, name, owner).Scan(&id)
	}
	var keys []string
	if c.Locker != "retry-only" {
		keys = []string{"name:" + name}
	}
	var id int64
	attempts := 0
	err := txlock.Run(ctx, db, keys, func(ctx context.Context, tx *sql.Tx) error {
		attempts = txlock.Attempt(ctx)
		var active bool
		if err := tx.QueryRowContext(ctx, qActive, name).Scan(&active); err != nil {
			return err
		}
		if active {
			return errTaken
		}
		time.Sleep(time.Millisecond) // widen the gap the lock must close
		return tx.QueryRowContext(ctx, qInsert, name, owner).Scan(&id)
	}, opts...)
	return id, attempts, err
}

// runCell runs c over c.Procs processes (1: in this one) and merges what
// they saw.
func runCell(t *testing.T, c cell) outcome {
	t.Helper()
	c.Start = time.Now().Add(200 * time.Millisecond)
	if c.Procs <= 1 {
		db := testenv.OpenURL(t, c.DB)
		return work(context.Background(), db, c)
	}
	c.Start = time.Now().Add(1500 * time.Millisecond) // children need time to start
	var wg sync.WaitGroup
	outs := make([]outcome, c.Procs)
	errs := make([]error, c.Procs)
	per := c
	per.Workers = c.Workers / c.Procs
	spec, _ := json.Marshal(per)
	for p := range c.Procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
			cmd.Stderr = os.Stderr
			b, err := cmd.Output()
			if err != nil {
				errs[p] = err
				return
			}
			errs[p] = json.Unmarshal(b, &outs[p])
		}()
	}
	wg.Wait()
	var all outcome
	for p := range c.Procs {
		if errs[p] != nil {
			t.Fatalf("process %d: %v", p, errs[p])
		}
		all.Acked = append(all.Acked, outs[p].Acked...)
		all.Taken += outs[p].Taken
		all.Attempts += outs[p].Attempts
		all.Errors = append(all.Errors, outs[p].Errors...)
	}
	return all
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
	rows.Close()
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

func TestMatrix(t *testing.T) {
	names, workers, procs := 4, 12, 2
	if os.Getenv("TXLOCK_MATRIX") == "long" {
		names, workers, procs = 40, 32, 4
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

	type row struct {
		level, locker string
		procs         int
	}
	var rows []row
	for _, level := range []string{"read committed", "repeatable read", "serializable"} {
		for _, locker := range []string{"local", "memcached", "advisory", "memcached+advisory"} {
			p := procs
			if locker == "local" {
				p = 1
			}
			rows = append(rows, row{level, locker, p})
		}
	}
	rows = append(rows, row{"serializable", "retry-only", procs}, row{"", "naive", 1})

	var table strings.Builder
	fmt.Fprintf(&table, "\n%-16s %-19s %5s %7s %10s %8s %8s %15s %8s\n",
		"level", "locker", "procs", "workers", "duplicates", "missing", "errors", "attempts/run", "seconds")
	for i, r := range rows {
		if _, err := db.Exec(`TRUNCATE name_reservations`); err != nil {
			t.Fatal(err)
		}
		c := cell{Level: r.level, Locker: r.locker, DB: url, MC: mc.Addr(), Prefix: fmt.Sprintf("m%d:", i),
			Names: nameList, Workers: workers, Procs: r.procs}
		start := time.Now()
		out := runCell(t, c)
		secs := time.Since(start).Seconds()
		v := check(t, db, nameList, out.Acked)
		perCommit := float64(out.Attempts) / float64(max(len(out.Acked)+out.Taken, 1))
		level := r.level
		if level == "" {
			level = "(none)"
		}
		fmt.Fprintf(&table, "%-16s %-19s %5d %7d %10d %8d %8d %15.3f %8.2f\n",
			level, r.locker, r.procs, workers, v.duplicates, v.missing, len(out.Errors), perCommit, secs)

		if r.locker == "naive" {
			if v.duplicates == 0 {
				t.Errorf("naive check-then-insert produced no duplicates: the harness cannot tell right from wrong")
			}
			continue
		}
		name := level + "/" + r.locker
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
		if got, want := len(out.Acked)+out.Taken+len(out.Errors), workers*names; got != want {
			t.Errorf("%s: %d outcomes, want %d", name, got, want)
		}
	}
	t.Log(table.String())
}
