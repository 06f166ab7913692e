package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/txlock/txlock"
)

// The race modes.
const (
	modeNaive  = "naive"
	modeTxlock = "txlock"
)

// DefaultNaiveGap is the pause between check and insert in naive mode; see
// Server.NaiveGap.
const DefaultNaiveGap = 10 * time.Millisecond

// RaceConfig says what the race demo does.
type RaceConfig struct {
	Config
	// Mode is "txlock" (the fix) or "naive" (the bug).
	Mode string
	// Requests is how many POSTs are fired, all at once.
	Requests int
	// Names is over how many names they are spread.
	Names int
	// NaiveGap is Server.NaiveGap in naive mode.
	NaiveGap time.Duration
}

// RaceResult is what one race measured.
type RaceResult struct {
	Mode, Locker, Database string
	Requests, Names        int
	Created, Conflicts     int // 201s and 409s
	Errors                 int // any other answer, or none
	// Duplicates is how many names have more than one active
	// reservation after the race.
	Duplicates int
	// Attempts counts txlock.Run's attempts and Runs its calls; in naive
	// mode there are none. Attempts/Runs is 1 when no transaction ever ran
	// twice.
	Attempts, Runs int64
	P50, P99       time.Duration
	Elapsed        time.Duration
	// FirstErrors holds the first few unexpected answers and server
	// errors, for the report.
	FirstErrors []string
}

// ErrDuplicates is returned by the race command when a txlock mode left
// duplicate names: the fix failed.
var ErrDuplicates = errors.New("duplicate active names with txlock")

func raceCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("namecheck race", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c RaceConfig
	c.register(fs)
	fs.StringVar(&c.Mode, "mode", modeTxlock, "txlock (check and insert inside txlock.Run) or naive (check, then insert, no transaction, no lock)")
	fs.IntVar(&c.Requests, "n", 200, "number of concurrent POST requests")
	fs.IntVar(&c.Names, "names", 10, "number of distinct names the requests are spread over")
	fs.DurationVar(&c.NaiveGap, "gap", DefaultNaiveGap, "naive mode: pause between check and insert, standing for the handler's other work")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	res, err := Race(ctx, c, stderr)
	if err != nil {
		return err
	}
	res.Print(stdout)
	if res.Mode == modeTxlock && res.Duplicates > 0 {
		return fmt.Errorf("%w: %d", ErrDuplicates, res.Duplicates)
	}
	return nil
}

// Race runs the demo: it opens a fresh database (a temporary SQLite file,
// or a new Postgres schema that it drops afterwards, so runs never pile up),
// serves the service on a loopback port, fires c.Requests POSTs at once
// over c.Names names, and counts the names left with more than one active
// reservation. progress, if not nil, gets a progress bar.
func Race(ctx context.Context, c RaceConfig, progress io.Writer) (RaceResult, error) {
	switch {
	case c.Mode != modeNaive && c.Mode != modeTxlock:
		return RaceResult{}, fmt.Errorf("%w: -mode %q: want %s or %s", errUsage, c.Mode, modeNaive, modeTxlock)
	case c.Requests < 1 || c.Names < 1:
		return RaceResult{}, fmt.Errorf("%w: -n and -names must be at least 1", errUsage)
	}
	env, err := OpenEnv(ctx, c.Config, true, c.Mode == modeTxlock)
	if err != nil {
		return RaceResult{}, err
	}
	res, err := race(ctx, env, c, progress)
	return res, errors.Join(err, env.Close())
}

func race(ctx context.Context, env *Env, c RaceConfig, progress io.Writer) (RaceResult, error) {
	res := RaceResult{Mode: c.Mode, Locker: env.Lockers.Name, Database: env.DB.Desc,
		Requests: c.Requests, Names: c.Names}
	var attempts, runs atomic.Int64
	count := txlock.WithObserver(txlock.Observer{AttemptDone: func(_ context.Context, _ txlock.RunInfo, ev txlock.Event) {
		attempts.Add(1)
		if !ev.Retry {
			runs.Add(1) // the last attempt of a Run
		}
	}})
	serverLog := &firstLines{max: 3}
	srv := env.Server(c.Config, slog.New(slog.NewTextHandler(serverLog, nil)), count)
	if c.Mode == modeNaive {
		srv.Naive, srv.NaiveGap = true, c.NaiveGap
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, fmt.Errorf("listen: %w", err)
	}
	hs := newHTTPServer(srv.Handler(), srv.Log)
	go func() { _ = hs.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	transport := &http.Transport{MaxIdleConnsPerHost: c.Requests, Proxy: nil}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: writeTimeout + 5*time.Second}
	url := "http://" + ln.Addr().String() + "/names"

	bar := newProgress(progress, c.Requests)
	outcomes := make([]outcome, c.Requests)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range outcomes {
		wg.Go(func() {
			<-start
			outcomes[i] = post(ctx, client, url, raceName(i, c.Names), i)
			bar.done()
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	res.Elapsed = time.Since(began)
	bar.finish()

	latencies := make([]time.Duration, 0, len(outcomes))
	for _, o := range outcomes {
		latencies = append(latencies, o.latency)
		switch o.status {
		case http.StatusCreated:
			res.Created++
		case http.StatusConflict:
			res.Conflicts++
		default:
			res.Errors++
			if len(res.FirstErrors) < 3 {
				res.FirstErrors = append(res.FirstErrors, o.err)
			}
		}
	}
	res.FirstErrors = append(res.FirstErrors, serverLog.lines()...)
	res.P50, res.P99 = percentile(latencies, 50), percentile(latencies, 99)
	res.Attempts, res.Runs = attempts.Load(), runs.Load()

	res.Duplicates, err = CountDuplicates(ctx, env.DB.DB, time.Now())
	return res, err
}

// raceName is the name request i asks for: one of names names, spelled
// three ways ("Racer-3", "racer-3 ", "RACER-3") that normalize to one, so
// the demo also shows that normalization makes them collide.
func raceName(i, names int) string {
	spellings := [...]string{"Racer-%d", "racer-%d ", "RACER-%d"}
	return fmt.Sprintf(spellings[(i/names)%len(spellings)], i%names)
}

// outcome is one request's answer.
type outcome struct {
	status  int // 0 when there was no answer
	latency time.Duration
	err     string // the answer when it was not a 201 or a 409
}

func post(ctx context.Context, client *http.Client, url, name string, i int) outcome {
	body := fmt.Sprintf(`{"name": %q, "ttl": "1h", "owner": "racer %d"}`, name, i)
	began := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return outcome{err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return outcome{latency: time.Since(began), err: err.Error()}
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	o := outcome{status: resp.StatusCode, latency: time.Since(began)}
	if o.status != http.StatusCreated && o.status != http.StatusConflict {
		o.err = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return o
}

// percentile returns the p-th percentile of ds (nearest rank), sorting ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	rank := (p*len(ds) + 99) / 100 // ceil(p/100 * n)
	return ds[max(rank, 1)-1]
}

// Print writes the result as a table and ends with the line
// "duplicates: N", which scripts can look for.
func (r RaceResult) Print(w io.Writer) {
	fmt.Fprintf(w, "%d concurrent POST /names over %d name(s) in %v; database: %s\n",
		r.Requests, r.Names, r.Elapsed.Round(time.Millisecond), r.Database)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\tlocker\trequests\t201\t409\terrors\tduplicates\tattempts/run\tp50\tp99")
	perRun := "-"
	if r.Runs > 0 {
		perRun = fmt.Sprintf("%.2f", float64(r.Attempts)/float64(r.Runs))
	}
	fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%v\t%v\n", r.Mode, r.Locker, r.Requests,
		r.Created, r.Conflicts, r.Errors, r.Duplicates, perRun, roundLatency(r.P50), roundLatency(r.P99))
	_ = tw.Flush()
	for _, e := range r.FirstErrors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
	fmt.Fprintf(w, "duplicates: %d\n", r.Duplicates)
}

func roundLatency(d time.Duration) time.Duration {
	if d > 10*time.Millisecond {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Microsecond)
}

// progressBar draws "[#####.....] 120/200" on a terminal line, redrawn in
// place with \r at most every 50 ms.
type progressBar struct {
	w     io.Writer
	total int

	mu    sync.Mutex
	n     int       // requests done
	shown int       // n when last drawn
	drawn time.Time // when last drawn
}

func newProgress(w io.Writer, total int) *progressBar {
	return &progressBar{w: w, total: total}
}

func (p *progressBar) done() {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if time.Since(p.drawn) >= 50*time.Millisecond || p.n == p.total {
		p.draw()
	}
}

func (p *progressBar) draw() {
	const width = 40
	filled := p.n * width / p.total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.n, p.total)
	p.shown, p.drawn = p.n, time.Now()
}

// finish draws the final state and ends the line.
func (p *progressBar) finish() {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown != p.n || p.drawn.IsZero() {
		p.draw()
	}
	fmt.Fprintln(p.w)
}

// firstLines is an io.Writer that keeps the first max lines written to it.
type firstLines struct {
	max int

	mu   sync.Mutex
	kept []string
}

func (f *firstLines) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if len(f.kept) < f.max {
			f.kept = append(f.kept, line)
		}
	}
	return len(b), nil
}

func (f *firstLines) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.kept)
}
