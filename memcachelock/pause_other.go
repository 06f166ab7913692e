//go:build !linux

package memcachelock

import "time"

// sleepFine has no fine timer to sleep on here.
func sleepFine(time.Duration) bool { return false }
