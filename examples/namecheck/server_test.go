package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testenv"
	"github.com/txlock/txlock/migrations"
)

// clock is a controllable Server.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// service is the name service on a private Postgres schema, served by
// httptest.
type service struct {
	*httptest.Server
	db    *sql.DB
	clock *clock
}

// newService starts the service on a private Postgres schema with the
// lockers named by locker (see NewLockers); servers are memcached servers.
func newService(t *testing.T, locker string, servers ...string) *service {
	t.Helper()
	db := testenv.Postgres(t)
	ctx := t.Context()
	if err := migrate(ctx, db, Postgres); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	lockers, err := NewLockers(locker, Postgres, servers)
	if err != nil {
		t.Fatalf("NewLockers: %v", err)
	}
	t.Cleanup(func() { _ = lockers.Close() })
	env := &Env{DB: &Database{DB: db, Dialect: Postgres}, Lockers: lockers}
	clk := &clock{t: time.Now().UTC().Truncate(time.Microsecond)}
	srv := env.Server(Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.Now = clk.Now
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &service{Server: ts, db: db, clock: clk}
}

// do sends a request and returns the status and the decoded JSON body.
func (s *service) do(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

func (s *service) reserve(t *testing.T, name, ttl string) (int, map[string]any) {
	t.Helper()
	return s.do(t, http.MethodPost, "/names", fmt.Sprintf(`{"name": %q, "ttl": %q}`, name, ttl))
}

func (s *service) rows(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.db.QueryRowContext(t.Context(), "SELECT count(*) FROM "+migrations.Table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestConcurrentReservationsOneWinner fires concurrent POSTs for one name,
// spelled several ways, with each locker: exactly one 201, the rest 409.
func TestConcurrentReservationsOneWinner(t *testing.T) {
	for _, locker := range []string{lockerLocal, lockerAdvisory, lockerMemcached, lockerMemcached + "," + lockerAdvisory} {
		t.Run(locker, func(t *testing.T) {
			t.Parallel()
			var servers []string
			if strings.Contains(locker, lockerMemcached) {
				servers = []string{testenv.StartMemcached(t).Addr()}
			}
			s := newService(t, locker, servers...)
			const n = 32
			statuses := make([]int, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					statuses[i], _ = s.reserve(t, []string{"Ann", "ann ", "ANN"}[i%3], "1h")
				})
			}
			close(start)
			wg.Wait()
			count := map[int]int{}
			for _, st := range statuses {
				count[st]++
			}
			if count[http.StatusCreated] != 1 || count[http.StatusConflict] != n-1 {
				t.Fatalf("statuses %v: want one 201 and %d 409s", count, n-1)
			}
			if got := s.rows(t); got != 1 {
				t.Fatalf("%d rows, want 1", got)
			}
		})
	}
}

func TestReserveAndLookup(t *testing.T) {
	t.Parallel()
	s := newService(t, lockerLocal)
	status, body := s.reserve(t, "  Zoë ", "1h")
	if status != http.StatusCreated || body["name"] != "zoë" || body["owner"] != DefaultOwner {
		t.Fatalf("POST: %d %v", status, body)
	}
	created, _ := time.Parse(time.RFC3339Nano, body["created_at"].(string))
	expires, _ := time.Parse(time.RFC3339Nano, body["expires_at"].(string))
	if !created.Equal(s.clock.Now()) || expires.Sub(created) != time.Hour {
		t.Errorf("created %v expires %v, want now and now+1h", created, expires)
	}
	for _, path := range []string{"/names/zo%C3%AB", "/names/ZO%C3%8B", "/names/Zoe%CC%88"} {
		status, got := s.do(t, http.MethodGet, path, "")
		if status != http.StatusOK || got["id"] != body["id"] || got["name"] != "zoë" {
			t.Errorf("GET %s: %d %v, want the reservation %v", path, status, got, body)
		}
	}
	if status, _ := s.reserve(t, "ZOË", "2h"); status != http.StatusConflict {
		t.Errorf("second POST: %d, want 409", status)
	}
}

// TestExpiredNameIsReservableAgain uses the service's clock: a name
// reserved for 1 s is free 2 s later, and can be reserved again.
func TestExpiredNameIsReservableAgain(t *testing.T) {
	t.Parallel()
	s := newService(t, lockerLocal)
	if status, _ := s.reserve(t, "bob", "1s"); status != http.StatusCreated {
		t.Fatalf("first POST: %d", status)
	}
	if status, _ := s.reserve(t, "Bob", "1s"); status != http.StatusConflict {
		t.Fatalf("POST while active: %d, want 409", status)
	}
	s.clock.Advance(2 * time.Second)
	if status, _ := s.do(t, http.MethodGet, "/names/bob", ""); status != http.StatusNotFound {
		t.Fatalf("GET after expiry: %d, want 404", status)
	}
	status, body := s.reserve(t, "BOB", "1h")
	if status != http.StatusCreated {
		t.Fatalf("POST after expiry: %d %v, want 201", status, body)
	}
	if status, got := s.do(t, http.MethodGet, "/names/bob", ""); status != http.StatusOK || got["id"] != body["id"] {
		t.Fatalf("GET: %d %v, want the new reservation %v", status, got, body)
	}
	if got := s.rows(t); got != 2 {
		t.Fatalf("%d rows, want the expired one and the new one", got)
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	s := newService(t, lockerLocal)
	long := strings.Repeat("n", MaxNameLen+1)
	for _, tc := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"empty name", "POST", "/names", `{"name": ""}`, 400},
		{"blank name", "POST", "/names", `{"name": "  "}`, 400},
		{"no name", "POST", "/names", `{"ttl": "1h"}`, 400},
		{"long name", "POST", "/names", `{"name": "` + long + `"}`, 400},
		{"control character", "POST", "/names", `{"name": "a\u0007b"}`, 400},
		{"dot", "POST", "/names", `{"name": "."}`, 400},
		{"dot dot", "POST", "/names", `{"name": ".."}`, 400},
		{"slash", "POST", "/names", `{"name": "/"}`, 400},
		{"slash inside", "POST", "/names", `{"name": "a/b"}`, 400},
		{"NUL", "POST", "/names", `{"name": "a\u0000b"}`, 400},
		{"bad ttl", "POST", "/names", `{"name": "x", "ttl": "soon"}`, 400},
		{"negative ttl", "POST", "/names", `{"name": "x", "ttl": "-1h"}`, 400},
		{"zero ttl", "POST", "/names", `{"name": "x", "ttl": "0s"}`, 400},
		{"huge ttl", "POST", "/names", `{"name": "x", "ttl": "9000h"}`, 400},
		{"ttl as number", "POST", "/names", `{"name": "x", "ttl": 3600}`, 400},
		{"bad JSON", "POST", "/names", `{"name": `, 400},
		{"not an object", "POST", "/names", `["x"]`, 400},
		{"unknown field", "POST", "/names", `{"name": "x", "expires": "never"}`, 400},
		{"two values", "POST", "/names", `{"name": "x"} {"name": "y"}`, 400},
		{"empty body", "POST", "/names", ``, 400},
		{"oversized body", "POST", "/names", `{"name": "x", "owner": "` + strings.Repeat("o", MaxBodyBytes) + `"}`, 400},
		{"long owner", "POST", "/names", `{"name": "x", "owner": "` + strings.Repeat("o", MaxOwnerLen+1) + `"}`, 400},
		{"lookup long name", "GET", "/names/" + long, "", 400},
		{"lookup free name", "GET", "/names/nobody", "", 404},
		{"delete", "DELETE", "/names/x", "", 405},
		{"put", "PUT", "/names", `{"name": "x"}`, 405},
		{"list", "GET", "/names", "", 405},
		{"unknown path", "GET", "/", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := s.do(t, tc.method, tc.path, tc.body)
			if status != tc.want {
				t.Fatalf("%s %s: %d %v, want %d", tc.method, tc.path, status, body, tc.want)
			}
			if status == 400 && body["error"] == "" {
				t.Errorf("400 without an error message")
			}
		})
	}
	if got := s.rows(t); got != 0 {
		t.Fatalf("bad requests stored %d rows", got)
	}
}

// TestEmbeddedSQLite runs the service on the embedded default: the same
// handlers and repository on modernc.org/sqlite.
func TestEmbeddedSQLite(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, err := OpenEnv(ctx, Config{}, false, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Error(err)
		}
	})
	if env.DB.Dialect != SQLite || env.Lockers.Name != lockerLocal {
		t.Fatalf("default: %s with %s, want SQLite with local", env.DB.Dialect, env.Lockers.Name)
	}
	clk := &clock{t: time.Now()}
	srv := env.Server(Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.Now = clk.Now
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	s := &service{Server: ts, db: env.DB.DB, clock: clk}

	if status, body := s.reserve(t, "Ann", "1s"); status != http.StatusCreated {
		t.Fatalf("POST: %d %v", status, body)
	}
	if status, _ := s.reserve(t, "ann ", "1h"); status != http.StatusConflict {
		t.Fatalf("second POST: %d, want 409", status)
	}
	if status, body := s.do(t, http.MethodGet, "/names/ANN", ""); status != http.StatusOK || body["name"] != "ann" {
		t.Fatalf("GET: %d %v", status, body)
	}
	clk.Advance(1500 * time.Millisecond)
	if status, _ := s.do(t, http.MethodGet, "/names/ann", ""); status != http.StatusNotFound {
		t.Fatalf("GET after expiry: %d, want 404", status)
	}
	if status, _ := s.reserve(t, "ANN", "1h"); status != http.StatusCreated {
		t.Fatalf("POST after expiry: %d, want 201", status)
	}
	if got := s.rows(t); got != 2 {
		t.Fatalf("%d rows, want 2", got)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		c    Config
	}{
		{"advisory without Postgres", Config{Locker: lockerAdvisory}},
		{"memcached without servers", Config{Locker: lockerMemcached}},
		{"unknown locker", Config{Locker: "redis"}},
		{"isolation without Postgres", Config{Isolation: "serializable"}},
		{"unknown isolation", Config{Isolation: "snapshot"}},
		{"unknown database", Config{DB: "mysql://x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if env, err := OpenEnv(ctx, tc.c, false, true); err == nil {
				_ = env.Close()
				t.Fatalf("OpenEnv(%+v) succeeded", tc.c)
			}
		})
	}
}

// TestCommandLine: -h names both commands; a bad -mode is a usage error.
func TestCommandLine(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"help"}, {"--help"}} {
		var out, errOut strings.Builder
		if err := run(context.Background(), args, &out, &errOut); err != nil {
			t.Fatalf("namecheck %v: %v", args, err)
		}
		for _, want := range []string{"serve", "race", "-mode naive"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("namecheck %v does not mention %q:\n%s", args, want, out.String())
			}
		}
	}
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"serve", "-mode", "sloppy"}, &out, &errOut); !errors.Is(err, errUsage) {
		t.Errorf("serve -mode sloppy: %v, want a usage error", err)
	}
}
