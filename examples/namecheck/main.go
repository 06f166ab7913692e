// Command namecheck is a name-reservation service built on txlock: a
// display name may be active only once at a time but can be reserved again
// after it expires, so no UNIQUE constraint can guard it and the service
// checks, then inserts, inside txlock.Run.
//
// Usage:
//
//	namecheck [serve] [-addr 127.0.0.1:8080] [-mode txlock|naive] [-db URL] [-memcached LIST] [-locker L] [-isolation I]
//	namecheck race [-mode naive|txlock] [-n 200] [-names 10] [-db URL] [-memcached LIST] [-locker L]
//
// serve runs the HTTP service:
//
//	POST /names        {"name": "Ann", "ttl": "1h"}  → 201, 400, 409
//	GET  /names/{name}                               → 200, 404
//
// race starts the service in-process, fires concurrent POSTs at a few names,
// counts the names that ended up with more than one active reservation and
// ends with the line "duplicates: N".
//
// With nothing configured it runs on a temporary embedded SQLite database
// (pure Go, no server needed) with the in-process locker. -db (or
// $TXLOCK_DATABASE_URL) takes a Postgres URL, or sqlite:PATH for an SQLite
// file that is kept; -memcached (or $TXLOCK_MEMCACHED) takes a
// comma-separated list of memcached servers, which makes memcached the
// default locker. -locker is memcached, advisory (Postgres only) or local,
// or a comma-separated list of them taken in order, e.g. memcached,advisory.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/migrations"
)

// Timeouts of the HTTP server and of each reservation's lock wait. The lock
// wait is below the write timeout so that a request stuck behind a hot name
// gets a 503 rather than a dropped connection.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 15 * time.Second
	requestLockWait   = 10 * time.Second
	// reserveTimeout bounds a reservation, every attempt and lock wait
	// included, to well inside writeTimeout.
	reserveTimeout = writeTimeout - 5*time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "namecheck:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "namecheck:", err)
		os.Exit(1)
	}
}

// errUsage is wrapped by errors in the command line.
var errUsage = errors.New("usage")

const usage = `usage: namecheck [command] [flags]

Commands:
  serve   run the name-reservation HTTP service (the default)
            POST /names {"name": "Ann", "ttl": "1h"} → 201, 400, 409
            GET  /names/{name}                       → 200, 404
          -mode naive serves without txlock (check, then insert), to show the bug
  race    start the service in-process, fire concurrent POSTs at a few names,
          count names left with more than one active reservation ("duplicates: N")

With nothing configured both use a temporary embedded SQLite and the in-process
locker; -db postgres://... and -memcached host:port share them between processes.

namecheck serve -h and namecheck race -h list each command's flags.
`

// run runs the subcommand args name ("serve" when there is none).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	if len(args) > 0 && cmd == "serve" && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		cmd = "help"
	}
	switch cmd {
	case "serve":
		return serveCommand(ctx, args, stderr)
	case "race":
		return raceCommand(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q: want serve or race", errUsage, cmd)
}

// Config is what both subcommands are configured with.
type Config struct {
	// DB is "", "sqlite:PATH" or a Postgres URL; see OpenDatabase.
	DB string
	// Memcached is a comma-separated list of memcached servers.
	Memcached string
	// Locker is the -locker value; see NewLockers.
	Locker string
	// Isolation is "", read-committed, repeatable-read or serializable.
	Isolation string
}

// register adds the shared flags to fs, each defaulting to its environment
// variable.
func (c *Config) register(fs *flag.FlagSet) {
	fs.StringVar(&c.DB, "db", os.Getenv("TXLOCK_DATABASE_URL"),
		"database: postgres://... URL, sqlite:PATH, or empty for a temporary embedded SQLite (env TXLOCK_DATABASE_URL)")
	fs.StringVar(&c.Memcached, "memcached", os.Getenv("TXLOCK_MEMCACHED"),
		"comma-separated memcached servers, host:port (env TXLOCK_MEMCACHED)")
	fs.StringVar(&c.Locker, "locker", os.Getenv("TXLOCK_LOCKER"),
		"memcached, advisory (Postgres only) or local, or a list such as memcached,advisory; default memcached if servers are given, else local (env TXLOCK_LOCKER)")
	fs.StringVar(&c.Isolation, "isolation", os.Getenv("TXLOCK_ISOLATION"),
		"Postgres isolation level: read-committed, repeatable-read or serializable; default the server's (env TXLOCK_ISOLATION)")
}

var isolationLevels = map[string]sql.IsolationLevel{
	"":                sql.LevelDefault,
	"read-committed":  sql.LevelReadCommitted,
	"repeatable-read": sql.LevelRepeatableRead,
	"serializable":    sql.LevelSerializable,
}

// check validates what can be checked before connecting to anything.
func (c *Config) check() error {
	level, ok := isolationLevels[c.Isolation]
	if !ok {
		return fmt.Errorf("%w: -isolation %q: want read-committed, repeatable-read or serializable", errUsage, c.Isolation)
	}
	if level != sql.LevelDefault && !isPostgresURL(c.DB) {
		return fmt.Errorf("%w: -isolation needs Postgres (-db postgres://...)", errUsage)
	}
	return nil
}

// Env is a service's database and lockers, opened from a Config.
type Env struct {
	DB      *Database
	Lockers *Lockers
}

// OpenEnv opens the database (a fresh one if fresh is set; see
// OpenDatabase) and the lockers. With withLockers unset it opens no lockers
// (the naive race mode takes none).
func OpenEnv(ctx context.Context, c Config, fresh, withLockers bool) (*Env, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	db, err := OpenDatabase(ctx, c.DB, fresh)
	if err != nil {
		return nil, err
	}
	env := &Env{DB: db, Lockers: &Lockers{Name: "none"}}
	if withLockers {
		env.Lockers, err = NewLockers(c.Locker, db.Dialect, splitList(c.Memcached))
		if err != nil {
			return nil, errors.Join(err, db.Close())
		}
	}
	return env, nil
}

// Close closes the lockers and the database.
func (e *Env) Close() error {
	return errors.Join(e.Lockers.Close(), e.DB.Close())
}

// Server returns the service on this environment; opts are added to its
// txlock.Run options.
func (e *Env) Server(c Config, log *slog.Logger, opts ...txlock.Option) *Server {
	runOpts := []txlock.Option{txlock.WithLockWait(requestLockWait)}
	if len(e.Lockers.List) > 0 {
		runOpts = append(runOpts, txlock.WithLocker(e.Lockers.List...))
	}
	if level := isolationLevels[c.Isolation]; level != sql.LevelDefault {
		runOpts = append(runOpts, txlock.WithTxOptions(&sql.TxOptions{Isolation: level}))
	}
	if e.DB.Dialect == migrations.Postgres {
		// A reservation's answer must say whether it was stored: look up
		// every COMMIT that fails in flight, not only those after a fault
		// this process saw (the default), at one round trip per request.
		runOpts = append(runOpts, txlock.WithCommitCheck(txlock.CommitCheckAlways))
	}
	return &Server{
		DB:         e.DB.DB,
		RunOptions: append(runOpts, opts...),
		Log:        log,
	}
}

// newHTTPServer returns an http.Server with the service's timeouts.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

func serveCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("namecheck serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	c.register(fs)
	addr := fs.String("addr", envOr("TXLOCK_ADDR", "127.0.0.1:8080"), "listen address (env TXLOCK_ADDR)")
	mode := fs.String("mode", modeTxlock, "txlock (check and insert inside txlock.Run) or naive (check, then insert, no transaction, no lock: the bug, to compare)")
	gap := fs.Duration("gap", DefaultNaiveGap, "naive mode: pause between check and insert, standing for the handler's other work")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *mode != modeNaive && *mode != modeTxlock {
		return fmt.Errorf("%w: -mode %q: want %s or %s", errUsage, *mode, modeNaive, modeTxlock)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	env, err := OpenEnv(ctx, c, false, *mode == modeTxlock)
	if err != nil {
		return err
	}
	defer func() {
		if err := env.Close(); err != nil {
			log.Error("close", "err", err)
		}
	}()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := env.Server(c, log)
	if *mode == modeNaive {
		srv.Naive, srv.NaiveGap = true, *gap
		log.Warn("naive mode: names are checked, then inserted, with no transaction and no lock; duplicates will happen")
	}
	hs := newHTTPServer(srv.Handler(), log)

	log.Info("namecheck serving", "addr", "http://"+ln.Addr().String(), "mode", *mode, "database", env.DB.Desc, "locker", env.Lockers.Name)
	if c.DB == "" {
		log.Info("nothing configured: embedded SQLite and the in-process locker; names are lost on exit " +
			"and guarded in this process only. Set -db (TXLOCK_DATABASE_URL) and -memcached (TXLOCK_MEMCACHED) to share them.")
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// parseFlags parses args into fs and rejects leftover arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected arguments %q", errUsage, fs.Name(), fs.Args())
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
