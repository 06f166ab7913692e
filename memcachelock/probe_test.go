package memcachelock

import (
	"context"
	"database/sql"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// TestHotKeyProbe measures memcachelock's hot-key figures: 32
// workers in 4 OS processes on one key, 1 ms of CPU work per body, each
// body a read-then-write of one Postgres row. It runs only with
// TXLOCK_BENCH=1 (and should run without -race):
//
//	TXLOCK_BENCH=1 go test -run TestHotKeyProbe -v ./memcachelock/
//
// TXLOCK_BENCH_SECONDS sets the duration (default 5), TXLOCK_BENCH_HANDOFFS
// the handoff limit.
func TestHotKeyProbe(t *testing.T) {
	if os.Getenv("TXLOCK_BENCH") != "1" {
		t.Skip("set TXLOCK_BENCH=1 to run the hot-key probe")
	}
	const procs, workers, work = 4, 8, time.Millisecond
	secs, _ := strconv.Atoi(os.Getenv("TXLOCK_BENCH_SECONDS"))
	if secs <= 0 {
		secs = 5
	}
	handoffs, _ := strconv.Atoi(os.Getenv("TXLOCK_BENCH_HANDOFFS"))
	m := testenv.StartMemcached(t)
	u := testenv.PostgresURL(t)
	db := testenv.OpenURL(t, u)
	if _, err := db.Exec(`CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}

	// Baseline, same run: one worker, uncontended.
	l := newLocker(t, client(nil, m.Addr()))
	body := func(ctx context.Context, tx *sql.Tx) error {
		spin(work)
		return increment(ctx, tx)
	}
	var lat []time.Duration
	for i := 0; i < 300; i++ {
		start := time.Now()
		if err := txlock.Run(context.Background(), db, []string{"solo"}, body, txlock.WithLocker(l)); err != nil {
			t.Fatal(err)
		}
		if i >= 50 {
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	single := lat[len(lat)/2]
	serial := 1 / single.Seconds()
	fair := time.Duration(procs*workers) * single

	start := time.Now()
	rs := startHelpers(t, procs, helperConfig{Mode: "probe", Addr: m.Addr(), DB: u, Key: "hot", Workers: workers,
		Until: time.Now().Add(time.Duration(secs) * time.Second), Work: work, Handoffs: handoffs})
	elapsed := time.Since(start)
	var all []time.Duration
	attempts, commits := 0, 0
	perProc := make([]int, 0, procs)
	for _, r := range rs {
		all = append(all, r.Latencies...)
		attempts += r.Attempts
		commits += r.Commits
		perProc = append(perProc, r.Commits)
	}
	if commits == 0 {
		t.Fatal("no commits")
	}
	slices.Sort(all)
	p50, p99 := all[len(all)/2], all[len(all)*99/100]
	goodput := float64(commits) / elapsed.Seconds()
	aborted := float64(attempts-commits) / float64(commits)
	if n := count(t, db); n != commits+300 {
		t.Errorf("counter = %d, want %d: lost updates", n, commits+300)
	}
	t.Logf("\n"+
		"uncontended run (median)       %v\n"+
		"serial bound                   %.0f commits/s\n"+
		"fair bound (32 x run)          %v\n"+
		"commits per process            %v\n"+
		"goodput                        %.0f commits/s\n"+
		"goodput / serial bound         %.2f   (target >= 0.8)\n"+
		"p50 latency                    %v\n"+
		"p99 latency                    %v\n"+
		"p99 / fair bound               %.2f   (target <= 3)\n"+
		"aborted attempts per commit    %.3f  (target <= 0.05)",
		single.Round(time.Microsecond), serial, fair.Round(time.Microsecond), perProc, goodput, goodput/serial,
		p50.Round(time.Microsecond), p99.Round(time.Microsecond), float64(p99)/float64(fair), aborted)
}
