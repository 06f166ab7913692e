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
	// hashMarker starts the hashed form of a key. A key is sent raw only
	// if it does not start with it, so a raw key never lands in the
	// hashed namespace.
	hashMarker = "#"
	// hashedLen is len(hashMarker) plus a base64url SHA-256.
	hashedLen = 1 + 43
	// maxPrefixLen leaves room for the hashed form after the prefix.
	maxPrefixLen = maxKeyLen - hashedLen
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

func checkPrefix(p string) error {
	if len(p) > maxPrefixLen {
		return fmt.Errorf("%w: memcachelock: prefix of %d bytes, want at most %d", txlock.ErrInvalid, len(p), maxPrefixLen)
	}
	if !printable(p) {
		return fmt.Errorf("%w: memcachelock: prefix %q has a space, a control byte or a non-ASCII byte", txlock.ErrInvalid, p)
	}
	return nil
}

// memKey maps a lock name to its memcached key: the prefix and the name
// as they are when the name is printable ASCII, does not start with "#" and
// fits; otherwise the prefix, "#" and the base64url SHA-256 of the name.
// The two forms cannot meet (a raw name never starts with "#") and SHA-256
// keeps hashed names apart, so two names never share a lock; no byte of a
// name that could be read as protocol ever reaches the wire.
func memKey(prefix, key string) string {
	if len(prefix)+len(key) <= maxKeyLen && printable(key) && !strings.HasPrefix(key, hashMarker) {
		return prefix + key
	}
	sum := sha256.Sum256([]byte(key))
	return prefix + hashMarker + base64.RawURLEncoding.EncodeToString(sum[:])
}

// describe quotes a key for an error message, shortened, so a hostile key
// cannot forge log lines.
func describe(key string) string {
	if len(key) > 64 {
		return fmt.Sprintf("%q…", key[:64])
	}
	return fmt.Sprintf("%q", key)
}
