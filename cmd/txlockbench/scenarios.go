package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"text/tabwriter"
	"time"
)

func (e *benchEnv) job(mode string, o options) job {
	return job{Mode: mode, DB: e.dbURL, MC: e.mcAddr, Work: o.work, Duration: o.duration}
}

// check counts what must never happen: more than one active reservation
// of a name, and a committed reservation missing (the workers' rows are
// those of owner 'bench'; see truncate).
func (e *benchEnv) check(ctx context.Context, commits int) (dups, missing int, err error) {
	err = e.admin.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT name FROM `+e.schema+`.bench_names
		WHERE owner = 'bench' AND expires_at > now() GROUP BY name HAVING count(*) > 1) d`).Scan(&dups)
	if err != nil {
		return 0, 0, err
	}
	var rows int
	if err := e.admin.QueryRowContext(ctx, `SELECT count(*) FROM `+e.schema+`.bench_names WHERE owner = 'bench'`).Scan(&rows); err != nil {
		return 0, 0, err
	}
	return dups, max(commits-rows, 0), nil
}

// uncontended interleaves its rows: every mode runs for a slice of the
// time in each of several rounds, so a slow minute of this shared machine
// weighs on every row alike instead of on whichever row it fell in.
func uncontended(ctx context.Context, e *benchEnv, o options) error {
	const workers, rounds = 8, 6
	modes := []string{"bare"}
	for _, m := range []string{"bare-cancellable", "bare+mc1", "bare+mc2", "bare+mc3", "bare+mclock", "bare+stmt1", "bare+advlock", "local", "local-pgx", "local+commitcheck", "memcached", "advisory", "advisory-rr", "memcached+advisory"} {
		if o.want(m) {
			modes = append(modes, m)
		}
	}
	slice := o.duration / rounds
	fmt.Printf("\n== uncontended check-then-insert: %d workers, distinct names, %v per row in %d interleaved slices\n",
		workers, slice*rounds, rounds)
	type acc struct {
		tally
		ops     int64
		seconds float64
		cpu     float64 // busy CPU seconds of the whole machine in the slices' windows
		bad     int
	}
	accs := map[string]*acc{}
	for _, m := range modes {
		accs[m] = &acc{}
	}
	for range rounds {
		for _, mode := range modes {
			if err := e.truncate(ctx); err != nil {
				return err
			}
			j := e.job(mode, o)
			j.ColdWorkers, j.Duration = workers, slice
			ops0, err := mcOps(e.mcAddr)
			if err != nil {
				return err
			}
			r, err := runProcs(ctx, j, 1)
			if err != nil {
				return err
			}
			ops1, _ := mcOps(e.mcAddr)
			dups, missing, err := e.check(ctx, r.Cold.committed())
			if err != nil {
				return err
			}
			a := accs[mode]
			a.merge(r.Cold)
			a.ops += ops1 - ops0
			a.seconds += slice.Seconds()
			a.cpu += r.WindowCPU
			a.bad += dups + missing
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tcommits/s\tvs bare\tvs local\tmemcached ops/run\tCPU µs/run\tp99 ms\terrors\tdups\t")
	rate := func(m string) float64 { return float64(accs[m].Commits) / accs[m].seconds }
	for _, mode := range modes {
		a := accs[mode]
		vsLocal := "-"
		if mode != "bare" && accs["local"] != nil {
			vsLocal = fmt.Sprintf("%.3f", rate(mode)/rate("local"))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%s\t%.2f\t%.0f\t%.2f\t%d\t%d\t\n", mode, rate(mode), rate(mode)/rate("bare"), vsLocal,
			float64(a.ops)/float64(max(a.committed(), 1)), a.cpu/float64(max(a.Commits, 1))*1e6, pct(a.Lat, 0.99)*1000, a.Errors, a.bad)
		chart.Uncontended = append(chart.Uncontended, bar{mode, rate(mode) / rate("bare")})
		if a.FirstErr != "" {
			defer fmt.Printf("  %s: first error: %s\n", mode, a.FirstErr)
		}
	}
	return tw.Flush()
}

// hot runs its rows one after the other, each for the whole duration: a
// hot key's tails (retry-only's above all) take seconds to build up, and
// slices would cut them off. The serial bound is measured before every
// row, and their mean is the run's bound: it sees the same minutes of the
// machine as the rows it divides.
func hot(ctx context.Context, e *benchEnv, o options) error {
	var modes []string
	for _, m := range []string{"retry-only", "add-poll-delete", "local", "local-conns", "memcached", "advisory", "memcached+advisory"} {
		if o.want(m) {
			modes = append(modes, m)
		}
	}
	type result struct {
		tally
		procs int
		cpu   float64 // busy CPU seconds of the whole machine in the row's window
		ops   int64
		bad   int
	}
	var single tally      // the serial bound: one worker, no contention, the same body
	var singleCPU float64 // ... and the machine's busy CPU seconds while it ran
	results := map[string]*result{}
	for _, mode := range modes {
		if err := e.truncate(ctx); err != nil {
			return err
		}
		base := e.job("local", o)
		base.HotWorkers = 1
		base.Duration = min(o.duration, time.Second)
		r, err := runProcs(ctx, base, 1)
		if err != nil {
			return err
		}
		singleCPU += r.WindowCPU
		single.merge(r.Hot)
		if err := e.truncate(ctx); err != nil {
			return err
		}
		procs := o.procs
		if mode == "local" || mode == "local-conns" {
			procs = 1 // an in-process lock guards one process
		}
		j := e.job(mode, o)
		j.HotWorkers = o.workers
		ops0, err := mcOps(e.mcAddr)
		if err != nil {
			return err
		}
		r, err = runProcs(ctx, j, procs)
		if err != nil {
			return err
		}
		ops1, _ := mcOps(e.mcAddr)
		dups, missing, err := e.check(ctx, r.Hot.committed())
		if err != nil {
			return err
		}
		results[mode] = &result{tally: r.Hot, procs: procs, cpu: r.WindowCPU, ops: ops1 - ops0, bad: dups + missing}
	}
	mean1 := mean(single.Lat)
	serial := 1 / mean1
	fair := float64(o.workers) * mean1
	fmt.Printf("\n== hot key: %d workers over %d processes rotate one name, %v CPU work per body, %v per row\n",
		o.workers, o.procs, o.work, o.duration)
	// The uncontended run's CPU is about the least any row's CPU per commit
	// can be: the same work, one run at a time, nothing to queue or hand
	// off. (A row of many workers can go a little below it: the in-process
	// row measured 3% under it in some runs.)
	floorCPU := singleCPU / float64(max(single.Commits, 1))
	fmt.Printf("uncontended run %.2f ms, %.2f ms machine CPU (mean of %d runs, measured before each row): serial bound %.0f commits/s, fair bound (p99) %.0f ms\n",
		mean1*1000, floorCPU*1000, len(single.Lat), serial, fair*1000)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tprocs\tgoodput/s\t/serial\tp50 ms\tp99 ms\tp99/fair\taborts/commit\tCPU ms/commit\tmemcached ops/commit\terrors\tdups\t")
	type row struct{ p99, cpu float64 }
	rows := map[string]row{}
	for _, mode := range modes {
		h := results[mode]
		all := max(h.committed(), 1) // operations and attempts span the drain too
		goodput := float64(h.Commits) / o.duration.Seconds()
		aborts := float64(h.Attempts-h.committed()) / float64(all)
		p99 := pct(h.Lat, 0.99)
		cpuPer := h.cpu / float64(max(h.Commits, 1)) // the CPU does not: the row's window only
		rows[mode] = row{p99, cpuPer}
		if mode != "local-conns" { // a floor, not a locker: not charted
			chart.HotGoodput = append(chart.HotGoodput, bar{mode, goodput / serial})
			chart.HotP99 = append(chart.HotP99, bar{mode, p99 * 1000})
		}
		chart.FairMS = fair * 1000
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.1f\t%.1f\t%.2f\t%.3f\t%.2f\t%.1f\t%d\t%d\t\n", mode, h.procs, goodput, goodput/serial,
			pct(h.Lat, 0.5)*1000, p99*1000, p99/fair, aborts, cpuPer*1000,
			float64(h.ops)/float64(all), h.Errors, h.bad)
		if h.FirstErr != "" {
			defer fmt.Printf("  %s: first error: %s\n", mode, h.FirstErr)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	mc := rows["memcached"]
	if rows["retry-only"].p99 == 0 || rows["add-poll-delete"].p99 == 0 || mc.p99 == 0 {
		return nil
	}
	fmt.Printf("p99 memcached / retry-only: %.3f   p99 memcached / add-poll-delete: %.3f   CPU per commit memcached / retry-only: %.3f (floor, the uncontended run: %.3f)\n",
		mc.p99/rows["retry-only"].p99, mc.p99/rows["add-poll-delete"].p99, mc.cpu/rows["retry-only"].cpu, floorCPU/rows["retry-only"].cpu)
	return nil
}

func pool(ctx context.Context, e *benchEnv, o options) error {
	const poolSize, hotWorkers, coldWorkers = 8, 16, 8
	fmt.Printf("\n== hot key plus cold keys through a pool of %d connections: %d hot workers, %d cold, %v per row\n",
		poolSize, hotWorkers, coldWorkers, o.duration)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tcold commits/s\tcold p50 ms\tcold p99 ms\thot commits/s\terrors\tdups\t")
	p99 := map[string]float64{}
	for _, mode := range []string{"memcached", "advisory"} {
		if err := e.truncate(ctx); err != nil {
			return err
		}
		j := e.job(mode, o)
		j.HotWorkers, j.ColdWorkers, j.Pool = hotWorkers, coldWorkers, poolSize
		r, err := runProcs(ctx, j, 1)
		if err != nil {
			return err
		}
		dups, missing, err := e.check(ctx, r.Hot.committed()+r.Cold.committed())
		if err != nil {
			return err
		}
		p99[mode] = pct(r.Cold.Lat, 0.99)
		fmt.Fprintf(tw, "%s\t%.0f\t%.1f\t%.1f\t%.0f\t%d\t%d\t\n", mode, float64(r.Cold.Commits)/o.duration.Seconds(),
			pct(r.Cold.Lat, 0.5)*1000, p99[mode]*1000, float64(r.Hot.Commits)/o.duration.Seconds(),
			r.Hot.Errors+r.Cold.Errors, dups+missing)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Printf("cold-key p99 memcached / advisory: %.3f\n", p99["memcached"]/p99["advisory"])
	return nil
}

func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
