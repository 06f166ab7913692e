package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// The fault scenario: several worker processes reserve a few hot names,
// check-then-insert, while a fault strikes about every second, in turn:
// memcached killed and started again 300 ms later; a worker process
// paused (SIGSTOP) 3 s past its 2 s memcached lease; two of the workers'
// Postgres backends terminated; a worker process killed (SIGKILL) and
// replaced. A Run that fails is tried again by its caller 20 ms later.
// Afterwards the database and memcached are checked: every acknowledged
// reservation stored, no two reservations of a name active at once, no
// lock left behind past its lease.

// faultConfig is one row of the fault table: the lockers and the
// isolation level every Run uses.
type faultConfig struct {
	Name      string
	Lockers   string // a lockers() mode
	Isolation string // "read committed", "repeatable read", "serializable"
	// Guaranteed reports that the database itself keeps the invariant
	// (SERIALIZABLE, or an advisory lock); with memcached alone at READ
	// COMMITTED it rests on the lease, which a pause in the instant
	// between its check and COMMIT can break.
	Guaranteed bool
}

var faultConfigs = []faultConfig{
	{"memcached/serializable", "memcached", "serializable", true},
	{"memcached+advisory/read committed", "memcached+advisory", "read committed", true},
	{"memcached/read committed", "memcached", "read committed", false},
	{"advisory/repeatable read", "advisory", "repeatable read", true},
}

// Workload and fault constants.
const (
	faultProcs      = 3
	faultWorkers    = 6 // per process
	faultNames      = 6
	faultTTL        = 2 * time.Second
	faultLockWait   = 10 * time.Second
	faultAttempts   = 20
	faultLifetime   = 100 * time.Millisecond // how long a reservation is active
	faultRetryAfter = 20 * time.Millisecond  // a caller's pause before trying a failed Run again
	faultEvery      = time.Second
	faultMCDown     = 300 * time.Millisecond
	faultPause      = faultTTL + 3*time.Second
)

const faultWorkerEnv = "TXLOCKBENCH_FAULT_WORKER"

const faultDDL = `
CREATE TABLE IF NOT EXISTS fault_names (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name       text NOT NULL,
	owner      text NOT NULL,
	created_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS fault_names_name ON fault_names (name, expires_at);`

// faultJob is what a worker process is told.
type faultJob struct {
	Config  faultConfig
	DB, MC  string
	Proc    int
	AppName string
}

// faultResult is what one configuration came to.
type faultResult struct {
	acked       int
	errors      map[string]int
	firstErr    map[string]string
	resolved    int
	unresolved  int
	lat         []float64
	missing     int
	overlaps    int
	stuck       int
	faults      map[string]int
	workerFails int
}

func (r *faultResult) errorCount() int {
	n := 0
	for _, c := range r.errors {
		n += c
	}
	return n
}

func faultsScenario(ctx context.Context, e *benchEnv, o options) error {
	if e.mcCmd == nil {
		return fmt.Errorf("the fault scenario kills and restarts memcached: run it without -memcached")
	}
	if _, err := e.admin.ExecContext(ctx, "SET search_path TO "+e.schema+"; "+faultDDL); err != nil {
		return err
	}
	fmt.Printf("\n== faults: %d processes × %d workers on %d names, check-then-insert, reservations active %v; "+
		"lock wait %v, %d attempts, memcached lease %v; a failed Run is tried again after %v; %v per configuration\n",
		faultProcs, faultWorkers, faultNames, faultLifetime, faultLockWait, faultAttempts, faultTTL, faultRetryAfter, o.duration)
	fmt.Printf("   a fault about every %v, in turn: memcached killed and started again %v later; a worker paused %v; "+
		"two backends terminated; a worker killed and replaced\n", faultEvery, faultMCDown, faultPause)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "configuration\tacked\terrors\terrors/ack\tambiguous resolved\tunresolved\tunresolved/1000 acks\tmissing\toverlaps\tstuck\tp99 ms\t")
	var violations []string
	var details []string
	for _, c := range faultConfigs {
		if !o.want(c.Name) {
			continue
		}
		r, err := runFaultConfig(ctx, e, o, c)
		if err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		acked := max(r.acked, 1)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.4f\t%d\t%d\t%.2f\t%d\t%d\t%d\t%.0f\t\n", c.Name, r.acked, r.errorCount(),
			float64(r.errorCount())/float64(acked), r.resolved, r.unresolved, 1000*float64(r.unresolved)/float64(acked),
			r.missing, r.overlaps, r.stuck, pct(r.lat, 0.99)*1000)
		details = append(details, fmt.Sprintf("  %s: faults %s; errors %s", c.Name, kinds(r.faults), kinds(r.errors)))
		for k, msg := range r.firstErr {
			details = append(details, fmt.Sprintf("    first %s: %s", k, msg))
		}
		if r.missing > 0 || r.stuck > 0 || (c.Guaranteed && r.overlaps > 0) || r.workerFails > 0 || r.acked == 0 {
			violations = append(violations, fmt.Sprintf("%s: %d missing, %d overlaps, %d stuck, %d acked, %d workers failed",
				c.Name, r.missing, r.overlaps, r.stuck, r.acked, r.workerFails))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range details {
		fmt.Println(d)
	}
	if len(violations) > 0 {
		return fmt.Errorf("invariants broken:\n  %s", strings.Join(violations, "\n  "))
	}
	return nil
}

func kinds(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// faultProc is one worker process.
type faultProc struct {
	num    int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	done   chan struct{} // closed when its output has been read to the end
	paused bool
	killed bool
}

// faultRun is the state of one configuration's run.
type faultRun struct {
	e   *benchEnv
	job faultJob

	mu    sync.Mutex
	procs []*faultProc
	res   faultResult
	acks  map[int64]bool
}

func runFaultConfig(ctx context.Context, e *benchEnv, o options, c faultConfig) (*faultResult, error) {
	if _, err := e.admin.ExecContext(ctx, "TRUNCATE "+e.schema+".fault_names"); err != nil {
		return nil, err
	}
	fr := &faultRun{e: e, acks: map[int64]bool{},
		job: faultJob{Config: c, DB: e.dbURL, MC: e.mcAddr, AppName: "txlockfault_" + e.schema},
		res: faultResult{errors: map[string]int{}, firstErr: map[string]string{}, faults: map[string]int{}}}
	for p := range faultProcs {
		if err := fr.start(p); err != nil {
			return nil, err
		}
	}
	time.Sleep(time.Second) // let the workers connect before the first fault
	var pauses sync.WaitGroup
	end := time.Now().Add(o.duration)
	for i := 0; time.Now().Before(end); i++ {
		time.Sleep(faultEvery*4/5 + rand.N(faultEvery*2/5))
		if err := fr.fault(ctx, i%4, &pauses); err != nil {
			return nil, err
		}
	}
	pauses.Wait()
	fr.stop()
	// A lock left behind by a killed worker lasts its lease at most.
	time.Sleep(faultTTL + 1500*time.Millisecond)
	if err := fr.verify(ctx); err != nil {
		return nil, err
	}
	return &fr.res, nil
}

// start starts worker p and reads what it reports.
func (fr *faultRun) start(p int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	j := fr.job
	j.Proc = p
	b, _ := json.Marshal(j)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), faultWorkerEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	fp := &faultProc{num: p, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	fr.mu.Lock()
	fr.procs = append(fr.procs, fp)
	fr.mu.Unlock()
	go fr.read(fp, stdout)
	return nil
}

// read takes in a worker's lines until its output ends.
func (fr *faultRun) read(fp *faultProc, out io.Reader) {
	defer close(fp.done)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	clean := false
	for sc.Scan() {
		kind, rest, _ := strings.Cut(sc.Text(), " ")
		fr.mu.Lock()
		switch kind {
		case "ack":
			idText, msText, _ := strings.Cut(rest, " ")
			id, _ := strconv.ParseInt(idText, 10, 64)
			ms, _ := strconv.ParseFloat(msText, 64)
			fr.acks[id] = true
			fr.res.acked++
			fr.res.lat = append(fr.res.lat, ms/1000)
		case "err":
			k, msg, _ := strings.Cut(rest, "\t")
			fr.res.errors[k]++
			if _, ok := fr.res.firstErr[k]; !ok {
				fr.res.firstErr[k] = msg
			}
		case "amb":
			if rest == "unresolved" {
				fr.res.unresolved++
			} else {
				fr.res.resolved++
			}
		case "done":
			clean = true
		}
		fr.mu.Unlock()
	}
	_ = fp.cmd.Wait()
	fr.mu.Lock()
	if !clean && !fp.killed {
		fr.res.workerFails++
	}
	fr.mu.Unlock()
}

// pick returns a live worker that is not paused, at random.
func (fr *faultRun) pick() *faultProc {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	var live []*faultProc
	for _, p := range fr.procs {
		if !p.paused && !p.killed {
			live = append(live, p)
		}
	}
	if len(live) == 0 {
		return nil
	}
	return live[rand.N(len(live))]
}

// fault strikes fault number kind.
func (fr *faultRun) fault(ctx context.Context, kind int, pauses *sync.WaitGroup) error {
	switch kind {
	case 0:
		fr.count("memcached restart")
		fr.e.killMemcached()
		time.Sleep(faultMCDown)
		return fr.e.runMemcached()
	case 1:
		p := fr.pick()
		if p == nil {
			return nil
		}
		fr.count("worker paused")
		fr.mu.Lock()
		p.paused = true
		fr.mu.Unlock()
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		pauses.Add(1)
		time.AfterFunc(faultPause, func() {
			defer pauses.Done()
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			fr.mu.Lock()
			p.paused = false
			fr.mu.Unlock()
		})
	case 2:
		fr.count("backends terminated")
		_, err := fr.e.admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = $1 ORDER BY random() LIMIT 2`, fr.job.AppName)
		return err
	case 3:
		p := fr.pick()
		if p == nil {
			return nil
		}
		fr.count("worker killed")
		fr.mu.Lock()
		p.killed = true
		fr.mu.Unlock()
		_ = p.cmd.Process.Kill()
		<-p.done
		return fr.start(p.num)
	}
	return nil
}

func (fr *faultRun) count(what string) {
	fr.mu.Lock()
	fr.res.faults[what]++
	fr.mu.Unlock()
}

// stop asks every live worker to finish (its standard input ends) and
// waits for them.
func (fr *faultRun) stop() {
	fr.mu.Lock()
	procs := slices.Clone(fr.procs)
	fr.mu.Unlock()
	for _, p := range procs {
		_ = p.stdin.Close()
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// verify counts missing reservations, overlapping ones and locks left
// behind.
func (fr *faultRun) verify(ctx context.Context) error {
	t := fr.e.schema + ".fault_names"
	rows, err := fr.e.admin.QueryContext(ctx, "SELECT id FROM "+t)
	if err != nil {
		return err
	}
	stored := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		stored[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for id := range fr.acks {
		if !stored[id] {
			fr.res.missing++
		}
	}
	if err := fr.e.admin.QueryRowContext(ctx, `SELECT count(*) FROM `+t+` a JOIN `+t+` b
		ON a.name = b.name AND a.id < b.id AND a.created_at < b.expires_at AND b.created_at < a.expires_at`).Scan(&fr.res.overlaps); err != nil {
		return err
	}
	mc := memcache.New(fr.e.mcAddr)
	for i := range faultNames {
		if _, err := mc.Get("txlock:name:" + faultName(i)); err == nil {
			fr.res.stuck++
		}
	}
	var held int
	if err := fr.e.admin.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE l.locktype = 'advisory' AND a.application_name = $1`, fr.job.AppName).Scan(&held); err != nil {
		return err
	}
	fr.res.stuck += held
	return nil
}

func faultName(i int) string { return "n" + strconv.Itoa(i) }
