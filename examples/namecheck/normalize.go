package main

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/language"
	"golang.org/x/text/unicode/norm"
)

// MaxNameLen is the longest name accepted, in characters (runes) after
// normalization.
const MaxNameLen = 64

const zeroWidthJoiner = '\u200d'

// ErrBadName is wrapped by every error NormalizeName returns.
var ErrBadName = errors.New("bad name")

// NormalizeName returns the canonical form of a display name, the form that
// is stored and compared: surrounding white space trimmed, lower case
// (Unicode, so "Ann", "ANN" and "ann" are one name), in Unicode NFC (so a
// precomposed "é" and "e" followed by a combining acute accent are one
// name). Lowering runs between NFD and NFC because lowering a composed
// string can leave it unnormalized.
//
// It is idempotent: a normalized name normalizes to itself, so a GET with
// the name a POST returned finds it, and two spellings of one name cannot
// both be reserved. (Full case folding, cases.Fold, was tried first and is
// not: it maps some Cherokee letters to the other case and back. A test
// checks every rune of the first three Unicode planes.)
//
// Every run of white space inside a name (spaces, no-break spaces, the
// other Unicode space separators) becomes one ASCII space, so "a b",
// "a\u00a0b" and "a  b", which look alike, are one name.
//
// It rejects an empty name, a name longer than MaxNameLen characters, a
// name holding control or other invisible characters (tabs, newlines, NUL,
// format characters other than the zero-width joiner that emoji sequences
// use), and names that could not be looked up at GET /names/{name}: one
// holding "/", and "." and "..". Each is an error wrapping ErrBadName.
// Letters that merely look alike in different scripts (Latin "a" and
// Cyrillic "а") stay different names.
func NormalizeName(raw string) (string, error) {
	if !utf8.ValidString(raw) {
		return "", fmt.Errorf("%w: not valid UTF-8", ErrBadName)
	}
	s := strings.Join(strings.FieldsFunc(raw, unicode.IsSpace), " ")
	s = norm.NFC.String(cases.Lower(language.Und).String(norm.NFD.String(s)))
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	switch n := utf8.RuneCountInString(s); {
	case n == 0:
		return "", fmt.Errorf("%w: empty", ErrBadName)
	case n > MaxNameLen:
		return "", fmt.Errorf("%w: %d characters, at most %d allowed", ErrBadName, n, MaxNameLen)
	}
	for _, r := range s {
		if !unicode.IsGraphic(r) && r != ' ' && r != zeroWidthJoiner {
			return "", fmt.Errorf("%w: contains the invisible character %U", ErrBadName, r)
		}
	}
	if s == "." || s == ".." || strings.Contains(s, "/") {
		return "", fmt.Errorf("%w: %q cannot be looked up by URL (no \"/\", \".\" or \"..\")", ErrBadName, s)
	}
	return s, nil
}
