package memcachelock

import (
	"context"
	"time"
)

// Short pauses. The first process in a key's queue polls every few hundred
// microseconds near the end of a holder's tenure (pollInterval). A Go timer
// cannot wait that little in a process whose goroutines are all waiting:
// on Linux the runtime then sleeps in epoll_wait, which counts whole
// milliseconds, and a 200 µs timer fires after about 1.1 ms. So a pause
// shorter than finePauseMax sleeps in the kernel instead (nanosleep, where
// the platform has it), holding its thread that long. At most
// maxFinePauses goroutines of a process do so at once; the others, and
// longer pauses, use a timer.
const (
	finePauseMax  = 2 * time.Millisecond
	maxFinePauses = 4
)

// finePauses counts the goroutines in a fine pause.
var finePauses = make(chan struct{}, maxFinePauses)

// pause waits d or until ctx ends, and reports whether it waited d. timer
// is the caller's, made on first use, for the caller to stop. A fine pause
// is not cut short by ctx: it ends at most finePauseMax late.
func pause(ctx context.Context, d time.Duration, timer **time.Timer) bool {
	if d < finePauseMax && canSleepFine {
		select {
		case finePauses <- struct{}{}:
			sleepFine(d)
			<-finePauses
			return ctx.Err() == nil
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
