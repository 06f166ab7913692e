package main

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeNameCollides(t *testing.T) {
	for _, group := range [][]string{
		{"ann", "Ann", "ann ", "  ANN\u00a0", "\tAnn\n"},
		{"strasse", "STRASSE", "Strasse"},
		{"josé", "Jose\u0301", "JOSÉ", "jos\u00e9"},
		{"ǆ", "ǅ", "Ǆ"},
		{"a b", "a\u00a0b", "a  b", "A\u2003B", " a\tb "},
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
		strings.Repeat("İ", MaxNameLen), // lowers to i + combining dot: 2×MaxNameLen characters
		"a\x00b", "a\u200bb", "\xff",
		".", "..", "/", "a/b", " .. ",
	} {
		if got, err := NormalizeName(raw); !errors.Is(err, ErrBadName) {
			t.Errorf("NormalizeName(%q) = %q, %v; want ErrBadName", raw, got, err)
		}
	}
	if _, err := NormalizeName(strings.Repeat("x", MaxNameLen)); err != nil {
		t.Errorf("a name of MaxNameLen characters: %v", err)
	}
}

// TestNormalizeNameIsIdempotent: a stored name must normalize to itself, or
// two spellings of one name get two reservations and a GET with the name a
// POST returned misses it. Every rune of the Basic Multilingual Plane, and a
// few planes beyond, alone and between letters.
func TestNormalizeNameIsIdempotent(t *testing.T) {
	for r := rune(0); r <= 0x2FFFF; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		for _, raw := range []string{string(r), "a" + string(r) + "b", strings.ToUpper(string(r))} {
			once, err := NormalizeName(raw)
			if err != nil {
				continue
			}
			twice, err := NormalizeName(once)
			if err != nil || twice != once {
				t.Fatalf("NormalizeName(%q) = %q, but NormalizeName(%q) = %q, %v", raw, once, once, twice, err)
			}
		}
	}
}
