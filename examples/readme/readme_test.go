package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txlock/txlock/internal/testenv"
)

// TestREADMEShowsThisProgram: the README's complete example is this file,
// character for character, so that what a reader copies is what is tested.
func TestREADMEShowsThisProgram(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	block := "```go\n" + string(src) + "```\n"
	if !strings.Contains(string(readme), block) {
		t.Fatal("README.md does not show examples/readme/main.go as it is: copy the file into its complete example")
	}
}

// TestProgramRuns builds the program and runs it twice against a real
// Postgres and memcached: the first run reserves the name, the second finds
// it taken.
func TestProgramRuns(t *testing.T) {
	u := testenv.PostgresURL(t)
	m := testenv.StartMemcached(t)
	bin := filepath.Join(t.TempDir(), "readme")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, want := range []string{`reserved "ann"`, `"ann" is taken`} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "TXLOCK_DATABASE_URL="+u, "TXLOCK_MEMCACHED="+m.Addr())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("run: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), want) {
			t.Fatalf("output %q, want %q", out, want)
		}
	}
}
