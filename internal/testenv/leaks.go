package testenv

import (
	"testing"

	"go.uber.org/goleak"
)

// CheckLeaks fails t, when it ends, if goroutines it started are still
// running (go.uber.org/goleak, which waits a moment for goroutines that are
// ending). Call it first in a test, so that its check runs after the
// test's other cleanups (closing pools, stopping servers), and only in
// tests that do not run in parallel with others.
func CheckLeaks(t testing.TB) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}
