package txlock

import (
	"context"
	"errors"
	"testing"
	"time"
)

var errTestCause = errors.New("test cause")

func TestLazyDeadlineEndsAtItsDeadline(t *testing.T) {
	d := withLazyDeadline(context.Background(), time.Now().Add(20*time.Millisecond), errTestCause)
	defer d.stop()
	if err := d.Err(); err != nil {
		t.Fatalf("Err before the deadline = %v", err)
	}
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done did not close at the deadline")
	}
	if !errors.Is(d.Err(), context.DeadlineExceeded) {
		t.Errorf("Err = %v, want DeadlineExceeded", d.Err())
	}
	if !errors.Is(context.Cause(d), errTestCause) {
		t.Errorf("Cause = %v, want the cause", context.Cause(d))
	}
}

// TestLazyDeadlinePastWithoutWaiting: nobody waited on Done, and the
// deadline passed: Err and Cause still say so.
func TestLazyDeadlinePastWithoutWaiting(t *testing.T) {
	d := withLazyDeadline(context.Background(), time.Now().Add(-time.Millisecond), errTestCause)
	defer d.stop()
	if !errors.Is(context.Cause(d), errTestCause) {
		t.Errorf("Cause = %v, want the cause", context.Cause(d))
	}
	if !errors.Is(d.Err(), context.DeadlineExceeded) {
		t.Errorf("Err = %v, want DeadlineExceeded", d.Err())
	}
}

func TestLazyDeadlineFollowsItsParent(t *testing.T) {
	parent, cancel := context.WithCancelCause(context.WithValue(context.Background(), errTestCause, "v"))
	d := withLazyDeadline(parent, time.Now().Add(time.Hour), errTestCause)
	defer d.stop()
	if d.Value(errTestCause) != "v" {
		t.Error("a value of the parent is not seen")
	}
	child, stopChild := context.WithCancel(d)
	defer stopChild()
	fired := make(chan struct{})
	context.AfterFunc(d, func() { close(fired) })
	cancel(errors.New("parent gone"))
	<-d.Done()
	<-child.Done()
	<-fired
	if !errors.Is(d.Err(), context.Canceled) {
		t.Errorf("Err = %v, want Canceled", d.Err())
	}
	if got := context.Cause(d); got == nil || got.Error() != "parent gone" {
		t.Errorf("Cause = %v, want the parent's", got)
	}
}

func TestLazyDeadlineParentCancelledBeforeAnyWait(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	d := withLazyDeadline(parent, time.Now().Add(time.Hour), errTestCause)
	defer d.stop()
	cancel()
	if !errors.Is(d.Err(), context.Canceled) {
		t.Errorf("Err = %v, want Canceled", d.Err())
	}
}

func TestLazyDeadlineStopped(t *testing.T) {
	for _, waited := range []bool{false, true} {
		d := withLazyDeadline(context.Background(), time.Now().Add(time.Hour), errTestCause)
		if waited {
			_ = d.Done()
		}
		d.stop()
		d.stop() // twice is harmless
		select {
		case <-d.Done():
		default:
			t.Errorf("waited=%v: Done open after stop", waited)
		}
		if !errors.Is(d.Err(), context.Canceled) {
			t.Errorf("waited=%v: Err = %v, want Canceled", waited, d.Err())
		}
	}
}

func TestLazyDeadlineReportsTheSoonerDeadline(t *testing.T) {
	soon := time.Now().Add(time.Minute)
	parent, cancel := context.WithDeadline(context.Background(), soon)
	defer cancel()
	d := withLazyDeadline(parent, soon.Add(time.Hour), nil)
	defer d.stop()
	if got, ok := d.Deadline(); !ok || !got.Equal(soon) {
		t.Errorf("Deadline = %v, %v; want the parent's %v", got, ok, soon)
	}
	d2 := withLazyDeadline(context.Background(), soon, nil)
	defer d2.stop()
	if got, ok := d2.Deadline(); !ok || !got.Equal(soon) {
		t.Errorf("Deadline = %v, %v; want %v", got, ok, soon)
	}
}
