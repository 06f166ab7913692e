package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/advisorylock"
	"github.com/txlock/txlock/memcachelock"
)

const schemaDDL = `
CREATE TABLE bench_names (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name       text NOT NULL,
	owner      text NOT NULL,
	expires_at timestamptz NOT NULL
);
CREATE INDEX bench_names_name ON bench_names (name, expires_at);`

type benchEnv struct {
	dbURL    string // with search_path set to the private schema
	admin    *sql.DB
	schema   string
	seed     int // other names' reservations each row starts with (see truncate)
	mcAddr   string
	mcCmd    *exec.Cmd
	mcExited chan struct{}
}

func setup(ctx context.Context, o options) (*benchEnv, error) {
	admin, err := sql.Open("pgx", o.db)
	if err != nil {
		return nil, err
	}
	if err := admin.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("postgres %s: %w", o.db, err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	env := &benchEnv{admin: admin, schema: "txlockbench_" + hex.EncodeToString(b[:]), seed: o.seed}
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+env.schema); err != nil {
		return nil, err
	}
	u, err := url.Parse(o.db)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("search_path", env.schema)
	u.RawQuery = q.Encode()
	env.dbURL = u.String()
	db, err := env.open()
	if err != nil {
		env.Close()
		return nil, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, schemaDDL); err != nil {
		env.Close()
		return nil, err
	}
	env.mcAddr = o.memcached
	if env.mcAddr == "" {
		if err := env.startMemcached(); err != nil {
			env.Close()
			return nil, err
		}
	}
	return env, nil
}

func (e *benchEnv) open() (*sql.DB, error) {
	db, err := sql.Open("pgx", e.dbURL)
	if err != nil {
		return nil, err
	}
	db.SetMaxIdleConns(64)
	return db, nil
}

// truncate empties the table before a row, fills it with other names'
// reservations, and checkpoints.
//
// The other names (-seed of them, 20,000 by default, half active, half
// expired, none a name the workers use) and their statistics make the
// table look like a production one. An emptied table has no statistics, and then Postgres's
// plan for the hot name's check depended on how many connections ran it:
// a connection's first five runs of a prepared statement get a plan for
// the name at hand, and on a table without statistics that is a bitmap
// scan, which reads every index entry of the name, dead ones included,
// and never marks them dead; a connection that reaches its sixth run early
// (while the table is small) settles on a generic plan, an index scan,
// which marks them as it goes. Rows whose waiters keep every connection
// busy in turn (advisory locks, retry-only) stayed on bitmap scans reading
// thousands of entries per check by the end of a row, while rows that
// reuse a few connections (memcached) read two.
//
// The checkpoint keeps a timed one (every 5 minutes by default) from
// falling inside the row, where its burst of writes stalls commits and
// inflates that row's tail latency alone. A server that refuses
// CHECKPOINT (not a superuser) is measured as it is.
func (e *benchEnv) truncate(ctx context.Context) error {
	if _, err := e.admin.ExecContext(ctx, "TRUNCATE "+e.schema+".bench_names"); err != nil {
		return err
	}
	if e.seed > 0 {
		if _, err := e.admin.ExecContext(ctx, `INSERT INTO `+e.schema+`.bench_names (name, owner, expires_at)
			SELECT 'seed-' || g, 'seed', now() + CASE WHEN g % 2 = 0 THEN interval '1 hour' ELSE interval '-1 hour' END
			FROM generate_series(1, $1::int) AS g`, e.seed); err != nil {
			return err
		}
		if _, err := e.admin.ExecContext(ctx, "ANALYZE "+e.schema+".bench_names"); err != nil {
			return err
		}
	}
	_, _ = e.admin.ExecContext(ctx, "CHECKPOINT")
	return nil
}

func (e *benchEnv) Close() {
	e.killMemcached()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = e.admin.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+e.schema+" CASCADE")
	_ = e.admin.Close()
}

func (e *benchEnv) startMemcached() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	e.mcAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return e.runMemcached()
}

// runMemcached starts memcached on e.mcAddr (again, after killMemcached)
// and waits until it accepts connections.
func (e *benchEnv) runMemcached() error {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		bin = "/usr/bin/memcached"
	}
	_, port, _ := net.SplitHostPort(e.mcAddr)
	args := []string{"-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "64", "-c", "4096", "-t", "2"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	for try := 0; try < 50; try++ {
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start memcached (apt-get install -y memcached): %w", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		for i := 0; i < 200; i++ {
			if c, err := net.DialTimeout("tcp", e.mcAddr, 100*time.Millisecond); err == nil {
				c.Close()
				e.mcCmd, e.mcExited = cmd, exited
				return nil
			}
			select {
			case <-exited:
				i = 200 // the port is not free yet after a kill: start again
			case <-time.After(10 * time.Millisecond):
			}
		}
		_ = cmd.Process.Kill()
		<-exited
	}
	return errors.New("memcached did not start")
}

// killMemcached kills memcached with SIGKILL, losing every key.
func (e *benchEnv) killMemcached() {
	if e.mcCmd == nil {
		return
	}
	_ = e.mcCmd.Process.Kill()
	<-e.mcExited
	e.mcCmd = nil
}

// mcOps returns memcached's count of commands served so far: gets, stores
// (add, set, cas), touches, deletes, incr/decr.
func mcOps(addr string) (int64, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		return 0, err
	}
	counted := map[string]bool{"cmd_get": true, "cmd_set": true, "cmd_touch": true,
		"delete_hits": true, "delete_misses": true, "incr_hits": true, "incr_misses": true,
		"decr_hits": true, "decr_misses": true}
	var total int64
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		line := sc.Text()
		if line == "END" {
			return total, nil
		}
		f := strings.Fields(line)
		if len(f) == 3 && counted[f[1]] {
			n, _ := strconv.ParseInt(f[2], 10, 64)
			total += n
		}
	}
	return total, sc.Err()
}

// lockers builds the locker set for a mode. ok is false for modes that
// take no lock through txlock (bare, retry-only, add-poll-delete).
func lockers(mode, mcAddr string) ([]txlock.Option, error) {
	mc := func() *memcache.Client {
		c := memcache.New(mcAddr)
		c.Timeout = 500 * time.Millisecond
		c.MaxIdleConns = 64
		return c
	}
	switch mode {
	case "bare", "bare-cancellable", "retry-only", "bare+mc1", "bare+mc2", "bare+mc3", "bare+mclock", "bare+stmt1", "bare+advlock":
		return nil, nil
	case "add-poll-delete":
		return []txlock.Option{txlock.WithLocker(&addPollLocker{mc: mc()})}, nil
	case "local", "local-conns":
		return []txlock.Option{txlock.WithLocker(txlock.NewLocalLocker())}, nil
	case "local+commitcheck":
		return []txlock.Option{txlock.WithLocker(txlock.NewLocalLocker()), txlock.WithCommitCheck(txlock.CommitCheckAlways)}, nil
	case "advisory-rr":
		return []txlock.Option{txlock.WithLocker(advisorylock.New()), txlock.WithTxOptions(&sql.TxOptions{Isolation: sql.LevelRepeatableRead})}, nil
	case "memcached":
		return []txlock.Option{txlock.WithLocker(memcachelock.New(mc()))}, nil
	case "advisory":
		return []txlock.Option{txlock.WithLocker(advisorylock.New())}, nil
	case "memcached+advisory":
		return []txlock.Option{txlock.WithLocker(memcachelock.New(mc()), advisorylock.New())}, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// cpuBusy returns the machine's busy CPU time from /proc/stat (all
// processes: app, Postgres, memcached), in seconds: user, nice, system,
// irq and softirq. Steal (time the hypervisor ran someone else while this
// machine wanted the CPU) is not work done here and would charge a row for
// its neighbours; guest time is already inside user and nice.
func cpuBusy() float64 {
	busy, _, _ := cpuStat()
	return busy
}

// cpuStat returns, in seconds, the machine's busy CPU time (as cpuBusy),
// its steal time and all its time (every field but guest).
func cpuStat() (busy, steal, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseCPULine(line)
}

// parseCPULine reads /proc/stat's first line ("cpu" and the fields of
// proc(5), in USER_HZ) as cpuStat returns it.
func parseCPULine(line string) (busy, steal, total float64) {
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != "cpu" {
		return 0, 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		n /= 100 // USER_HZ
		switch i {
		case 0, 1, 2, 5, 6: // user, nice, system, irq, softirq
			busy += n
		case 7:
			steal += n
		case 8, 9: // guest, guest_nice: already in user, nice
			continue
		}
		total += n
	}
	return busy, steal, total
}

// stealMeter reports the share of the machine's time the hypervisor gave
// to others since it was made: a run where it is high ran on a crowded
// host, and its ratios are noisier than usual.
type stealMeter struct{ steal, total float64 }

func newStealMeter() stealMeter {
	_, steal, total := cpuStat()
	return stealMeter{steal, total}
}

// report reads /proc/stat again and says what share of the time since the
// meter was made was stolen.
func (m stealMeter) report() string {
	_, steal, total := cpuStat()
	if total <= m.total {
		return "steal n/a"
	}
	return fmt.Sprintf("steal %.1f%% of the machine's time (not counted as CPU)", 100*(steal-m.steal)/(total-m.total))
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }
