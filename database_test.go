package txlock

import (
	"database/sql"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"
)

func TestSystemOfDatabase(t *testing.T) {
	mock, _, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	defer mock.Close()
	for _, tc := range []struct {
		driver, dsn, want string
	}{
		{"pgx", "postgres://127.0.0.1:1/none", "postgresql"},
		{"sqlite", ":memory:", "sqlite"},
	} {
		db, err := sql.Open(tc.driver, tc.dsn)
		if err != nil {
			t.Fatal(err)
		}
		if got := systemOf(sqlDatabase{db}); got != tc.want {
			t.Errorf("%s: System = %q, want %q", tc.driver, got, tc.want)
		}
		db.Close()
	}
	if got := systemOf(sqlDatabase{mock}); got != "" {
		t.Errorf("sqlmock: System = %q, want \"\"", got)
	}
}
