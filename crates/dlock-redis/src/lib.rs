//! The Redis backend of **dlock**: locks on one Redis instance, on the primary of a Sentinel
//! deployment (followed across failovers), on a Redis Cluster (each lock on the primary that
//! owns its slot), or on a Redlock quorum of independent instances,
//! fenced, renewed in batches, and handed from holder to waiter by the server rather than by
//! polling.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use std::time::Duration;
//! use dlock_core::{LockOptions, Locker};
//!
//! let backend = dlock_redis::connect("redis://127.0.0.1:6379").await?;
//! let locker = Locker::new(backend)
//!     .with_options(LockOptions::default().lease(Duration::from_secs(10)))?;
//! let guard = locker.acquire("invoices/2026-11").await?;
//! // … write to storage, passing guard.fencing_token() along …
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout in Redis (`layout=dlock`, the default)
//! A lock on key `k` under prefix `p` uses `dlock:{<namespace>|<p>/<k escaped>}:lock`
//! (`<owner id>\n<acquired at, server ms>\n<owner description>`, expiring with the lease), `…:fence` (the fence counter), `…:queue` and
//! `…:deadlines` (the waiting line). They share one hash tag, so every script touches one
//! Redis Cluster slot, except the batched renewal, which takes every key a client holds (on a
//! cluster it is split per slot). A waiter listens on `dlock:wake:<waiter id>` while it
//! waits (on a cluster, `dlock:{…}:wake:<waiter id>`, in the lock's slot). The
//! held locks of a namespace and prefix are listed in `dlock:{<namespace>|<p>}:index` (a
//! sorted set of keys, for `list`), which expires with its longest lock.
//!
//! # Sharing a lock with redsync, node-redlock, rslock, redis-py (`layout=redis-standard`)
//! `redis://host:6379?layout=redis-standard` ([`Layout::RedisStandard`]) makes the client
//! read and write the layout those libraries share instead of its own: the lock is the key
//! exactly as the other library is given it (`app:job`, no dlock prefix or hash tag; the URL's
//! `prefix` goes in front as it is), taken with `SET <key> <value> NX PX <lease>`, released by
//! compare-and-delete, extended by compare-and-pexpire, on one instance, behind Sentinel or on
//! a Redlock quorum (`redis+redlock://a,b,c?layout=redis-standard`, as redsync and
//! node-redlock write it on N instances). dlock and the other library then exclude each other
//! both ways. The acquire script also bumps a fence counter beside the key (`{<key>}:dlock-fence`,
//! in the key's Cluster slot, ignored by the others), so fencing tokens still grow among dlock
//! holders; a holder's keepalive still learns that its lock is gone (its compare-and-pexpire
//! finds another value). What the layout gives up: the waiting line (no FIFO, no hand-over, no
//! waiter counts), modes other than exclusive, and `list`. Waiters and observers are woken by
//! the key's keyspace events (`del`, `expired`, `set`…) where the server publishes them
//! (`notify-keyspace-events KA`, or at least `K$gx`; the client reads the setting and never
//! changes it), and otherwise poll (10–20 ms at first, up to 100–200 ms); [`Capabilities`](dlock_core::Capabilities)
//! says which (`fifo: false`, `server_wakeup` only with notifications). See [`Layout`].
//!
//! # Read-write locks, semaphores, elections
//! On a single instance (and behind Sentinel) every [`LockMode`](dlock_core::LockMode) is
//! supported; Redlock supports exclusive locks only (its instances keep lines in no common
//! order, so a permit count per instance bounds nothing). The exclusive holder is the lock
//! key; each shared or permit holder owns `…:holder:<owner id>` (same value, its own lease),
//! listed by token in `…:holders`. The mode rides in the owner and waiter ids (`@shared`,
//! `@permit/<n>`), and the scripts decide whose turn it is with their copy of
//! [`dlock_core::turn`]: a release hands the key to every waiter at the head of the line whose
//! turn it now is (a writer's release admits the readers behind it, a returned permit one
//! waiter), each with its own token from the key's one counter. `update_owner` (an election's
//! `proclaim`) is one owner-checked script; `wait_for_change` listens like a waiter and lists
//! itself in `…:watchers`, which every grant, release and owner update notifies.
//!
//! # Sentinel
//! `redis+sentinel://s1:p,s2:p,s3:p/<master-name>`: the client asks the sentinels for the
//! primary when it connects, every second, and when the primary fails a call (or answers
//! `READONLY`); it moves to the instance they name, and waiters listen and queue there anew.
//! Replication is asynchronous, so a failover can lose a lock (it may be granted twice);
//! fencing tokens keep growing across it (the server-clock floor), so fenced writes stay
//! safe.
//!
//! # Redis Cluster
//! `redis+cluster://h1:p,h2:p,…` (seed nodes; `rediss+cluster://` over TLS): the redis
//! crate's cluster client sends each script to the primary that owns the lock's slot,
//! follows `MOVED`/`ASK`, and finds the promoted replica after a failover. Waiters listen on
//! sharded channels in the lock's slot (`SSUBSCRIBE`), which the scripts publish on with
//! `SPUBLISH` and count with `PUBSUB SHARDNUMSUB`, all on the slot's primary; when the slot
//! moves (resharding, failover) the client subscribes again where it lives now and each
//! waiter looks again. Renewal is one script call per slot. Not offered: `list` (a prefix's
//! index would live in another slot than its locks), keyspace wake-ups of the standard
//! layout (its waiters poll). A failover can lose a lock, as behind Sentinel; tokens keep
//! growing. Needs Redis 7.
//!
//! **What a lock name costs after release: nothing, a few seconds later.** The fence counter
//! expires 5 s after the lock does (released, or its lease ran out), and the line's keys
//! expire with the last entry's deadline (at most 30 s after its waiter last asked, or its
//! wait limit if sooner); an application locking one name per order or per user does not grow
//! Redis. While held, a lock costs four small keys at most.
//!
//! # Fencing tokens
//! A token is `max(counter + 1, server time in ms × 1000)`, computed in the acquire script
//! (Redis 7 replicates script effects, so reading `TIME` there is allowed). The counter orders
//! acquisitions within one millisecond (a key is acquired far fewer than 1000 times a
//! millisecond); the clock keeps tokens growing when the counter is gone or went back — a
//! restart that reloaded an older RDB snapshot, AOF `everysec` that lost its last second, a
//! replica promoted after a failover that had not seen the last writes, an evicted or expired
//! counter. **Assumption:** the clock of the server that issues a token never reads earlier
//! than the clock of the server that issued an earlier token for the same key did then, give
//! or take the time in between: the server clock does not step back by more than a restart
//! takes (and, after a failover, the replica's clock is not behind the old primary's by more
//! than the failover takes; on Redlock, instance clocks agree within 5 s, the time a counter
//! outlives its lock). Redlock takes the highest token of the granting majority. A lock
//! handed to a waiter whose counter is gone is confirmed with a fresh token, never 0.
//!
//! # Waiting
//! A waiter first tries (one script call; a free lock costs nothing more), then listens on its
//! own channel and joins the line with a numbered request; it asks again at least every 10 s,
//! which keeps its entry alive (an entry counts for 30 s at most without being refreshed).
//! An entry counts as alive only while its waiter listens, so the entries of waiters that are
//! gone — crashed, cancelled at any await point, or served before a restart reloaded an older
//! line — are skipped at once; a waiter whose host crashed but whose connection Redis still
//! believes open (until TCP keepalive, minutes) holds the line at most 30 s (the waiter
//! behind it looks again when that entry runs out). The release
//! script hands the lock to the first live waiter and names the request it answers: a waiter
//! accepts only a grant of its latest request and trusts the lease from the moment it sent
//! that request (a grant noticed late, after a pause, is confirmed with the server first).
//! Every waiter in line, not only the first, also looks again when the holder's lease runs
//! out: nothing tells the line that a waiter was killed, so when the holder and the waiters
//! ahead are all gone, the live one behind them learns it is first (and takes the lock) then,
//! not at its 10 s safety net. A holder that keeps renewing thus costs each waiter one
//! script call per lease (at most one per 10 s anyway); a release still wakes one waiter.
//! An `acquire` dropped at any await point leaves the line, stops listening and gives back a
//! grant its last request may still receive (the clean-up is sent on the same connections,
//! after that request). On Redlock a waiter needs a majority of instances listening; an
//! instance that did not answer (down, frozen) is not asked again during that wait.
//!
//! # Assumptions
//! * **Single instance.** Mutual exclusion holds while the server keeps its data. A restart
//!   that loses data forgets locks (or brings back an older state): holders then learn at
//!   their next renewal that the lock is gone (their guards signal loss; nothing is
//!   re-acquired silently), a second holder is possible, and fencing tokens still grow (see
//!   above), so fenced writes stay safe. To keep exclusion across restarts, run Redis with
//!   `appendonly yes` and `appendfsync always`; with the defaults (RDB snapshots, or AOF
//!   `everysec`), a restart may lose the last writes, and exclusion then rests on fencing.
//!   A restart that reloads an older waiting line stalls nobody: the entries of waiters that
//!   no longer listen are skipped.
//! * **Redlock.** A majority of N independent instances must grant the lock within its
//!   lease; the lock is trusted for `lease − elapsed − drift`, where drift is
//!   `lease × drift_factor` plus 2 ms. It assumes bounded clock drift and no process pause longer than what is left of
//!   the lease: a holder paused past its lease (GC, SIGSTOP) may still believe it holds the
//!   lock when another client already does. Fencing tokens cover exactly that case: the token
//!   is the highest token issued by the granting majority, and the instances behind are
//!   raised to it before the lock is returned, so any later majority (which overlaps this
//!   one) issues a greater token and storage that checks tokens rejects the paused holder's
//!   writes. Instances that restart without persistence weaken Redlock's majority argument
//!   (a lock can be granted twice); run them with `appendfsync always` or delay their
//!   restart by a lease.
//! * **Redlock with a failed minority.** Up to `(N − 1) / 2` instances may be down, slow or
//!   frozen (SIGSTOP: it accepts connections and commands but never answers). Connecting
//!   needs a majority, the others join in the background. Each call runs on every instance
//!   in a task of its own and returns once the answers decide it, at the latest when a
//!   majority answered and the rest had as long again (at least 20 ms); the frozen
//!   instance's response timeout never counts against the lease. Calls still running go
//!   on in the background: a command stays queued on the frozen instance's connection and
//!   runs in order when it continues (a late grant is followed by the release sent after
//!   it), and whatever it still holds expires with its lease. The lease must cover a
//!   majority's round trip, the drift and the holder's own pauses, not the instance's freeze.
#![deny(missing_docs)]

mod backend;
mod config;
mod error;
mod layout;
mod link;
mod node;
mod quorum;
mod scripts;
mod sentinel;
mod session;
mod tls;
mod waiter;
mod watch;

pub use backend::RedisBackend;
pub use config::{Endpoint, Layout, RedisConfig};
pub use link::cluster_slot;
/// The URL schemes this crate's [`connect`] takes: `redis://`, `rediss://` (TLS),
/// `redis+redlock://` and `rediss+redlock://` (Redlock, over TLS), `redis+sentinel://` and
/// `rediss+sentinel://` (the primary of a Sentinel deployment), `redis+cluster://` and
/// `rediss+cluster://` (a Redis Cluster). The `dlock` facade routes these to this crate.
pub const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+redlock",
    "rediss+redlock",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
];

/// Connects to the Redis instance(s) named by `url`: `redis://[user:password@]host:port[/db]`,
/// `rediss://…` (TLS), `redis+redlock://host1:port,host2:port,host3:port` (see
/// [`RedisConfig`] for the query parameters).
///
/// Bad URLs give [`LockError::InvalidUrl`](dlock_core::LockError::InvalidUrl) with the
/// password redacted; unreachable servers give
/// [`LockError::Connection`](dlock_core::LockError::Connection).
pub async fn connect(url: &str) -> Result<RedisBackend, dlock_core::LockError> {
    RedisBackend::connect(RedisConfig::from_url(url)?).await
}
