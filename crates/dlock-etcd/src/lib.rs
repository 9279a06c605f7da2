//! The etcd backend of **dlock**.
//!
//! Each client keeps one etcd lease (its *session*) alive with one keepalive stream, and
//! attaches every lock key and every waiting key to it. A lock is a queue of keys ordered by
//! create revision: the oldest holds the lock, each waiter watches only the key just ahead
//! of it, and the fencing token is the holder key's create revision, which etcd can check
//! for you ([`fence`]). Readers of a [`RwLock`](dlock_core::RwLock) and permits of a
//! [`Semaphore`](dlock_core::Semaphore) stand in the same line, their mode in their key's
//! name: a reader waits only for the newest writer ahead of it, a permit for any contender
//! ahead to leave while every permit is taken. An [`Election`](dlock_core::Election)'s
//! leader publishes its value in its key, and observers are woken by a watch.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use dlock_core::Locker;
//!
//! let locker = Locker::new(dlock_etcd::connect("etcd://127.0.0.1:2379").await?);
//! let guard = locker.acquire("jobs/nightly-export").await?;
//! // … the work, passing guard.fencing_token() along, or fencing etcd writes with
//! // dlock_etcd::fence::fenced_txn(&guard, [])…
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Sharing locks with etcd's own lock recipe: `layout=etcd-concurrency`
//!
//! `?layout=etcd-concurrency` ([`Layout::EtcdConcurrency`]) makes the client read and write
//! the keys of etcd's Go `concurrency.Mutex`, which is also what `etcdctl lock NAME`, the
//! server's Lock RPC and `concurrency.Election` (`etcdctl elect`) use, so that dlock and
//! they exclude each other both ways and wait in one FIFO line:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use dlock_core::Locker;
//!
//! // Excludes `etcdctl lock nightly-export` and Go's
//! // `concurrency.NewMutex(session, "nightly-export")`.
//! let url = "etcd://127.0.0.1:2379?layout=etcd-concurrency";
//! let locker = Locker::new(dlock_etcd::connect(url).await?);
//! let guard = locker.acquire("nightly-export").await?;
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! - The key is the lock name exactly as Go and etcdctl are given it; the client puts
//!   `NAME/{lease id in hex}` under its lease, the lowest create revision under `NAME/`
//!   holds, and a waiter watches the newest key created before its own, as Go's Mutex does.
//!   The URL's `prefix` and a lock options' prefix other than the default are put in front
//!   with a `/` (Go's `namespace.NewKV(kv, "prefix/")`). The fencing token is the holder
//!   key's create revision, as before (what Go users read from `Header().Revision`).
//! - Go's Mutex has one key per lease and name; a second task of one dlock client
//!   contending for the same name gets a lease of its own (leases are kept for later, at
//!   most a few unused ones), so every contender stands in the one line and FIFO holds
//!   across both sides.
//! - Exclusive locks and elections only (an election's key and value are Go's
//!   `concurrency.Election`'s); readers and semaphores are `Unsupported`, and so is `list`
//!   (a name can be any key). `inspect` names the holder: its value (a dlock owner, a
//!   leader's value) or, for Go's empty value, its key (which names its lease).
//! - Every key under `NAME/` is a contender, whoever wrote it, as for Go: a lock `a/b` held
//!   keeps the lock `a` from being granted.
//!
//! Building needs `protoc` and the protobuf well-known types (Debian: `protobuf-compiler`
//! and `libprotobuf-dev`) for `etcd-client`'s generated code.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod error;
pub mod fence;
mod layout;
mod line;
mod pending;
mod report;
mod session;
mod tls;
mod waiter;
mod watch;

pub use backend::EtcdBackend;
pub use config::{Credentials, EtcdConfig, Layout, TlsFiles, DEFAULT_PORT};

/// The `etcd-client` crate this backend is built on, whose types the [`fence`] helpers and
/// [`EtcdBackend::client`] use.
pub use etcd_client;

use dlock_core::LockError;
/// The URL schemes this crate's [`connect`] takes: `etcd://` and `etcds://` (TLS). The `dlock` facade
/// routes these to this crate.
pub const SCHEMES: &[&str] = &["etcd", "etcds"];

/// Connects to the etcd cluster of an `etcd://` or `etcds://` URL
/// (`etcd://[user:password@]host:port[,host:port…][?prefix=…&timeout=…&layout=…]`, see
/// [`EtcdConfig::from_url`]).
///
/// Bad URLs give [`LockError::InvalidUrl`] (password hidden); a cluster that does not answer
/// gives [`LockError::Connection`].
pub async fn connect(url: &str) -> Result<EtcdBackend, LockError> {
    EtcdBackend::connect(EtcdConfig::from_url(url)?).await
}
