// Package leakcheck finds goroutines a test left behind. go.uber.org/goleak
// is not a dependency of this module; this is the small part of it the
// tests need.
package leakcheck

import (
	"runtime"
	"testing"
	"time"
)

// Settle waits up to five seconds for the number of goroutines to fall to
// at most n, and fails t with every stack if it does not. Goroutines end
// asynchronously (database/sql's transaction watchers, closed timers), so
// a count taken at once would be flaky.
func Settle(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > n {
		buf := make([]byte, 1<<20)
		t.Errorf("leak: %d goroutines, want at most %d:\n%s", got, n, buf[:runtime.Stack(buf, true)])
	}
}

// Check fails t, when it ends, if it leaves more goroutines running than it
// started with. Use it only in tests that do not run in parallel.
func Check(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() { Settle(t, before) })
}
