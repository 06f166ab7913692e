package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// The serve scenario: the same faults, seen from outside. Three
// examples/namecheck servers share the database and memcached; 150 HTTP
// clients reserve 10 hot names through them, while memcached is killed and
// started again 3 s later (well within the servers' 10 s lock wait), and
// later every server's Postgres backends are terminated, twice. It counts
// the answers by status: a 5xx is a request the faults cost.

type serveConfig struct {
	Name      string
	Locker    string // namecheck -locker
	Isolation string // namecheck -isolation
}

var serveConfigs = []serveConfig{
	{"memcached", "memcached", ""},
	{"memcached+advisory", "memcached,advisory", ""},
	{"advisory/repeatable read", "advisory", "repeatable-read"},
}

const (
	serveServers = 3
	serveClients = 150
	serveNames   = 10
	serveMCDown  = 3 * time.Second
)

func serveScenario(ctx context.Context, e *benchEnv, o options) error {
	if e.mcCmd == nil {
		return fmt.Errorf("the serve scenario kills and restarts memcached: run it without -memcached")
	}
	bin, err := buildNamecheck(ctx)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(bin))
	fmt.Printf("\n== faults through HTTP: %d namecheck servers, %d clients on %d hot names, %v per configuration; "+
		"memcached killed and started again %v later, then every server's backends terminated, twice\n",
		serveServers, serveClients, serveNames, o.duration, serveMCDown)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "configuration\trequests\t201\t409\t503\t500\tother\tp99 ms\t")
	var bad []string
	for _, c := range serveConfigs {
		if !o.want(c.Name) {
			continue
		}
		st, err := runServeConfig(ctx, e, o, c, bin)
		if err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		other := st.total - st.codes[201] - st.codes[409] - st.codes[503] - st.codes[500]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t\n", c.Name, st.total, st.codes[201], st.codes[409],
			st.codes[503], st.codes[500], other, pct(st.lat, 0.99)*1000)
		if st.codes[201] == 0 {
			bad = append(bad, c.Name+": no reservation succeeded")
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%v", bad)
	}
	return nil
}

// buildNamecheck compiles examples/namecheck into a temporary directory.
func buildNamecheck(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp("", "txlockbench-namecheck")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "namecheck")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./examples/namecheck")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build ./examples/namecheck (run txlockbench from the repository): %w", err)
	}
	return bin, nil
}

type serveStats struct {
	mu    sync.Mutex
	total int
	codes map[int]int
	lat   []float64
}

func (s *serveStats) add(code int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total++
	s.codes[code]++
	s.lat = append(s.lat, d.Seconds())
}

func runServeConfig(ctx context.Context, e *benchEnv, o options, c serveConfig, bin string) (*serveStats, error) {
	app := "txlockserve_" + e.schema
	u, err := url.Parse(e.dbURL)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	var addrs []string
	var cmds []*exec.Cmd
	defer func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	}()
	for range serveServers {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		args := []string{"serve", "-addr", addr, "-db", u.String(), "-memcached", e.mcAddr, "-locker", c.Locker}
		if c.Isolation != "" {
			args = append(args, "-isolation", c.Isolation)
		}
		cmd := exec.Command(bin, args...)
		cmd.Stderr = io.Discard // request logs; the statuses are what is measured
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		cmds = append(cmds, cmd)
		addrs = append(addrs, addr)
	}
	for _, a := range addrs {
		if err := waitHTTP(a); err != nil {
			return nil, err
		}
	}
	if _, err := e.admin.ExecContext(ctx, "TRUNCATE "+e.schema+".name_reservations"); err != nil {
		return nil, err
	}
	st := &serveStats{codes: map[int]int{}}
	loadCtx, stop := context.WithTimeout(ctx, o.duration)
	defer stop()
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: serveClients}}
	for range serveClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveClient(loadCtx, client, addrs, st)
		}()
	}
	err = serveFaults(loadCtx, e, o.duration, app)
	wg.Wait()
	return st, err
}

// serveFaults strikes at a quarter of the run (memcached), then at three
// fifths and four fifths (the servers' backends).
func serveFaults(ctx context.Context, e *benchEnv, d time.Duration, app string) error {
	sleep := func(until time.Duration, start time.Time) {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(start.Add(until))):
		}
	}
	start := time.Now()
	sleep(d/4, start)
	e.killMemcached()
	sleep(d/4+serveMCDown, start)
	if err := e.runMemcached(); err != nil {
		return err
	}
	for _, at := range []time.Duration{d * 3 / 5, d * 4 / 5} {
		sleep(at, start)
		if _, err := e.admin.ExecContext(context.Background(),
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, app); err != nil {
			return err
		}
	}
	return nil
}

func serveClient(ctx context.Context, client *http.Client, addrs []string, st *serveStats) {
	for ctx.Err() == nil {
		body := fmt.Sprintf(`{"name": "hot%d", "ttl": "1s"}`, rand.N(serveNames))
		req, err := http.NewRequest(http.MethodPost, "http://"+addrs[rand.N(len(addrs))]+"/names", bytes.NewBufferString(body))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			st.add(0, time.Since(start))
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		st.add(resp.StatusCode, time.Since(start))
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

func waitHTTP(addr string) error {
	for range 300 {
		resp, err := http.Get("http://" + addr + "/names/probe")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("namecheck on %s did not start", addr)
}
