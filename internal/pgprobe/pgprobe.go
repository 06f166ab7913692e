// Package pgprobe tells, once per database handle, whether a database is a
// PostgreSQL that can look a transaction up by id (txid_status and
// txid_current_if_assigned: PostgreSQL 10 and later), for txlock's lookup
// of COMMITs whose outcome is unknown. txlock's database/sql adapter and
// txlockpgx share it, so that they ask the same question the same way.
package pgprobe

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/txlock/txlock/sqladapter"
)

// Query answers true on such a PostgreSQL. It must run outside any
// transaction: inside one that has written, txid_current_if_assigned is
// that transaction's id, whose status is "in progress", and the answer
// would be no. It assigns no transaction id.
const Query = `SELECT txid_status(txid_current_if_assigned()) IS NULL`

// Timeout bounds one probe, the wait for a connection included.
const Timeout = 5 * time.Second

// Cache remembers the answer for each handle (a *sql.DB, a *pgxpool.Pool)
// while the handle lives: its keys are weak, so a handle the program has
// dropped is not kept alive by the cache, and its entry goes with it. The
// zero value is ready to use.
type Cache[T any] struct {
	m sync.Map // weak.Pointer[T] → *entry
}

// entry is what is known of one handle. One goroutine at a time probes
// it; the others wait for that probe's answer, or for their own context.
type entry struct {
	mu       sync.Mutex
	answered bool
	yes      bool
	probing  chan struct{} // closed when the probe in flight ends; nil when none is
}

// Ask returns the answer for h, running ask (which should run Query on h)
// the first time, and again later as long as no answer came: a probe that
// timed out, lost its connection or met a server shutting down or full is
// not remembered. A caller whose context ends while another's probe is in
// flight gets no.
func (c *Cache[T]) Ask(ctx context.Context, h *T, ask func(ctx context.Context) (bool, error)) bool {
	key := weak.Make(h)
	v, ok := c.m.Load(key)
	if !ok {
		var loaded bool
		v, loaded = c.m.LoadOrStore(key, &entry{})
		if !loaded {
			runtime.AddCleanup(h, func(k weak.Pointer[T]) { c.m.Delete(k) }, key)
		}
	}
	e := v.(*entry)
	for {
		e.mu.Lock()
		if e.answered {
			yes := e.yes
			e.mu.Unlock()
			return yes
		}
		if e.probing == nil {
			done := make(chan struct{})
			e.probing = done
			e.mu.Unlock()
			yes, answered := run(ctx, ask)
			e.mu.Lock()
			e.yes, e.answered, e.probing = yes, answered, nil
			e.mu.Unlock()
			close(done)
			return yes
		}
		done := e.probing
		e.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return false
		}
	}
}

// Known reports the remembered answer for h, if there is one.
func (c *Cache[T]) Known(h *T) (yes, known bool) {
	v, ok := c.m.Load(weak.Make(h))
	if !ok {
		return false, false
	}
	e := v.(*entry)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.yes, e.answered
}

// run runs one probe. answered reports whether the server gave an answer
// that will not change: the probe's result, or an error about the statement
// itself (an undefined function, on a server that only speaks PostgreSQL's
// protocol, or another database).
func run(ctx context.Context, ask func(context.Context) (bool, error)) (yes, answered bool) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	yes, err := ask(ctx)
	switch {
	case err == nil:
		return yes, true
	case ctx.Err() != nil, sqladapter.IsConnError(err):
		return false, false
	}
	if code, ok := sqladapter.SQLState(err); ok && Transient(code) {
		return false, false
	}
	return false, true
}

// Transient reports the SQLSTATE classes that say nothing about the
// server's functions: connection exceptions, insufficient resources,
// operator intervention (shutdown, a terminated backend), system errors.
func Transient(code string) bool {
	for _, class := range []string{"08", "53", "57", "58"} {
		if strings.HasPrefix(code, class) {
			return true
		}
	}
	return false
}
