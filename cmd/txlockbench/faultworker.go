package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/memcachelock"
)

// faultWorkerMain is a worker process of the fault scenario. It reserves
// names until its standard input ends, and reports on standard output, a
// line each: "ack <id> <ms>" for a reservation acknowledged <ms> after its
// first try, "err <kind>\t<error>" for a Run that failed, "amb resolved" or
// "amb unresolved" for a COMMIT whose outcome was unknown, "done" at the
// end.
func faultWorkerMain() int {
	var j faultJob
	if err := json.Unmarshal([]byte(os.Getenv(faultWorkerEnv)), &j); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	db, opts, err := faultWorkerSetup(j)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer db.Close()
	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	opts = append(opts, txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, e txlock.Event) {
		if errors.Is(e.Err, txlock.ErrLockBusy) && os.Getenv("TXLOCKBENCH_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, "debug p%d attempt %d lockwait %v duration %v degraded %v: %v\n", j.Proc, e.Attempt, e.LockWait, e.Duration, e.Degraded, e.Err)
		}
		switch e.Commit {
		case txlock.CommitFoundCommitted, txlock.CommitFoundAborted:
			out.line("amb resolved")
		case txlock.CommitUnknown:
			out.line("amb unresolved")
		}
	}}))
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString(0) // ends when the parent closes it
		stop()
	}()
	var wg sync.WaitGroup
	for w := range faultWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			faultWorkerLoop(ctx, db, opts, fmt.Sprintf("p%d.w%d", j.Proc, w), out)
		}()
	}
	wg.Wait()
	out.line("done")
	return 0
}

func faultWorkerSetup(j faultJob) (*sql.DB, []txlock.Option, error) {
	u, err := url.Parse(j.DB)
	if err != nil {
		return nil, nil, err
	}
	q := u.Query()
	q.Set("application_name", j.AppName)
	u.RawQuery = q.Encode()
	db, err := sql.Open("pgx", u.String())
	if err != nil {
		return nil, nil, err
	}
	db.SetMaxIdleConns(faultWorkers + 2)
	mc := memcache.New(j.MC)
	var lockers []txlock.Locker
	switch j.Config.Lockers {
	case "memcached":
		lockers = append(lockers, memcachelock.New(mc, memcachelock.WithTTL(faultTTL)))
	case "memcached+advisory":
		lockers = append(lockers, memcachelock.New(mc, memcachelock.WithTTL(faultTTL)), advisorylock.New())
	case "advisory":
		lockers = append(lockers, advisorylock.New())
	default:
		return nil, nil, fmt.Errorf("unknown lockers %q", j.Config.Lockers)
	}
	level := map[string]sql.IsolationLevel{"read committed": sql.LevelReadCommitted,
		"repeatable read": sql.LevelRepeatableRead, "serializable": sql.LevelSerializable}[j.Config.Isolation]
	return db, []txlock.Option{txlock.WithLocker(lockers...), txlock.WithTxOptions(&sql.TxOptions{Isolation: level}),
		txlock.WithLockWait(faultLockWait), txlock.WithMaxAttempts(faultAttempts)}, nil
}

var errFaultTaken = errors.New("name taken")

// faultWorkerLoop reserves random names until ctx ends: a name that is
// taken is left for another; a Run that fails is tried again after
// faultRetryAfter, as a caller would.
func faultWorkerLoop(ctx context.Context, db *sql.DB, opts []txlock.Option, owner string, out *lineWriter) {
	for ctx.Err() == nil {
		name := faultName(rand.N(faultNames))
		start := time.Now()
		for ctx.Err() == nil {
			var id int64
			// The Run is not cancelled when the worker is told to stop:
			// a reservation in flight is finished and reported.
			err := txlock.Run(context.Background(), db, []string{"name:" + name}, func(ctx context.Context, tx *sql.Tx) error {
				var active bool
				if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM fault_names WHERE name = $1 AND expires_at > now())`, name).Scan(&active); err != nil {
					return err
				}
				if active {
					return errFaultTaken
				}
				return tx.QueryRowContext(ctx, `INSERT INTO fault_names (name, owner, created_at, expires_at)
					VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond') RETURNING id`,
					name, owner, faultLifetime.Milliseconds()).Scan(&id)
			}, opts...)
			switch {
			case err == nil:
				out.line(fmt.Sprintf("ack %d %.3f", id, float64(time.Since(start).Microseconds())/1000))
			case errors.Is(err, errFaultTaken):
				time.Sleep(5 * time.Millisecond)
			default:
				out.line("err " + errorKind(err) + "\t" + strings.ReplaceAll(err.Error(), "\n", " "))
				time.Sleep(faultRetryAfter)
				continue
			}
			break
		}
	}
}

// errorKind names what kind of failure a Run's error is.
func errorKind(err error) string {
	switch {
	case errors.Is(err, txlock.ErrAmbiguousCommit):
		return "ambiguous_commit"
	case errors.Is(err, txlock.ErrTooManyAttempts):
		return "too_many_attempts"
	case errors.Is(err, txlock.ErrLockUnavailable):
		return "lock_unavailable"
	case errors.Is(err, txlock.ErrLockBusy):
		return "lock_busy"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "context"
	}
	return "other"
}

// lineWriter writes whole lines from many goroutines, each flushed at
// once so that a process killed a moment later has reported it.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (l *lineWriter) line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.WriteString(s)
	_ = l.w.WriteByte('\n')
	_ = l.w.Flush()
}
