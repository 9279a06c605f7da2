//! The lock contract of **dlock**: distributed locks with pluggable backends.
//!
//! Applications use a [`Locker`] over any [`LockBackend`] and get a [`LockGuard`] for every
//! lock they take. The guard carries a [`FencingToken`], renews its lease in the background,
//! signals when the lock is lost and releases it when dropped. Backends (Redis, ZooKeeper,
//! etcd, the in-memory [`MemoryBackend`]) implement only the server side; everything common
//! (key rules, options, the guard, keepalive, loss signalling, backoff) lives here once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use dlock_core::{Locker, MemoryBackend};
//!
//! let locker = Locker::new(MemoryBackend::new());
//! let guard = locker.acquire("jobs/nightly-export").await?;
//! // … do the work, passing guard.fencing_token() to the storage you write to …
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Beyond the mutex, the same locker gives [semaphores](Locker::semaphore),
//! [read-write locks](Locker::rw_lock) and [leader elections](Locker::election), on every
//! backend that [supports](LockBackend::supports) their [`LockMode`], with the guard's
//! fencing tokens, keepalive and loss signal.
//!
//! The contract each backend keeps is written down property by property (P1 … P16) in
//! [`contract`], and the `dlock-conformance` crate checks it.
//!
//! # Observability
//!
//! - **Metrics**, recorded once here for every backend through the `metrics` facade:
//!   acquisitions, handoffs, wait and hold times, timeouts, renewals and their failures,
//!   losses by reason, labelled by backend (and, opted in, by key prefix). Names, types and
//!   labels: [`metrics`].
//! - **Tracing spans**: every `acquire`/`try_acquire` opens one `dlock.lock` span (INFO level)
//!   with the fields `key`, `backend` (the [`Capabilities::name`]), `prefix` and `token`
//!   (recorded when the lock is granted). It lasts from the call to the release (or the loss,
//!   or the failed attempt): the backend's own events while acquiring and releasing, and the
//!   core's `lock acquired` / `lock released` (DEBUG) and `lock lost` (INFO) events, carry
//!   it. Renewals serve many locks in one batch and so belong to no lock's span. No field
//!   holds a password (backends keep URLs redacted) or the owner id a server checks releases
//!   against; the owner description is not recorded in the span at all.
//! - **Holder identity**: every acquisition carries an owner description
//!   ([`LockOptions::owner`], by default [`default_owner`]: `host/pid/program`), which
//!   backends store with the lock ([`AcquireRequest::owner`]); [`Locker::inspect`] and
//!   [`Locker::list`] read holders back where the backend can
//!   ([`LockBackend::introspection`]).
#![deny(missing_docs)]

mod backend;
mod backend_url;
mod backoff;
mod election;
mod error;
mod guard;
mod inspect;
mod keepalive;
mod key;
mod layer;
mod lease;
mod locker;
mod memory;
pub mod metrics;
mod mode;
mod options;
mod rw_lock;
mod semaphore;
mod session_lease;
pub mod support;
mod tls_files;
mod token;

/// The lock contract every backend keeps, property by property (P1 … P16): what the
/// conformance suite checks and what each backend assumes. This page is the repository's
/// `crates/dlock-core/SEMANTICS.md`.
pub mod contract {
    #![doc = include_str!("../SEMANTICS.md")]
}

pub use backend::{
    AcquireRequest, Acquired, Capabilities, LockBackend, LockInfo, Renewal, CHANGE_POLL_INTERVAL,
};
pub use backend_url::{redact_url, BackendUrl, HostPort, LOCK_OPTION_PARAMS};
pub use backoff::Backoff;
pub use election::{Election, Leader, LeaderChanges, Leadership};
pub use error::{BoxError, LockError, Result};
pub use guard::LockGuard;
pub use inspect::{
    Introspection, ListPage, ListRequest, ListedLock, LockReport, DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
};
pub use key::{IntoLockKey, LockKey, MAX_KEY_LEN};
pub use layer::{BackendCall, BackendLayer, Layered};
pub use lease::{Lease, LossNotifier, LossReason};
pub use locker::{Locker, WAIT_LIMIT_GRACE};
pub use memory::{MemoryBackend, MemoryServer};
pub use mode::{holders, turn, LockMode, Turn, MAX_PERMITS};
pub use options::{
    default_owner, LockOptions, MAX_LEASE, MAX_OWNER_LEN, MAX_PREFIX_LEN, MIN_LEASE,
};
pub use rw_lock::RwLock;
pub use semaphore::Semaphore;
pub use token::FencingToken;

/// Re-exported so backend crates implement [`LockBackend`] with the same macro version.
pub use async_trait::async_trait;
