package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Memcached is a memcached process owned by one test.
type Memcached struct {
	t    testing.TB
	bin  string
	port int
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// MemcachedBinary finds the memcached executable: $TXLOCK_MEMCACHED_BIN,
// then $PATH, then /usr/bin/memcached.
func MemcachedBinary() (string, error) {
	if p := os.Getenv("TXLOCK_MEMCACHED_BIN"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("memcached"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/memcached", "/usr/local/bin/memcached"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("memcached not found in $PATH (install it: apt-get install -y memcached)")
}

// StartMemcached starts a memcached on a free 127.0.0.1 port and stops it
// when t ends. extra arguments are passed to memcached.
func StartMemcached(t testing.TB, extra ...string) *Memcached {
	t.Helper()
	bin, err := MemcachedBinary()
	if err != nil {
		Unavailable(t, "%v", err)
	}
	m := &Memcached{t: t, bin: bin, port: freePort(t), args: extra}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Addr is the host:port clients dial.
func (m *Memcached) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)) }

// Start starts the process (again) on the same port and waits until it
// accepts connections.
func (m *Memcached) Start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return
	}
	args := append([]string{"-l", "127.0.0.1", "-p", strconv.Itoa(m.port), "-U", "0", "-m", "64", "-c", "1024"}, m.args...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	var lastErr error
	for try := 0; try < 50; try++ {
		cmd := exec.Command(m.bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			m.t.Fatalf("start memcached: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		for i := 0; i < 100; i++ {
			c, err := net.DialTimeout("tcp", m.Addr(), 100*time.Millisecond)
			if err == nil {
				c.Close()
				m.cmd = cmd
				return
			}
			lastErr = err
			select {
			case <-exited:
				i = 100 // port not free yet after a kill: start again
			case <-time.After(20 * time.Millisecond):
			}
		}
		_ = cmd.Process.Kill()
		<-exited
	}
	m.t.Fatalf("memcached on %s did not start: %v", m.Addr(), lastErr)
}

// Kill stops the process with SIGKILL, losing every key, and waits for it.
func (m *Memcached) Kill() { m.signal(syscall.SIGKILL) }

// Stop stops the process with SIGTERM and waits for it.
func (m *Memcached) Stop() { m.signal(syscall.SIGTERM) }

// Restart kills the process and starts a new, empty one on the same port.
func (m *Memcached) Restart() {
	m.Kill()
	m.Start()
}

// Pause stops the process with SIGSTOP; Resume continues it.
func (m *Memcached) Pause() { m.sendOnly(syscall.SIGSTOP) }

// Resume continues a paused process.
func (m *Memcached) Resume() { m.sendOnly(syscall.SIGCONT) }

func (m *Memcached) sendOnly(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		_ = m.cmd.Process.Signal(sig)
	}
}

func (m *Memcached) signal(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGCONT)
	_ = m.cmd.Process.Signal(sig)
	// Wait is already running in Start's goroutine; poll for the exit.
	for i := 0; i < 500; i++ {
		if err := m.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.cmd = nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
