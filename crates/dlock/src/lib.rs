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
//! | `redis`     | `redis://`, `rediss://`, `redis+redlock://`, `redis+sentinel://`, `redis+cluster://` | Redis, Redlock, Sentinel, Redis Cluster |
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
//! (e.g. `5s`; absent = wait forever), `keepalive_interval` and `owner` (the owner
//! description stored with each lock; by default `host/pid/program`).
//!
//! Every backend's locks are observable the same way: [`metrics`] through the `metrics`
//! facade (the `prometheus` example exports them), one `dlock.lock` tracing span per
//! acquisition, and [`Locker::inspect`] / [`Locker::list`] for who holds what.
//!
//! The guarantees of each backend, what fences it, and what happens when its server fails are
//! compared in the [`backends`] page; the contract they all keep is the [`contract`] page.
//!
//! # Features
#![doc = document_features::document_features!()]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backends;

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
/// The URL means the same lock whichever way it is used: the lock options in its query
/// ([`LOCK_OPTION_PARAMS`]: `lease`, `wait`, `keepalive`, `keepalive_interval`, `owner`) are
/// read once, by [`BackendUrl::lock_options`]; everything else, `prefix` (the key namespace)
/// included, is read by the backend crate that owns the scheme, exactly as its own `connect`
/// reads it.
///
/// A scheme whose feature is off gives [`LockError::InvalidUrl`] naming the feature to turn
/// on; a malformed URL or option gives [`LockError::InvalidUrl`] (passwords shown as `***`).
pub async fn connect(url: &str) -> Result<Locker> {
    let parsed = BackendUrl::parse_any(url, 0)?;
    let mut options = parsed.lock_options()?;
    let feature = BACKENDS
        .iter()
        .find(|(_, schemes)| schemes.contains(&parsed.scheme.as_str()))
        .map(|(feature, _)| *feature);
    let backend: std::sync::Arc<dyn LockBackend> = match feature {
        Some("memory") => memory(&parsed, &mut options)?,
        Some("redis") => redis(&parsed, url).await?,
        Some("zookeeper") => zookeeper(&parsed, url).await?,
        Some("etcd") => etcd(&parsed, url).await?,
        _ => {
            let known: Vec<&str> = BACKENDS
                .iter()
                .flat_map(|(_, s)| s.iter().copied())
                .collect();
            return Err(parsed.invalid(format!(
                "unknown scheme `{}`; dlock knows {}",
                parsed.scheme,
                known.join(", ")
            )));
        }
    };
    Locker::from_backend(backend).with_options(options)
}

/// Each backend's cargo feature and URL schemes. With a feature on, its schemes are the
/// backend crate's own `SCHEMES` (a test checks that they agree); the list is here so that a
/// scheme whose feature is off can still be named in the error.
const BACKENDS: &[(&str, &[&str])] = &[
    ("memory", &["memory"]),
    (
        "redis",
        &[
            "redis",
            "rediss",
            "redis+redlock",
            "rediss+redlock",
            "redis+sentinel",
            "rediss+sentinel",
            "redis+cluster",
            "rediss+cluster",
        ],
    ),
    ("zookeeper", &["zookeeper", "zk", "zookeepers", "zks"]),
    ("etcd", &["etcd", "etcds"]),
];

/// `memory://`: no host, path or backend option; `prefix` becomes the lock options' prefix,
/// the in-process table having no namespace of its own.
#[cfg(feature = "memory")]
fn memory(
    parsed: &BackendUrl,
    options: &mut LockOptions,
) -> Result<std::sync::Arc<dyn LockBackend>> {
    if !parsed.hosts.is_empty() || !parsed.path.is_empty() || parsed.user.is_some() {
        return Err(parsed.invalid("memory:// takes no host, path or credentials"));
    }
    for (name, value) in parsed.backend_params() {
        match name {
            "prefix" => options.prefix = value.to_owned(),
            other => return Err(parsed.unknown_param(other, &["prefix"])),
        }
    }
    options
        .validate()
        .map_err(|error| parsed.invalid(error.to_string()))?;
    Ok(std::sync::Arc::new(MemoryServer::global().client()))
}

#[cfg(not(feature = "memory"))]
fn memory(
    parsed: &BackendUrl,
    _options: &mut LockOptions,
) -> Result<std::sync::Arc<dyn LockBackend>> {
    Err(feature_off(parsed, "memory"))
}

/// Defines the connect function of one backend: its crate's `connect` on the whole URL when
/// the feature is on, an error naming the feature when it is off.
macro_rules! server_backend {
    ($name:ident, $feature:literal, $krate:ident) => {
        #[cfg(feature = $feature)]
        async fn $name(_parsed: &BackendUrl, url: &str) -> Result<std::sync::Arc<dyn LockBackend>> {
            Ok(std::sync::Arc::new($krate::connect(url).await?))
        }

        #[cfg(not(feature = $feature))]
        async fn $name(parsed: &BackendUrl, _url: &str) -> Result<std::sync::Arc<dyn LockBackend>> {
            Err(feature_off(parsed, $feature))
        }
    };
}

server_backend!(redis, "redis", dlock_redis);
server_backend!(zookeeper, "zookeeper", dlock_zookeeper);
server_backend!(etcd, "etcd", dlock_etcd);

/// The error for a scheme whose cargo feature is off.
#[allow(dead_code)] // unused when every backend feature is on
fn feature_off(parsed: &BackendUrl, feature: &str) -> LockError {
    parsed.invalid(format!(
        "the `{}` scheme needs dlock's `{feature}` feature: \
         dlock = {{ version = \"0.1\", features = [\"{feature}\"] }}",
        parsed.scheme
    ))
}

#[cfg(test)]
mod tests {
    use super::BACKENDS;

    /// The routing table cannot drift from what the backend crates accept.
    #[test]
    fn routed_schemes_are_the_backend_crates_own() {
        let schemes = |feature: &str| {
            BACKENDS
                .iter()
                .find(|(f, _)| *f == feature)
                .map(|(_, schemes)| schemes.to_vec())
                .unwrap()
        };
        #[cfg(feature = "redis")]
        assert_eq!(schemes("redis"), dlock_redis::SCHEMES);
        #[cfg(feature = "zookeeper")]
        assert_eq!(schemes("zookeeper"), dlock_zookeeper::SCHEMES);
        #[cfg(feature = "etcd")]
        assert_eq!(schemes("etcd"), dlock_etcd::SCHEMES);
        assert_eq!(schemes("memory"), ["memory"]);
    }
}
