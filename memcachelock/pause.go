package memcachelock

import (
	"context"
	"time"
)

// Short pauses. The first process in a key's queue polls every few hundred
// microseconds near the end of a holder's tenure (pollInterval). A Go timer
// cannot wait that little in a process whose goroutines are all waiting:
// on Linux the runtime then sleeps in epoll_wait, whose timeout counts
// whole milliseconds, and a 200 µs timer fires after about 1.1 ms. The
// poller wakes at once for a file that becomes readable, though, so a
// pause shorter than finePauseMax reads a timerfd instead (Linux only):
// the goroutine waits in the poller like any other reader, holding no
// thread. At most maxFinePauses goroutines of a process do so at once, and
// a few idle timers are kept for the next pauses; the other pauses, the
// longer ones and those on other systems use a Go timer.
const (
	finePauseMax  = 2 * time.Millisecond
	maxFinePauses = 16
)

// finePauses counts the goroutines in a fine pause.
var finePauses = make(chan struct{}, maxFinePauses)

// pause waits d or until ctx ends, and reports whether it waited d. timer
// is the caller's, made on first use, for the caller to stop. A fine pause
// is not cut short by ctx: it ends at most finePauseMax late.
func pause(ctx context.Context, d time.Duration, timer **time.Timer) bool {
	if d < finePauseMax {
		select {
		case finePauses <- struct{}{}:
			slept := sleepFine(d)
			<-finePauses
			if slept {
				return ctx.Err() == nil
			}
		default:
		}
	}
	if *timer == nil {
		*timer = time.NewTimer(d)
	} else {
		(*timer).Reset(d)
	}
	select {
	case <-(*timer).C:
		return true
	case <-ctx.Done():
		return false
	}
}
