//! How etcd client errors become [`LockError`]s.

use std::future::Future;
use std::time::Duration;

use dlock_core::LockError;
use etcd_client::Error as EtcdError;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "etcd";

/// A transport failure or an unavailable cluster is a [`LockError::Connection`] (worth
/// retrying); anything else the server said is a [`LockError::Backend`].
pub(crate) fn to_lock_error(endpoint: &str, error: EtcdError) -> LockError {
    use tonic_code::is_unavailable;
    match &error {
        EtcdError::TransportError(_) | EtcdError::IoError(_) => {
            LockError::connection(endpoint, error)
        }
        EtcdError::GRpcStatus(status) if is_unavailable(status.code() as i32) => {
            LockError::connection(endpoint, error)
        }
        _ => LockError::backend(BACKEND, error),
    }
}

/// True if etcd refused a request because the lease it names does not exist (any more).
pub(crate) fn is_lease_gone(error: &LockError) -> bool {
    const NOT_FOUND: i32 = 5;
    let LockError::Backend { source, .. } = error else {
        return false;
    };
    matches!(
        source.downcast_ref::<EtcdError>(),
        Some(EtcdError::GRpcStatus(status))
            if status.code() as i32 == NOT_FOUND && status.message().contains("lease not found")
    )
}

/// Runs one request against the cluster, giving up after `timeout` with a
/// [`LockError::Connection`]: an unreachable member must not hang a caller.
pub(crate) async fn request<T>(
    endpoint: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, EtcdError>>,
) -> Result<T, LockError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(to_lock_error(endpoint, error)),
        Err(_) => Err(LockError::connection(
            endpoint,
            format!("no answer from etcd within {timeout:?}"),
        )),
    }
}

/// gRPC status codes, by number, so this crate needs no direct `tonic` dependency.
mod tonic_code {
    const CANCELLED: i32 = 1;
    const DEADLINE_EXCEEDED: i32 = 4;
    const UNAVAILABLE: i32 = 14;
    const UNKNOWN: i32 = 2;

    /// Codes that mean "the cluster could not be asked", not "the cluster said no".
    /// etcd answers `Unknown` with "transport is closing" while a member shuts down.
    pub(super) fn is_unavailable(code: i32) -> bool {
        matches!(code, CANCELLED | DEADLINE_EXCEEDED | UNAVAILABLE | UNKNOWN)
    }
}
