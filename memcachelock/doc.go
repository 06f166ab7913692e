// Package memcachelock keeps txlock's named locks in memcached, through
// github.com/bradfitz/gomemcache, so that app servers queue their writers
// on a key before BEGIN instead of conflicting in the database.
//
//	mc := memcache.New("10.0.0.1:11211")
//	err := txlock.Run(ctx, db, []string{"name:" + name}, body,
//		txlock.WithLocker(memcachelock.New(mc)))
//
// # How a lock works
//
// A lock is a memcached item under the prefix (default "txlock:") and the
// key. It is taken with add, whose value carries a random owner token, with
// a lease of WithTTL (default 30 s); this happens before BEGIN, so a waiter
// holds no database connection. While the transaction runs, the owner
// refreshes the lease every TTL/3 (read, compare the token, CAS). Just before
// COMMIT, Verify reads the item once and checks the token: a lock that is
// gone or someone else's makes Run roll back and retry, never commit. Release
// compare-and-swaps the item, only if it still carries the token, either to
// expired or to the next waiting process (gomemcache has no delete-with-CAS,
// and a plain delete would free a lock someone else took after ours
// expired). An uncontended Run costs three round trips: add, the gets of
// Verify, and a CAS that reuses the CAS ID Verify read.
//
// Keys memcached cannot take as they are (over 250 bytes with the prefix,
// spaces, control or non-ASCII bytes, or starting with "#") are replaced by
// "#" and their base64url SHA-256, after the prefix. A raw key never starts
// with "#", so it cannot meet a hashed one; no key is ever an error, and no
// byte of a key reaches the wire as protocol.
//
// # Waiting and fairness
//
// Runs of one Locker that want the same key queue in the process, in
// arrival order, and only the first talks to memcached. When a Run ends,
// the next one of its process gets the key directly, with no round trip,
// unless the lock is lost or other processes are waiting and the key has
// already been passed on WithHandoffLimit times in a row.
//
// memcached has no notifications, so the first waiter of each process
// polls. It also joins a queue kept in the lock's value: it appends its
// process ID to the item (append keeps the holder's expiry), and the queue is
// carried from holder to holder. A holder that releases while processes
// wait does not free the key for whoever polls first: it hands it, by CAS,
// to the first process in the queue (putting its own process at the end if
// it has Runs waiting), which claims it by CAS. So the key rotates between
// processes in order, and polling faster gains nothing. The first process in
// line polls every 200 µs to 2 ms, depending on how long the current holder
// has had the key; the others more slowly; all with jitter. A process the
// key was handed to that does not claim it within 25 ms (it stopped waiting,
// or died) is skipped by the next waiter.
//
// # Limits
//
// A memcached lock is soft, and nothing may rest on it alone:
//
//   - memcached may evict the item under memory pressure, and a restart or
//     flush_all loses every lock;
//   - a holder paused or cut off for longer than the TTL loses its lock
//     without knowing it until its next refresh or Verify;
//   - the lease has a resolution of one second: an unrefreshed lock may end
//     up to a second before its TTL;
//   - gomemcache picks a server by crc32 of the key modulo the number of
//     servers, so adding, removing or reordering servers moves keys: for a
//     while two app servers with different lists take the same key on
//     different servers, and both hold it;
//   - gomemcache calls cannot be cancelled: the Locker checks the context
//     before each call, and each call is bounded by the client's Timeout,
//     so a hung server can delay a return past the context by that much.
//
// What guards correctness anyway: Verify before COMMIT catches a lock lost
// before the transaction ends (the refresher may catch it sooner and cancel
// the body), and Run retries the transaction; the small window between
// Verify and COMMIT, and two holders after a server-list change, are left
// to the database: a constraint, SERIALIZABLE isolation, or advisory locks
// (txlock.WithLocker(memcachelock.New(mc), advisorylock.New())), each with
// Run's retries. The memcached lock makes the common case fast, with writers
// queueing instead of conflicting; the database makes it right.
//
// When memcached cannot be reached, Acquire and Verify return an error
// wrapping txlock.ErrLockUnavailable, and Run stops without committing.
// WithFailOpen instead carries on without the lock and logs it: only safe
// where the database guards correctness as above.
package memcachelock
