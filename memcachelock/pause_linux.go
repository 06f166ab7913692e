package memcachelock

import (
	"syscall"
	"time"
)

const canSleepFine = true

// sleepFine sleeps d in the kernel, which keeps to microseconds.
func sleepFine(d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
	}
}
