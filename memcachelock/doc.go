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
// refreshes the lease every TTL/3 (every (TTL-1s)/2 for leases under 3 s):
// read, compare the token, CAS. Just before COMMIT, Verify reads the item
// once and checks the token: a lock that is gone or someone else's makes Run
// roll back and retry, never commit. Release
// compare-and-swaps the item, only if it still carries the token, either to
// expired or to the next waiting process (gomemcache has no delete-with-CAS,
// and a plain delete would free a lock someone else took after ours
// expired). An uncontended Run costs three round trips: add, the gets of
// Verify, and a CAS that reuses the CAS ID Verify read. In a run guarded by
// a lock held in the database (advisorylock), Verify is skipped, and the
// release reads the item before its CAS instead.
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
// unless the lock is lost or other processes may be waiting and the key
// has already been passed on WithHandoffLimit times in a row.
//
// # The protocol between processes
//
// memcached has no notifications, so the first waiter of each process
// polls, and a queue of processes is kept in the lock's value. An item
// under a lock's key is in one of these states (value.go has the exact
// format; times are Unix milliseconds):
//
//	free      no item
//	held      "L <token> @<since> <queue>" owned by the Run holding <token>, since <since> (µs)
//	handed    "H <proc> <until> <queue>"   passed to process <proc>, to claim by <until>
//	foreign   anything else                not ours: the key is taken until it expires
//
// <queue> is the processes waiting, oldest first, each as "<proc>:<deadline>",
// the time its wait ends. The transitions, and who makes them:
//
//	free    → held     a taker's add (the only way in for a new key)
//	held    → held     a waiter of another process joins the queue: append,
//	                   which keeps the holder's expiry
//	held    → held     the owner's refresher: CAS of the same value with a
//	                   new expiry, every TTL/3 while the transaction runs
//	held    → handed   the owner's release, when a waiter's wait has at least
//	                   5 ms left: CAS to the first such process, until the
//	                   sooner of its deadline and 250 ms, with the rest of the
//	                   queue (and the owner's own process at its end if it
//	                   has Runs waiting)
//	held    → free     the owner's release when nobody waits: CAS to an
//	                   expired value (gomemcache has no delete-with-CAS)
//	handed  → held     the process it was handed to claims it by CAS
//	handed  → held     any waiter claims it when <until> has passed, or after
//	                   it has seen the same target for 25 ms by its own clock
//	                   (the target stopped waiting or died); a caller that
//	                   does not wait may claim it once <until> has passed
//	handed  → handed   the target stopped waiting: it passes the key on to
//	                   the next in the queue (or to free) by CAS
//	any     → free     the TTL ran out (the owner died or was paused),
//	                   eviction, flush_all, a restart
//
// Every write after add is a CAS against the item just read, so two
// processes never both move the same state: the loser reads again. A
// hand-off never outlives the wait of the one it was handed to, so a
// process that gave up cannot keep the key from the others. The key
// rotates between processes in queue order, and polling faster gains
// nothing. The first process in line learns how long processes keep the
// key (and how much that varies) and waits out most of the holder's
// expected tenure, counted from the start the holder wrote into the value,
// then polls every 200 µs, so a key handed to it is claimed at once;
// without an expectation it polls every 200 µs to 2 ms, depending on how
// long the current holder has had the key. The processes behind it read
// again about halfway into the next holder's expected tenure (at least
// every 50 ms), which is soon enough to see that they have moved up; all
// with jitter.
// Pauses under 2 ms wait for a timerfd through the runtime's poller (on
// Linux), as Go timers in an otherwise idle process fire a millisecond
// late there; such a wait holds no thread.
//
// # Limits
//
// A run may lock at most DefaultMaxKeys (1000) keys (WithMaxKeys): each
// costs round trips to take, refresh and release.
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
//   - a Locker knows memcached's availability as a whole, not per server:
//     with several servers and one of them down, its other keys wait for
//     the same probes and may be reported unavailable too; give each
//     Locker a client of one server where that matters;
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
// # When memcached cannot be reached
//
// A restart or a network blip is waited out. While memcached does not
// answer, one caller of the Locker at a time probes it, after a backoff
// with jitter (10 ms doubling to 100 ms); the other Runs of the process
// wait for that probe's outcome instead of all dialing, and none of them
// holds a database connection. Only a memcached still down when the lock
// wait (txlock.WithLockWait) or the context ends is an error, wrapping
// txlock.ErrLockUnavailable. A lease that cannot be verified before COMMIT
// because memcached is down makes Run roll the attempt back and try again,
// within its attempts and lock wait; a lease found lost after a restart,
// eviction or flush_all does the same. memcached out of memory (a server
// started with -M answers SERVER_ERROR out of memory) counts as
// unreachable, not as a busy key.
//
// When a lock held by the database is in the same run
// (txlock.WithLocker(memcachelock.New(mc), advisorylock.New())), mutual
// exclusion does not rest on memcached: an unreachable memcached is not
// waited for, the Run goes on under the database lock alone and reports it
// (txlock.Event.Degraded), and the next Run queues in memcached again as
// soon as it answers.
//
// memcachelock alone does not do that by default: without memcached there
// is no lock, and a check-then-insert guarded only by it would let
// duplicates in. WithFailOpen makes it carry on without the lock all the
// same, which is safe only where the database guards correctness itself
// (SERIALIZABLE, a constraint).
//
// Run the lock memcached with -M (no eviction): otherwise memcached may
// evict a held lock under memory pressure, which costs the holder its
// attempt (it finds the lease lost at Verify and retries) and, for a
// moment, lets a second holder in, as any lost lease does.
package memcachelock
