//! # Choosing a backend
//!
//! Every backend keeps the same contract (mutual exclusion, fencing tokens, keepalive, loss
//! signals, safe release, bounded waits; the project's `SEMANTICS.md`) and runs the same
//! conformance suite. They differ in what they assume and what happens when the server fails.
//!
//! | | memory | Redis (single) | Redlock | ZooKeeper | etcd |
//! |---|---|---|---|---|---|
//! | mutual exclusion holds while | the process lives | the server keeps its data (no failover, no restart without persistence) | a majority of instances keep their data and clocks drift little | the ensemble has a quorum | the cluster has a quorum |
//! | fencing token | a process-wide counter | a per-key counter bumped in the acquire script | the highest counter of the quorum, raised everywhere | the lock node's creation zxid | the lock key's create revision |
//! | lease | per lock (TTL) | per lock (PEXPIRE) | per lock, minus elapsed time and drift | the client's session timeout | the client's lease TTL |
//! | renewal cost | none | one script call per client per interval | one per instance per interval | the session heartbeat | the lease keepalive stream |
//! | waiters woken by | an in-process notification | pub/sub message on the waiter's own channel | the same, per instance | a watch on the predecessor node | a watch on the predecessor key |
//! | order for contended keys | FIFO | FIFO (queue in Redis) | best effort | FIFO | FIFO |
//! | server down | — | held locks are signalled lost after one lease; waiters get `Connection` errors or the lock after restart | fine while a majority is up | locks survive a disconnection shorter than the session; lost after | locks survive an outage shorter than the TTL; lost after |
//!
//! ## When to choose which
//! - **memory**: unit tests of code that takes locks, single-process tools, examples.
//! - **Redis**: you already run Redis and want the fastest locks; accept that a failover or a
//!   restart without persistence can hand a lock out twice, and let fencing tokens catch it.
//! - **Redlock**: several independent Redis instances and no single point of failure; it relies
//!   on bounded clock drift and short pauses, so fence the writes anyway.
//! - **ZooKeeper** or **etcd**: correctness first, consensus-backed, FIFO and watch-based; the
//!   lease is the client's session, so one heartbeat keeps all of a client's locks.
//!
//! Whatever the backend, pass [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)
//! to the storage the lock protects, and race long work against
//! [`LockGuard::lost`](crate::LockGuard::lost).
