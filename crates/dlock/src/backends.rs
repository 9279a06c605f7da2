//! # Choosing a backend
//!
//! Every backend keeps the same contract (mutual exclusion, fencing tokens, keepalive, loss
//! signals, safe release, bounded waits; [`crate::contract`]) and passes the same
//! conformance suite on a real server. They differ in what they assume and in what happens
//! when the server fails.
//!
//! | | memory | Redis (single) | Redlock | ZooKeeper | etcd |
//! |---|---|---|---|---|---|
//! | exclusion holds while | the process lives | the server keeps its data (no failover to a replica that missed the write) | a majority of instances keep their data, clocks drift little, pauses are short | the ensemble has a quorum | the cluster has a quorum |
//! | fencing token | a process-wide counter | a per-key counter bumped in the acquire script; if the server lost it, it restarts from the server clock (µs) | the highest counter of the granting majority, raised on the others | the lock node's creation zxid | the lock key's create revision; `dlock_etcd::fence` makes your own etcd writes conditional on it |
//! | lease | per lock (`lease`) | per lock (`lease`, PEXPIRE) | per lock, minus elapsed time and drift | the client's session timeout (`?session_timeout=`, default 30 s) | one etcd lease per client and lease length (whole seconds, ≥ etcd's minimum TTL) |
//! | renewal cost | none | one script call per client per interval, however many locks | one per instance per interval | the session heartbeat, nothing per lock | the lease keepalive stream, plus one check of the lease's keys per interval |
//! | waiters woken by | an in-process notification | the release script hands the lock to the first live waiter and publishes to its own channel | a message on the waiter's own channel, per instance | a watch on the predecessor node | a watch on the predecessor key |
//! | order for a contended key | FIFO | FIFO (a line kept in Redis; a releasing holder queues behind the waiters) | no order promised, but no barging | FIFO (sequence) | FIFO (create revision) |
//! | server unreachable | — | held locks are signalled lost when their lease runs out unrenewed; waiters retry, then report `Connection` | fine while a majority answers | locks survive a disconnection shorter than the session; after that, lost on the client's own clock | locks survive an outage shorter than the TTL; after that, lost |
//! | server restart | — | a restart without persistence forgets every lock: fencing tokens keep growing, so fenced writes stay safe | one instance restarting is covered by the majority | sessions survive a restart shorter than their timeout | the lease survives a restart shorter than its TTL (same data dir) |
//!
//! ## When to choose which
//! - **memory**: unit tests of code that takes locks, single-process tools, examples.
//! - **Redis**: you already run Redis and want the fastest locks (a handoff takes about three
//!   round trips); accept that a failover or a restart without persistence can hand a lock
//!   out twice, and let fencing tokens catch it.
//! - **Redlock**: several independent Redis instances and no single point of failure; it
//!   relies on bounded clock drift and short process pauses, so fence the writes anyway.
//! - **ZooKeeper** or **etcd**: correctness first, consensus-backed, FIFO and watch-based; the
//!   lease is the client's session, so one heartbeat keeps all of a client's locks, and a
//!   crashed client's locks go when its session does.
//!
//! Whatever the backend, pass [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)
//! to the storage the lock protects, and race long work against
//! [`LockGuard::lost`](crate::LockGuard::lost).
