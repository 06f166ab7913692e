package memcachelock

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/txlock/txlock"
)

const (
	// maxKeyLen is memcached's limit on a key, in bytes.
	maxKeyLen = 250
	// separator ends the prefix. A prefix cannot contain it, so the
	// prefix of a memcached key is everything before its first separator,
	// and two prefixes never share a key.
	separator = ":"
	// hashMarker starts the hashed form of a key. A key is sent raw only
	// if it does not start with it, so a raw key never lands in the
	// hashed namespace.
	hashMarker = "#"
	// hashedLen is len(hashMarker) plus a base64url SHA-256.
	hashedLen = 1 + 43
	// maxPrefixLen leaves room for the separator and the hashed form.
	maxPrefixLen = maxKeyLen - len(separator) - hashedLen
)

// printable reports whether every byte of s is printable ASCII other than
// a space (0x21 to 0x7e): bytes memcached's text protocol takes in a key
// and that cannot end or split a command.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// checkPrefix validates a prefix, a trailing separator already removed.
func checkPrefix(p string) error {
	switch {
	case len(p) > maxPrefixLen:
		return fmt.Errorf("%w: memcachelock: WithPrefix: %d bytes, want at most %d", txlock.ErrInvalid, len(p), maxPrefixLen)
	case !printable(p):
		return fmt.Errorf("%w: memcachelock: WithPrefix(%q): a space, a control byte or a non-ASCII byte", txlock.ErrInvalid, p)
	case strings.Contains(p, separator):
		return fmt.Errorf("%w: memcachelock: WithPrefix(%q): a prefix cannot contain %q, which memcachelock puts after it", txlock.ErrInvalid, p, separator)
	}
	return nil
}

// memKey maps a lock name to its memcached key: the prefix, ":" and the
// name as it is when the name is printable ASCII, does not start with "#"
// and fits; otherwise the prefix, ":#" and the base64url SHA-256 of the
// name. The two forms cannot meet (a raw name never starts with "#"),
// SHA-256 keeps hashed names apart, and no prefix contains ":", so two
// (prefix, name) pairs never share a lock; no byte of a name that could be
// read as protocol ever reaches the wire.
func memKey(prefix, key string) string {
	if len(prefix)+len(separator)+len(key) <= maxKeyLen && printable(key) && !strings.HasPrefix(key, hashMarker) {
		return prefix + separator + key
	}
	sum := sha256.Sum256([]byte(key))
	return prefix + separator + hashMarker + base64.RawURLEncoding.EncodeToString(sum[:])
}
