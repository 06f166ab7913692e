package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/txlock/txlock/internal/testenv"
)

func TestRaceEmbeddedSQLite(t *testing.T) {
	t.Parallel()
	res, err := Race(t.Context(), RaceConfig{Mode: modeTxlock, Requests: 60, Names: 6}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicates != 0 || res.Created != 6 || res.Conflicts != 54 || res.Errors != 0 {
		t.Fatalf("txlock on SQLite: %+v, want 6 201s, 54 409s, no errors, no duplicates", res)
	}
	var out bytes.Buffer
	res.Print(&out)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; last != "duplicates: 0" {
		t.Fatalf("last line %q, want %q; output:\n%s", last, "duplicates: 0", out.String())
	}
}

func TestRacePostgres(t *testing.T) {
	url := testenv.PostgresURL(t)
	for _, tc := range []struct{ mode, locker string }{
		{modeNaive, ""},
		{modeTxlock, lockerLocal},
		{modeTxlock, lockerAdvisory},
		{modeTxlock, lockerMemcached},
	} {
		t.Run(tc.mode+"/"+tc.locker, func(t *testing.T) {
			t.Parallel()
			c := RaceConfig{Config: Config{DB: url, Locker: tc.locker}, Mode: tc.mode, Requests: 64, Names: 1,
				NaiveGap: 50 * time.Millisecond} // a wide gap: -race slows the requests' start
			if tc.locker == lockerMemcached {
				c.Memcached = testenv.StartMemcached(t).Addr()
			}
			var progress bytes.Buffer
			res, err := Race(t.Context(), c, &progress)
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 {
				t.Errorf("%d errors: %v", res.Errors, res.FirstErrors)
			}
			if tc.mode == modeNaive {
				if res.Duplicates == 0 || res.Created < 2 {
					t.Fatalf("naive: %+v, want duplicates", res)
				}
				return
			}
			if res.Duplicates != 0 || res.Created != 1 || res.Conflicts != 63 {
				t.Fatalf("txlock: %+v, want one 201, 63 409s, no duplicates", res)
			}
			if !strings.Contains(progress.String(), "\r[") || !strings.HasSuffix(progress.String(), "64/64\n") {
				t.Errorf("progress bar: %q", progress.String())
			}
		})
	}
}

func TestRaceCommandExitStatus(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"race", "-n", "20", "-names", "2"}, &out, &errOut); err != nil {
		t.Fatalf("race: %v\n%s", err, errOut.String())
	}
	if !strings.HasSuffix(out.String(), "\nduplicates: 0\n") {
		t.Fatalf("output:\n%s", out.String())
	}
	for _, args := range [][]string{
		{"race", "-mode", "sloppy"},
		{"race", "-n", "0"},
		{"race", "extra"},
		{"race", "-db", "sqlite:/tmp/x.db"},
		{"frobnicate"},
	} {
		if err := run(t.Context(), args, &out, &errOut); err == nil {
			t.Errorf("%v succeeded", args)
		}
	}
}

func TestPercentile(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Millisecond
	}
	if p50, p99 := percentile(ds, 50), percentile(ds, 99); p50 != 50*time.Millisecond || p99 != 99*time.Millisecond {
		t.Fatalf("p50 %v p99 %v", p50, p99)
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Fatalf("one sample: %v", got)
	}
}
