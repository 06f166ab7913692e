package testenv

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// PGProxy is a TCP proxy in front of PostgreSQL that can cut a client's
// connection right after it sent COMMIT: the server receives COMMIT and
// answers it, the client never hears the answer. That is an ambiguous
// COMMIT whose outcome is known (committed) and can be looked up.
type PGProxy struct {
	t        testing.TB
	l        net.Listener
	upstream string
	armed    atomic.Bool
	early    atomic.Bool
	noCancel atomic.Bool
	// holdCancel delays cancel requests (see CutNextCommitEarly).
	holdCancel atomic.Bool
	cut        atomic.Int32
	wg         sync.WaitGroup
}

// StartPGProxy proxies to the server of url (host:port only) and returns a
// URL that connects through the proxy, otherwise the same.
func StartPGProxy(t testing.TB, rawURL string) (*PGProxy, string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse %s: %v", rawURL, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p := &PGProxy{t: t, l: l, upstream: u.Host}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = l.Close()
		p.wg.Wait()
	})
	u.Host = l.Addr().String()
	return p, u.String()
}

// CutNextCommit arms the proxy: the next COMMIT any client sends is
// forwarded, its answer swallowed, and that client's connection closed.
func (p *PGProxy) CutNextCommit() { p.armed.Store(true) }

// CutNextCommitEarly is CutNextCommit, except that the client's connection
// is closed as soon as COMMIT is forwarded, before the server has answered:
// the server may still be working on it when the client asks what became
// of it.
//
// From then on the proxy holds each cancel request for cancelHold before it
// passes it on: Postgres ignores a cancel that reaches a backend still
// waiting for its next command, and on a loaded machine the backend may not
// yet have read the COMMIT when the client's cancel, sent as soon as its
// connection broke, arrives.
func (p *PGProxy) CutNextCommitEarly() {
	p.early.Store(true)
	p.holdCancel.Store(true)
	p.armed.Store(true)
}

// cancelHold is how long a cancel request waits in the proxy after an early
// cut (see CutNextCommitEarly).
const cancelHold = 500 * time.Millisecond

// DropCancelRequests makes the proxy drop the cancel requests clients
// send (pgx sends one when it closes a broken connection), as a network
// that is cut would: a statement the server is still running goes on.
func (p *PGProxy) DropCancelRequests() { p.noCancel.Store(true) }

// Cuts reports how many connections the proxy has cut.
func (p *PGProxy) Cuts() int { return int(p.cut.Load()) }

func (p *PGProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *PGProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return
	}
	defer server.Close()
	// swallow, once set, makes the server-to-client copy stop at the next
	// answer and close both connections.
	var swallow atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				if swallow.Load() {
					if client.Close() == nil {
						p.cut.Add(1)
					}
					return
				}
				if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				_ = client.Close()
				return
			}
		}
	}()
	p.forward(client, server, &swallow)
	_ = server.Close()
	<-done
}

// forward copies the client's messages to the server one at a time: the
// startup message (no type byte), then typed messages.
func (p *PGProxy) forward(client, server net.Conn, swallow *atomic.Bool) {
	var hdr [5]byte
	if _, err := io.ReadFull(client, hdr[:4]); err != nil {
		return
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	body := make([]byte, max(n-4, 0))
	if _, err := io.ReadFull(client, body); err != nil {
		return
	}
	const cancelRequestCode = 80877102
	if len(body) >= 4 && binary.BigEndian.Uint32(body) == cancelRequestCode {
		if p.noCancel.Load() {
			return
		}
		if p.holdCancel.Load() {
			time.Sleep(cancelHold)
		}
	}
	if _, err := server.Write(append(hdr[:4:4], body...)); err != nil {
		return
	}
	for {
		if _, err := io.ReadFull(client, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:]))
		body := make([]byte, max(n-4, 0))
		if _, err := io.ReadFull(client, body); err != nil {
			return
		}
		commit := (hdr[0] == 'Q' || hdr[0] == 'P') && bytes.Contains(bytes.ToLower(body), []byte("commit"))
		if commit && p.armed.CompareAndSwap(true, false) {
			swallow.Store(true)
		}
		if _, err := server.Write(append(hdr[:], body...)); err != nil {
			return
		}
		if swallow.Load() && p.early.CompareAndSwap(true, false) {
			p.cut.Add(1)
			_ = client.Close()
		}
	}
}
