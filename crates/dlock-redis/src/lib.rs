//! The Redis backend of **dlock**: locks on one Redis instance or on a Redlock quorum of
//! independent instances, fenced, renewed in batches, and handed from holder to waiter by the
//! server rather than by polling.
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
//! # Layout in Redis
//! A lock on key `k` under prefix `p` uses `dlock:{<namespace>|<p>/<k escaped>}:lock` (the
//! owner id, expiring with the lease), `…:fence` (the fence counter, never expiring),
//! `…:queue` and `…:deadlines` (the waiting line). They share one hash tag, so every script
//! touches one Redis Cluster slot, except the batched renewal, which takes every key a client
//! holds (on a cluster it would have to be split per slot; this crate talks to single
//! instances and Redlock quorums only). Each client listens on `dlock:wake:<client id>`.
//!
//! # Assumptions
//! * **Single instance.** Mutual exclusion holds while the server keeps its data. Without
//!   persistence a restart forgets every lock: holders then learn at their next renewal that
//!   the lock is gone (their guards signal loss; nothing is re-acquired silently). A fence
//!   counter the server lost restarts from the server clock in microseconds, so tokens keep
//!   growing across restarts as long as the server clock does not go back.
//! * **Redlock.** A majority of N independent instances must grant the lock within its
//!   lease; the lock is trusted for `lease − elapsed − drift`, where drift is
//!   `lease × drift_factor` plus 2 ms. It assumes bounded clock drift and no process pause longer than what is left of
//!   the lease: a holder paused past its lease (GC, SIGSTOP) may still believe it holds the
//!   lock when another client already does. Fencing tokens cover exactly that case: the token
//!   is the highest fence counter in the granting majority, and the instances behind are
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
mod layout;
mod node;
mod scripts;
mod tls;

pub use backend::RedisBackend;
pub use config::{Endpoint, RedisConfig};
/// The URL schemes this crate's [`connect`] takes: `redis://`, `rediss://` (TLS), `redis+redlock://` and `rediss+redlock://` (Redlock, over TLS). The `dlock` facade
/// routes these to this crate.
pub const SCHEMES: &[&str] = &["redis", "rediss", "redis+redlock", "rediss+redlock"];

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
