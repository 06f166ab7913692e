// Command txlockbench measures txlock's throughput, tail latency and cost
// against a real PostgreSQL and a real memcached, and prints them as tables of ratios
// against baselines measured in the same run.
//
//	go run ./cmd/txlockbench                     # all scenarios, ~2 minutes
//	go run ./cmd/txlockbench -scenario hot -d 10s
//
// Scenarios:
//
//   - uncontended: 8 workers check-then-insert distinct names; throughput
//     of each locker against a bare transaction, and memcached round trips
//     per run.
//   - hot: 32 workers over 4 processes rotate one hot name (read the active
//     reservation, expire it, insert the next), with 1 ms of CPU work in each
//     body; goodput against the serial bound, p99 against the fair bound,
//     aborted attempts per commit and CPU per commit, for retry-only
//     (SERIALIZABLE, no lock), the hand-written memcached lock (add, a fixed
//     50 ms poll, a plain delete: add-poll-delete) and each txlock locker.
//   - pool: the hot key plus cold keys through a pool of 8 connections;
//     cold-key p99 with memcached against advisory.
//
// CPU is the whole machine's (this command's processes, Postgres,
// memcached) from /proc/stat, without steal: on a virtual machine, time
// the hypervisor gave to other guests is no work of the row's. Each
// scenario ends with the share of time stolen during it; where it is high
// the host was crowded and the ratios are noisier than usual.
//
// Every row starts from a table that holds 20,000 reservations of other
// names (-seed) and has statistics, as a production table would; the
// workers' rows are the only ones checked for duplicates and losses.
//
// Postgres comes from -db (default $TXLOCK_TEST_DATABASE_URL or
// 127.0.0.1:5432); memcached from -memcached, or a private memcached this
// command starts on a free loopback port. Everything runs in a private
// schema that is dropped at the end.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime/pprof"
	"strings"
	"time"
)

type options struct {
	db        string
	memcached string
	scenario  string
	duration  time.Duration
	work      time.Duration
	seed      int
	procs     int
	workers   int
	modes     map[string]bool // empty: all
	svg       string          // write a chart of the run here
	cpuprof   string          // write a CPU profile of this process here
}

// want reports whether the row for mode should run.
func (o options) want(mode string) bool { return len(o.modes) == 0 || o.modes[mode] }

func main() {
	log.SetFlags(0)
	log.SetPrefix("txlockbench: ")
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	if os.Getenv(faultWorkerEnv) != "" {
		os.Exit(faultWorkerMain())
	}
	var o options
	defDB := os.Getenv("TXLOCK_TEST_DATABASE_URL")
	if defDB == "" {
		defDB = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	flag.StringVar(&o.db, "db", defDB, "Postgres URL")
	flag.StringVar(&o.memcached, "memcached", "", "memcached server (default: start a private one on a free loopback port)")
	flag.StringVar(&o.scenario, "scenario", "all", "uncontended | hot | pool | faults | serve | all (all but faults and serve)")
	flag.DurationVar(&o.duration, "d", 8*time.Second, "measuring time per row")
	flag.DurationVar(&o.work, "work", time.Millisecond, "CPU work in each hot-key body")
	flag.IntVar(&o.seed, "seed", 20000, "other names' reservations in the table when each row starts, with statistics (0: an empty table without statistics)")
	flag.IntVar(&o.procs, "procs", 4, "processes for the hot-key rows")
	flag.IntVar(&o.workers, "workers", 32, "workers in all for the hot-key rows")
	modes := flag.String("modes", "", "comma-separated rows to run (default all). uncontended: bare, bare-cancellable, bare+mc1..3 (a bare transaction plus 1 to 3 raw memcached round trips: the floor), bare+mclock (plus the memcached locker's three round trips as raw calls: add, gets, CAS), bare+stmt1 (plus one trivial statement), bare+advlock (plus the advisory locker's statement, raw), local, local-pgx, local+commitcheck, memcached, advisory, advisory-rr, memcached+advisory; hot: retry-only, add-poll-delete, local, local-conns (the in-process locker with every worker on a connection of its own, as advisory waiters are: the floor of a locker whose waiters hold connections), memcached, advisory, memcached+advisory; faults: the configurations by name")
	flag.StringVar(&o.svg, "svg", "", "also draw the run's figures as an SVG chart into this file (e.g. docs/bench.svg)")
	flag.StringVar(&o.cpuprof, "cpuprofile", "", "write a CPU profile of this process (the rows that run in one process) into this file")
	flag.Parse()
	if o.seed < 0 {
		log.Fatalf("-seed %d: want 0 or more", o.seed)
	}
	if *modes != "" {
		o.modes = map[string]bool{}
		for _, m := range strings.Split(*modes, ",") {
			o.modes[strings.TrimSpace(m)] = true
		}
	}
	if o.cpuprof != "" {
		f, err := os.Create(o.cpuprof)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(context.Background(), o); err != nil {
		log.Fatal(err)
	}
	if o.svg != "" {
		chart.When = time.Now().UTC().Format("2006-01-02 15:04 UTC") + fmt.Sprintf(", GOMAXPROCS %d, %v per row", gomaxprocs(), o.duration)
		if err := writeSVG(o.svg, chart); err != nil {
			log.Fatal(err)
		}
	}
}

func run(ctx context.Context, o options) error {
	env, err := setup(ctx, o)
	if err != nil {
		return err
	}
	defer env.Close()
	fmt.Printf("txlockbench: %s, GOMAXPROCS %d, memcached %s\n", time.Now().Format(time.RFC3339), gomaxprocs(), env.mcAddr)
	switch o.scenario {
	case "uncontended":
		return withSteal(uncontended)(ctx, env, o)
	case "hot":
		return withSteal(hot)(ctx, env, o)
	case "pool":
		return withSteal(pool)(ctx, env, o)
	case "faults":
		return faultsScenario(ctx, env, o)
	case "serve":
		return serveScenario(ctx, env, o)
	case "all":
		for _, f := range []func(context.Context, *benchEnv, options) error{uncontended, hot, pool} {
			if err := withSteal(f)(ctx, env, o); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown scenario %q", o.scenario)
}

// withSteal runs a scenario and then prints how much of the machine's time
// the hypervisor took meanwhile, so that a run on a crowded host shows.
func withSteal(f func(context.Context, *benchEnv, options) error) func(context.Context, *benchEnv, options) error {
	return func(ctx context.Context, e *benchEnv, o options) error {
		m := newStealMeter()
		if err := f(ctx, e, o); err != nil {
			return err
		}
		fmt.Println(m.report())
		return nil
	}
}
