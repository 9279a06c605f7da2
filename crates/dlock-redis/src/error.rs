//! How Redis client errors and odd script answers become [`LockError`]s.

use dlock_core::LockError;

use crate::layout::LockNames;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "redis";

/// Maps a client library error: I/O, timeouts and refused connections are
/// [`LockError::Connection`] (worth retrying); the rest are [`LockError::Backend`].
pub(crate) fn to_lock_error(endpoint: &str, error: redis::RedisError) -> LockError {
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::ReadOnly
                    // Redis Cluster, when the client's retries ran out: a slot being moved
                    // (a script whose keys are half moved), a primary down until its
                    // replica is promoted, redirections that kept changing.
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::Moved
                    | redis::ServerErrorKind::Ask
            )
        )
        // A primary demoted by a failover (Sentinel) answers writes, also a script's, with
        // READONLY: the lock is elsewhere now, worth retrying once the client follows.
        || error.to_string().contains("READONLY")
    {
        LockError::connection(endpoint, error)
    } else {
        LockError::backend(BACKEND, error)
    }
}

/// A key of the lock `names` holds a value of another type: not ours to touch.
pub(crate) fn wrong_type(names: &LockNames) -> LockError {
    LockError::protocol(
        BACKEND,
        format!("the key {} holds a value that is not a lock", names.lock),
    )
}

/// A script answered something it never answers: another version of the scripts, or a
/// proxy in between.
pub(crate) fn unexpected(script: &str, reply: &[i64]) -> LockError {
    LockError::protocol(BACKEND, format!("the {script} script answered {reply:?}"))
}
