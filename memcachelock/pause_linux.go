package memcachelock

import (
	"os"
	"syscall"
	"time"
	"unsafe"
)

// fineTimer is a timerfd read through the runtime's poller.
type fineTimer struct {
	f  *os.File
	rc syscall.RawConn
}

// idleFineTimers keeps a few timers for the next fine pauses.
var idleFineTimers = make(chan *fineTimer, 4)

const clockMonotonic = 1

type itimerspec struct{ interval, value syscall.Timespec }

func newFineTimer() (*fineTimer, error) {
	fd, _, errno := syscall.RawSyscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errno != 0 {
		return nil, errno
	}
	f := os.NewFile(fd, "memcachelock-timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &fineTimer{f: f, rc: rc}, nil
}

// sleep arms the timer for d and waits for it to expire.
func (t *fineTimer) sleep(d time.Duration) error {
	spec := itimerspec{value: syscall.NsecToTimespec(max(d.Nanoseconds(), 1))}
	var errno syscall.Errno
	if err := t.rc.Control(func(fd uintptr) {
		_, _, errno = syscall.RawSyscall6(syscall.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	var expirations [8]byte
	_, err := t.f.Read(expirations[:])
	return err
}

// sleepFine sleeps d on a timerfd and reports whether it did; it does not
// when the system refuses a timer (out of file descriptors, say).
func sleepFine(d time.Duration) bool {
	var t *fineTimer
	select {
	case t = <-idleFineTimers:
	default:
		var err error
		if t, err = newFineTimer(); err != nil {
			return false
		}
	}
	if err := t.sleep(d); err != nil {
		_ = t.f.Close()
		return false
	}
	select {
	case idleFineTimers <- t:
	default:
		_ = t.f.Close()
	}
	return true
}
