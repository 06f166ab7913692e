//go:build !linux

package memcachelock

import "time"

const canSleepFine = false

func sleepFine(time.Duration) {}
