//! The one error type of dlock.

use std::time::Duration;

/// A boxed error from a backend's client library, kept as the `source` of a [`LockError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible dlock operation.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// Everything that can go wrong when taking, keeping or giving back a lock.
///
/// Backends wrap their client library's errors in [`LockError::Connection`] or
/// [`LockError::Backend`] and keep them as the `source`, so `{:#}`-style reporters and
/// `std::error::Error::source` show the underlying cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock was not acquired within the wait limit (or at once, for a try).
    #[error("lock `{key}` was not acquired within {waited:?}: another holder has it")]
    Timeout {
        /// The key that was asked for.
        key: String,
        /// How long the caller was willing to wait.
        waited: Duration,
    },
    /// The guard no longer holds its lock: it was released, its lease expired or the server
    /// gave it to someone else. Nothing was changed on the server.
    #[error("lock `{key}` is not held by this guard (released, expired or taken over)")]
    NotHeld {
        /// The key of the lock.
        key: String,
    },
    /// The key breaks the key rules (1 to 512 bytes of UTF-8, no control characters).
    #[error("invalid lock key: {reason}")]
    InvalidKey {
        /// What is wrong with the key.
        reason: String,
    },
    /// An option is out of range (a zero lease, a keepalive interval not shorter than the lease…).
    #[error("invalid lock options: {reason}")]
    InvalidOptions {
        /// What is wrong with the options.
        reason: String,
    },
    /// A backend URL could not be understood.
    #[error("invalid backend URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or the connection to it broke.
    #[error("cannot reach the lock server at {endpoint}: {source}")]
    Connection {
        /// Where the client tried to connect, without credentials.
        endpoint: String,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
    /// The server answered something the backend did not expect.
    #[error("unexpected reply from the {backend} server: {detail}")]
    Protocol {
        /// The backend's name (`redis`, `zookeeper`, `etcd`, …).
        backend: &'static str,
        /// What was expected and what came back.
        detail: String,
    },
    /// Another contender for the key holds or waits for it in a mode that cannot share a
    /// line with this one: a semaphore asked for with another permit count, or a mutex or a
    /// read-write lock on a semaphore's key ([`LockMode`](crate::LockMode)). Nothing was taken.
    #[error("lock `{key}` is used as {found}, not as {requested}: every client must use one key the same way")]
    IncompatibleMode {
        /// The key that was asked for.
        key: String,
        /// The mode this request asked for.
        requested: crate::LockMode,
        /// The mode another contender uses it in.
        found: crate::LockMode,
    },
    /// The backend cannot do this (inspecting a lock, measuring a round trip…).
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked for.
        operation: &'static str,
    },
    /// Any other failure reported by a backend, with its cause kept.
    #[error("{backend} backend error: {source}")]
    Backend {
        /// The backend's name (`redis`, `zookeeper`, `etcd`, …).
        backend: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

impl LockError {
    /// A [`LockError::Connection`] for `endpoint` caused by `source`.
    pub fn connection(endpoint: impl Into<String>, source: impl Into<BoxError>) -> Self {
        LockError::Connection {
            endpoint: endpoint.into(),
            source: source.into(),
        }
    }

    /// A [`LockError::Backend`] of `backend` caused by `source`.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        LockError::Backend {
            backend,
            source: source.into(),
        }
    }

    /// A [`LockError::Protocol`] of `backend` describing an unexpected reply.
    pub fn protocol(backend: &'static str, detail: impl Into<String>) -> Self {
        LockError::Protocol {
            backend,
            detail: detail.into(),
        }
    }

    /// A [`LockError::InvalidOptions`] with `reason`.
    pub fn invalid_options(reason: impl Into<String>) -> Self {
        LockError::InvalidOptions {
            reason: reason.into(),
        }
    }

    /// True for errors worth retrying: the server was unreachable or the connection broke.
    pub fn is_transient(&self) -> bool {
        matches!(self, LockError::Connection { .. })
    }
}
