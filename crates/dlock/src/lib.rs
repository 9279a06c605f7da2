//! **dlock**: distributed locks with pluggable backends.
//!
//! One dependency, one API: pick a backend with a feature flag and a URL, and swap it without
//! touching application code. Every lock comes with a [`FencingToken`], is renewed in the
//! background while its [`LockGuard`] lives, tells you when it is lost, and is released when
//! the guard is dropped.
//!
//! | feature     | URL schemes                                   | backend                     |
//! |-------------|-----------------------------------------------|-----------------------------|
//! | `memory` (default) | `memory://`                            | in-process reference        |
//! | `redis`     | `redis://`, `rediss://`, `redis+redlock://`   | Redis, Redlock              |
//! | `zookeeper` | `zookeeper://`, `zk://`                       | ZooKeeper                   |
//! | `etcd`      | `etcd://`, `etcds://`                         | etcd                        |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock::LockError> {
//! // With `features = ["redis"]` this could be "redis://127.0.0.1:6379?prefix=myapp".
//! let locker = dlock::connect("memory://?prefix=myapp&lease=10s").await?;
//! let guard = locker.acquire("nightly-report").await?;
//! println!("token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! [`connect`] understands these query parameters for every backend (the backend reads the
//! others, such as `session_timeout`): `prefix` (key namespace), `lease` (e.g. `30s`), `wait`
//! (e.g. `5s`; absent = wait forever) and `keepalive_interval`.
//!
//! The guarantees of each backend, what fences it, and what happens when its server fails are
//! compared in the [`backends`] page; the contract they all keep is the [`contract`] page.
//!
//! # Features
#![doc = document_features::document_features!()]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backends;
mod url_options;

pub use dlock_core::*;

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use dlock_etcd as etcd;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use dlock_redis as redis;
#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub use dlock_zookeeper as zookeeper;

/// Connects to the backend `url` names and returns a [`Locker`] whose default options come
/// from the URL's query.
///
/// A scheme whose feature is off gives [`LockError::InvalidUrl`] naming the feature to turn
/// on; a malformed URL or option gives [`LockError::InvalidUrl`] (passwords shown as `***`).
pub async fn connect(url: &str) -> Result<Locker> {
    let parsed = url_options::split(url)?;
    let backend: std::sync::Arc<dyn LockBackend> = match parsed.scheme.as_str() {
        "memory" => memory(&parsed)?,
        "redis" | "rediss" | "redis+redlock" => redis(&parsed).await?,
        "zookeeper" | "zk" => zookeeper(&parsed).await?,
        "etcd" | "etcds" => etcd(&parsed).await?,
        other => {
            return Err(parsed.invalid(format!(
                "unknown scheme `{other}`; dlock knows memory, redis, rediss, redis+redlock, \
                 zookeeper, zk, etcd and etcds"
            )))
        }
    };
    Locker::from_backend(backend).with_options(parsed.options)
}

#[cfg(feature = "memory")]
fn memory(parsed: &url_options::ParsedUrl) -> Result<std::sync::Arc<dyn LockBackend>> {
    if !parsed
        .backend_url
        .trim_start_matches("memory://")
        .is_empty()
    {
        return Err(parsed.invalid("memory:// takes no host, path or backend options"));
    }
    Ok(std::sync::Arc::new(MemoryServer::global().client()))
}

#[cfg(not(feature = "memory"))]
fn memory(parsed: &url_options::ParsedUrl) -> Result<std::sync::Arc<dyn LockBackend>> {
    Err(parsed.feature_off("memory"))
}

/// Defines the connect function of one backend: its crate's `connect` when the feature is on,
/// an error naming the feature when it is off.
macro_rules! server_backend {
    ($name:ident, $feature:literal, $krate:ident) => {
        #[cfg(feature = $feature)]
        async fn $name(parsed: &url_options::ParsedUrl) -> Result<std::sync::Arc<dyn LockBackend>> {
            Ok(std::sync::Arc::new(
                $krate::connect(&parsed.backend_url).await?,
            ))
        }

        #[cfg(not(feature = $feature))]
        async fn $name(parsed: &url_options::ParsedUrl) -> Result<std::sync::Arc<dyn LockBackend>> {
            Err(parsed.feature_off($feature))
        }
    };
}

server_backend!(redis, "redis", dlock_redis);
server_backend!(zookeeper, "zookeeper", dlock_zookeeper);
server_backend!(etcd, "etcd", dlock_etcd);
