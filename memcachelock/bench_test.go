package memcachelock

import (
	"context"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/internal/testenv"
)

// BenchmarkUncontendedRun runs txlock.Run end to end against Postgres with a
// memcachelock and reports the memcached round trips of each Run, acquire
// to release (target <= 3).
func BenchmarkUncontendedRun(b *testing.B) {
	m := testenv.StartMemcached(b)
	db := counterDB(b)
	var cnt counter
	l := newLocker(b, client(&cnt, m.Addr()))
	ctx := context.Background()
	if err := txlock.Run(ctx, db, []string{"k"}, increment, txlock.WithLocker(l)); err != nil {
		b.Fatal(err)
	}
	before := cnt.n.Load()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := txlock.Run(ctx, db, []string{"k"}, increment, txlock.WithLocker(l)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cnt.n.Load()-before)/float64(b.N), "roundtrips/op")
}

// BenchmarkAcquireRelease times Acquire+Verify+Release of an uncontended
// key (what one Run costs in memcached) and, in the same run, a
// raw gomemcache Add+Delete pair (the hand-written lock's cost), and reports the ratio of the two.
func BenchmarkAcquireRelease(b *testing.B) {
	m := testenv.StartMemcached(b)
	c := client(nil, m.Addr())
	c.MaxIdleConns = MaxIdleConns
	l := newLocker(b, c)
	ctx := context.Background()
	raw := func() time.Duration {
		start := time.Now()
		if err := c.Add(&memcache.Item{Key: "raw", Value: []byte("1"), Expiration: 30}); err != nil {
			b.Fatal(err)
		}
		if err := c.Delete("raw"); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	lock := func() time.Duration {
		start := time.Now()
		lease, err := l.Acquire(ctx, txlock.Request{Keys: []string{"k"}, TryOnce: true})
		if err != nil {
			b.Fatal(err)
		}
		if err := lease.Verify(ctx); err != nil {
			b.Fatal(err)
		}
		if err := lease.Release(ctx); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	raw()
	lock()
	var tRaw, tLock time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tLock += lock()
		tRaw += raw()
	}
	b.ReportMetric(float64(tLock.Nanoseconds())/float64(b.N), "lock-ns/op")
	b.ReportMetric(float64(tRaw.Nanoseconds())/float64(b.N), "raw-add-delete-ns/op")
	b.ReportMetric(float64(tLock)/float64(tRaw), "lock/raw")
}
