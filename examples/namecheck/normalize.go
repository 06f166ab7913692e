package main

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// MaxNameLen is the longest name accepted, in characters (runes) after
// normalization.
const MaxNameLen = 64

const zeroWidthJoiner = '\u200d'

// ErrBadName is wrapped by every error NormalizeName returns.
var ErrBadName = errors.New("bad name")

// NormalizeName returns the canonical form of a display name, the form that
// is stored and compared: surrounding white space trimmed, case folded
// (cases.Fold, so "Ann", "ANN" and "ann" are one name, and so are "Straße"
// and "STRASSE"), in Unicode NFC (so a precomposed "é" and "e" followed by a
// combining acute accent are one name).
//
// Folding follows Unicode's canonical caseless matching: decompose (NFD),
// fold, then compose (NFC), because folding a composed string can leave it
// unnormalized.
//
// It rejects an empty name, a name longer than MaxNameLen characters and a
// name holding control or other invisible characters (tabs, newlines, NUL,
// format characters other than the zero-width joiner that emoji sequences
// use), with an error wrapping ErrBadName.
func NormalizeName(raw string) (string, error) {
	if !utf8.ValidString(raw) {
		return "", fmt.Errorf("%w: not valid UTF-8", ErrBadName)
	}
	s := strings.TrimSpace(raw)
	s = norm.NFC.String(cases.Fold().String(norm.NFD.String(s)))
	s = strings.TrimSpace(s) // folding never adds spaces, but be certain
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
	return s, nil
}
