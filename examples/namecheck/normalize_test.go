package main

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeNameCollides(t *testing.T) {
	for _, group := range [][]string{
		{"ann", "Ann", "ann ", "  ANN\u00a0", "\tAnn\n"},
		{"straße", "STRASSE", "Strasse", "strasse"},
		{"josé", "Jose\u0301", "JOSÉ", "jos\u00e9"},
		{"ǆ", "ǅ", "Ǆ"},
	} {
		want, err := NormalizeName(group[0])
		if err != nil {
			t.Fatalf("NormalizeName(%q): %v", group[0], err)
		}
		for _, raw := range group[1:] {
			got, err := NormalizeName(raw)
			if err != nil || got != want {
				t.Errorf("NormalizeName(%q) = %q, %v; want %q like %q", raw, got, err, want, group[0])
			}
		}
	}
}

func TestNormalizeNameKeepsDistinctNames(t *testing.T) {
	a, _ := NormalizeName("ann")
	b, _ := NormalizeName("anne")
	c, _ := NormalizeName("a nn")
	if a == b || a == c {
		t.Errorf("distinct names collide: %q %q %q", a, b, c)
	}
	if got, err := NormalizeName("👨\u200d👩\u200d👧"); err != nil || got != "👨\u200d👩\u200d👧" {
		t.Errorf("emoji sequence = %q, %v", got, err)
	}
}

func TestNormalizeNameRejects(t *testing.T) {
	for _, raw := range []string{
		"", "   ", "\t\n",
		strings.Repeat("x", MaxNameLen+1),
		strings.Repeat("ß", MaxNameLen), // folds to 2×MaxNameLen characters
		"a\tb", "a\x00b", "a\u200bb", "\xff",
	} {
		if got, err := NormalizeName(raw); !errors.Is(err, ErrBadName) {
			t.Errorf("NormalizeName(%q) = %q, %v; want ErrBadName", raw, got, err)
		}
	}
	if _, err := NormalizeName(strings.Repeat("x", MaxNameLen)); err != nil {
		t.Errorf("a name of MaxNameLen characters: %v", err)
	}
}
