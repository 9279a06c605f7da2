//! ZooKeeper client errors as dlock errors.

use dlock_core::LockError;
use zookeeper_client::Error;

/// Connection trouble becomes [`LockError::Connection`] (worth retrying); anything else the
/// server or client reports becomes [`LockError::Backend`], with the cause kept.
pub(crate) fn zk_error(endpoint: &str, error: Error) -> LockError {
    if is_connection(&error) {
        LockError::connection(endpoint.to_owned(), error)
    } else {
        LockError::backend("zookeeper", error)
    }
}

/// True for errors that say nothing about the request, only that the connection or the
/// session is in trouble.
pub(crate) fn is_connection(error: &Error) -> bool {
    matches!(
        error,
        Error::ConnectionLoss
            | Error::NoHosts
            | Error::Timeout
            | Error::SessionExpired
            | Error::SessionMoved
            | Error::ClientClosed
            | Error::Throttled
            // The client's own failures: I/O errors, "no response from connection in …".
            | Error::Custom(_)
    )
}
