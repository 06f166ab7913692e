// Package keyfmt quotes lock keys for error messages and logs, the same
// way in every package: Go-quoted, so that no byte of a hostile key can
// forge a log line, and cut to MaxLen bytes, so that a megabyte key does
// not make a megabyte message.
package keyfmt

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxLen is how many bytes of a key a message shows.
const MaxLen = 64

// Quote returns key Go-quoted, cut to MaxLen bytes (at a rune boundary
// when the key is valid UTF-8) and followed by "…" and its length when
// cut.
func Quote(key string) string {
	if len(key) <= MaxLen {
		return strconv.Quote(key)
	}
	cut := MaxLen
	for cut > MaxLen-utf8.UTFMax && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(key[:cut]), len(key))
}

// List quotes up to three keys and counts the rest.
func List(keys []string) string {
	const show = 3
	q := make([]string, 0, min(len(keys), show))
	for i, k := range keys {
		if i == show {
			return fmt.Sprintf("keys %v and %d more", q, len(keys)-show)
		}
		q = append(q, Quote(k))
	}
	if len(q) == 1 {
		return "key " + q[0]
	}
	return fmt.Sprintf("keys %v", q)
}
