//! Small pieces every backend needs, written once: the errors the contract names, the
//! backend's own record of a lease, the check of a client's key namespace, a poison-tolerant
//! mutex, clean-up sent from `Drop`, the [`SessionLease`] of backends whose locks live
//! and die with one server session, and the [`TlsFiles`] every backend's URL names alike.
//!
//! Applications never need this module; backend authors use it so that every backend
//! reports the same errors the same way.

use std::any::Any;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use crate::backend::AcquireRequest;
use crate::error::{LockError, Result};
use crate::lease::Lease;

pub use crate::session_lease::{SessionCheck, SessionLease};
pub use crate::tls_files::TlsFiles;

impl Lease {
    /// [`LockError::NotHeld`] for this lease's key: what `extend` and `release` return when
    /// the server no longer records this holder.
    pub fn not_held(&self) -> LockError {
        LockError::NotHeld {
            key: self.key().to_string(),
        }
    }

    /// The backend's own record of this lease, or a [`LockError::Protocol`] naming `backend`
    /// if another backend took it (a lease handed to the wrong client).
    pub fn record_of<T: Any>(&self, backend: &'static str) -> Result<&T> {
        self.record::<T>().ok_or_else(|| {
            LockError::protocol(
                backend,
                "the lease was not taken by a client of this backend",
            )
        })
    }
}

impl AcquireRequest<'_> {
    /// [`LockError::Timeout`] for this request: what `acquire` returns once its deadline has
    /// passed and it has left the line.
    pub fn timeout(&self) -> LockError {
        LockError::Timeout {
            key: self.key.to_string(),
            waited: self.options.wait.unwrap_or_default(),
        }
    }
}

/// Checks a client's key namespace (the URL's `prefix`, which a backend puts in front of
/// every name it uses on the server): a control character has no place in a server's names
/// nor in the logs that show them.
pub fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.chars().any(char::is_control) {
        return Err(LockError::invalid_options(
            "the prefix contains a control character",
        ));
    }
    Ok(())
}

/// Locks a std mutex, recovering from poisoning. Only for data that every critical section
/// leaves consistent (plain assignments, whole replacements): a panic elsewhere must not
/// turn every later lock operation into a panic too.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `clean_up` in the background if a tokio runtime is running, as a `Drop` that must
/// tell the server something (leave a line, delete a node) does; returns whether it could.
/// Without a runtime nothing can reach the server, and what was left behind ends with its
/// lease.
pub fn spawn_clean_up(clean_up: impl Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(clean_up);
            true
        }
        Err(_) => false,
    }
}
