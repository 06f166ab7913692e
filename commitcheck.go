package txlock

import (
	"context"
	"database/sql"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/txlock/txlock/internal/pgprobe"
)

// How an unknown COMMIT outcome is looked up (see CommitCheck). The
// statements use the txid_* functions, which every PostgreSQL from 10 on
// has (13 renamed them pg_current_xact_id_if_assigned and pg_xact_status
// and kept the old names).
const (
	recordTxIDQuery = `SELECT txid_current_if_assigned()`
	txStatusQuery   = `SELECT txid_status($1)`
	// faultMemory is how long CommitCheckAuto keeps recording ids after
	// a fault.
	faultMemory = 10 * time.Minute
	// lookupBudget bounds the lookup of one unknown COMMIT; lookupEvery is
	// the pause between tries while the database cannot be reached or
	// still reports the transaction in progress (its backend is exiting).
	lookupBudget = 5 * time.Second
	lookupEvery  = 50 * time.Millisecond
)

// lastFault is when this process last saw a fault, in Unix nanoseconds.
var lastFault atomic.Int64

func noteFault() { lastFault.Store(time.Now().UnixNano()) }

// shouldRecord says whether this attempt records its transaction id.
func shouldRecord(ctx context.Context, cc CommitCheck, db Database) bool {
	switch cc {
	case CommitCheckNever:
		return false
	case CommitCheckAuto:
		last := lastFault.Load()
		if last == 0 || time.Since(time.Unix(0, last)) > faultMemory {
			return false
		}
	}
	return db.Postgres(ctx)
}

// recordTxID returns the transaction's id, or 0 when it has none because
// it wrote nothing.
func recordTxID(ctx context.Context, tx Tx) (int64, error) {
	var id sql.NullInt64
	if err := tx.QueryRow(ctx, recordTxIDQuery).Scan(&id); err != nil {
		return 0, err
	}
	return id.Int64, nil
}

// lookupCommit asks the database, on another connection, what became of
// transaction id after its COMMIT failed in flight. It tries until it gets
// an answer other than "in progress" or lookupBudget runs out, on a context
// detached from the caller's: the caller may have given up, but the answer
// still decides between success and retry.
func lookupCommit(ctx context.Context, db Database, id int64) CommitOutcome {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupBudget)
	defer cancel()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return CommitUnknown
		case <-t.C:
		}
		switch status, err := txStatus(ctx, db, id); {
		case err != nil, status == "in progress":
			t.Reset(lookupEvery)
		case status == "committed":
			return CommitFoundCommitted
		case status == "aborted":
			return CommitFoundAborted
		default: // NULL: too old to tell
			return CommitUnknown
		}
	}
}

func txStatus(ctx context.Context, db Database, id int64) (string, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return "", err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var status sql.NullString
	if err := tx.QueryRow(ctx, txStatusQuery, id).Scan(&status); err != nil {
		return "", err
	}
	return status.String, nil
}

// Drivers known not to talk to PostgreSQL, which are never probed.
var notPostgres = []string{
	"github.com/DATA-DOG/go-sqlmock",
	"modernc.org/sqlite",
	"github.com/mattn/go-sqlite3",
	"github.com/go-sql-driver/mysql",
	"github.com/microsoft/go-mssqldb",
	"github.com/denisenkom/go-mssqldb",
	"github.com/sijms/go-ora",
}

// postgresDBs remembers, per *sql.DB, whether it can be asked.
var postgresDBs pgprobe.Cache[sql.DB]

// isPostgres probes b once: a *sql.DB whose driver is not known to be
// something else runs the probe query, on a connection of the pool,
// outside any transaction (Run asks before it begins one). Other Beginners
// are not probed and count as not PostgreSQL: a *sql.Conn is one
// connection, and when its COMMIT fails in flight it is the connection
// that broke, with no other to ask on.
func isPostgres(ctx context.Context, b Beginner) bool {
	db, ok := b.(*sql.DB)
	if !ok || knownNotPostgres(db.Driver()) {
		return false
	}
	return postgresDBs.Ask(ctx, db, func(ctx context.Context) (bool, error) {
		var yes bool
		err := db.QueryRowContext(ctx, pgprobe.Query).Scan(&yes)
		return yes, err
	})
}

// Database systems by driver package, as OpenTelemetry's db.system.name
// names them.
var systems = []struct{ pkg, system string }{
	{"github.com/jackc/pgx", "postgresql"},
	{"github.com/lib/pq", "postgresql"},
	{"modernc.org/sqlite", "sqlite"},
	{"github.com/mattn/go-sqlite3", "sqlite"},
	{"github.com/go-sql-driver/mysql", "mysql"},
	{"github.com/microsoft/go-mssqldb", "microsoft.sql_server"},
	{"github.com/denisenkom/go-mssqldb", "microsoft.sql_server"},
	{"github.com/sijms/go-ora", "oracle.db"},
}

// systemOfDriver names the system of a driver or driver connection, or "".
func systemOfDriver(drv any) string {
	pkg := driverPackage(drv)
	for _, s := range systems {
		if inPackage(pkg, s.pkg) {
			return s.system
		}
	}
	return ""
}

// inPackage reports whether package path pkg is root or below it. It runs
// on every BEGIN, so it does not build strings.
func inPackage(pkg, root string) bool {
	rest, ok := strings.CutPrefix(pkg, root)
	return ok && (rest == "" || rest[0] == '/')
}

func driverPackage(drv any) string {
	if drv == nil {
		return ""
	}
	t := reflect.TypeOf(drv)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath()
}

func knownNotPostgres(drv any) bool {
	pkg := driverPackage(drv)
	if pkg == "" {
		return false
	}
	for _, p := range notPostgres {
		if inPackage(pkg, p) {
			return true
		}
	}
	return false
}
