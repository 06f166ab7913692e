package txlockpgx

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock/internal/pgprobe"
	"github.com/txlock/txlock/internal/testenv"
)

func entryOf(p *pgxpool.Pool) (answered, yes bool) {
	yes, answered = pools.Known(p)
	return answered, yes
}

// TestProbeIsCachedButNotAnUnansweredOne: a probe that got no answer (its
// context ended) is not remembered; the next one asks the server and its
// answer is remembered.
func TestProbeIsCachedButNotAnUnansweredOne(t *testing.T) {
	u := testenv.PostgresURL(t)
	pool, err := pgxpool.New(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Ping(context.Background()); err != nil {
		pool.Close()
		testenv.Unavailable(t, "postgres: %v", err)
	}
	defer pool.Close()

	done, cancel := context.WithCancel(context.Background())
	cancel()
	if poolIsPostgres(done, pool) {
		t.Fatal("a probe on a cancelled context answered yes")
	}
	if answered, _ := entryOf(pool); answered {
		t.Fatal("an unanswered probe was cached")
	}
	if !poolIsPostgres(context.Background(), pool) {
		t.Fatal("PostgreSQL was not recognised")
	}
	if answered, yes := entryOf(pool); !answered || !yes {
		t.Fatalf("answer not cached: answered %v, yes %v", answered, yes)
	}
	if !poolIsPostgres(done, pool) {
		t.Fatal("the cached answer was not used")
	}
}

// TestProbeAnswerClassification: a server error that says nothing about
// its functions (a connection exception, too many clients, a shutdown, a
// system error) leaves the question open; an error about the statement
// itself (an undefined function, an unsupported feature) is a definite no.
func TestProbeAnswerClassification(t *testing.T) {
	for code, want := range map[string]bool{
		"08006": true, "53300": true, "57P01": true, "58030": true,
		"42883": false, "0A000": false, "42501": false,
	} {
		if got := pgprobe.Transient(code); got != want {
			t.Errorf("transient(%s) = %v, want %v", code, got, want)
		}
	}
}
