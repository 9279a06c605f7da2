//! What a successful acquisition returns.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::error::{LockError, Result};
use crate::keepalive::Keepalive;
use crate::key::LockKey;
use crate::lease::{Lease, LossReason, Status};
use crate::options::{MAX_LEASE, MIN_LEASE};
use crate::token::FencingToken;

/// A held lock.
///
/// While the guard lives, the lock is renewed in the background (unless keepalive was turned
/// off). [`LockGuard::release`] gives it back and reports how that went; dropping the guard
/// releases it in the background. If the lock is lost (renewals failed for a whole lease, the
/// session expired, someone deleted the key), [`LockGuard::is_held`] turns false and the
/// future from [`LockGuard::lost`] resolves: race your work against it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::{Locker, MemoryBackend};
///
/// let locker = Locker::new(MemoryBackend::new());
/// let guard = locker.acquire("reports/daily").await?;
/// let lost = guard.lost();
/// tokio::select! {
///     _ = async { /* the work the lock protects, carrying guard.fencing_token() */ } => {}
///     reason = lost => eprintln!("stopped: lock lost because {reason}"),
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct LockGuard {
    lease: Arc<Lease>,
    keepalive: Arc<Keepalive>,
}

impl LockGuard {
    /// The lock's key.
    pub fn key(&self) -> &LockKey {
        self.lease.key()
    }

    /// The fencing token of this acquisition; pass it with every write the lock protects.
    pub fn fencing_token(&self) -> FencingToken {
        self.lease.fencing_token()
    }

    /// True while the lock is held: not lost, not released, and the lease has not run out on
    /// this process's clock.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// The acquisition as the backend sees it: options, lease deadline, the backend's record.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// A future that resolves, with the reason, when the lock is lost.
    ///
    /// It never resolves for a lock that is released: race it against the work the lock
    /// protects rather than spawning a task that outlives the guard. The future owns what it
    /// needs, so it can be moved into another task.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let mut status = self.lease.state().status.subscribe();
        async move {
            loop {
                if let Status::Lost(reason) = *status.borrow_and_update() {
                    return reason;
                }
                if status.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Sets the remaining lease to `ttl` now, on the server, shorter or longer than what is
    /// left. The guard's deadline follows (so [`LockGuard::is_held`] turns false and
    /// [`LockGuard::lost`] resolves when a shortened lease runs out). With keepalive on, the
    /// keepalive is re-armed to renew before the new deadline, and that renewal sets the lease
    /// back to its length.
    ///
    /// Returns [`LockError::NotHeld`] (and marks the guard lost) if the lock is no longer
    /// ours.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        if !(MIN_LEASE..=MAX_LEASE).contains(&ttl) {
            return Err(LockError::invalid_options(format!(
                "extension {ttl:?} is outside {MIN_LEASE:?}..={MAX_LEASE:?}"
            )));
        }
        if !self.is_held() {
            return Err(self.not_held());
        }
        match self.keepalive.backend().extend(&self.lease, ttl).await {
            Ok(valid_until) => {
                self.lease.extended_until(valid_until);
                self.keepalive.rearm(&self.lease);
                Ok(())
            }
            Err(LockError::NotHeld { key }) => {
                self.lease.state().mark_lost(LossReason::NotOwner);
                Err(LockError::NotHeld { key })
            }
            Err(other) => Err(other),
        }
    }

    /// Gives the lock back and waits for the server to confirm.
    ///
    /// Returns [`LockError::NotHeld`] if the lock was already lost; the server's record of
    /// someone else's lock is never touched. If the server cannot be reached the error says
    /// so, and the lock frees itself when its lease runs out (renewal has stopped).
    pub async fn release(self) -> Result<()> {
        let lease = Arc::clone(&self.lease);
        let keepalive = Arc::clone(&self.keepalive);
        let was_held = lease.state().begin_release();
        // From here on Drop has nothing to do: the status is no longer `Held`.
        drop(self);
        if !was_held {
            return Err(LockError::NotHeld {
                key: lease.key().to_string(),
            });
        }
        finish_release(&keepalive, &lease).await
    }

    /// Forgets the lock without releasing it and stops renewing it: the server frees it when
    /// the lease runs out (for session backends, when the session ends). This is what a
    /// crashed process leaves behind; tests use it to simulate one.
    pub fn abandon(self) {
        self.lease
            .state()
            .transition(|s| matches!(s, Status::Held), Status::Released);
        self.keepalive.unregister(&self.lease);
    }

    pub(crate) fn new(lease: Arc<Lease>, keepalive: Arc<Keepalive>) -> Self {
        keepalive.register(Arc::clone(&lease));
        LockGuard { lease, keepalive }
    }

    fn not_held(&self) -> LockError {
        LockError::NotHeld {
            key: self.key().to_string(),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.lease.state().begin_release() {
            return;
        }
        let lease = Arc::clone(&self.lease);
        let keepalive = Arc::clone(&self.keepalive);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let span = lease
                    .observation()
                    .map_or_else(tracing::Span::none, |observation| observation.span());
                let releasing = async move {
                    if let Err(error) = finish_release(&keepalive, &lease).await {
                        tracing::warn!(key = %lease.key(), %error, "background release failed; the lease will expire");
                    }
                };
                runtime.spawn(releasing.instrument(span));
            }
            Err(_) => {
                // No runtime to talk to the server: stop renewing and let the lease expire.
                lease.state().transition(|_| true, Status::Released);
                keepalive.unregister(&lease);
            }
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", self.key())
            .field("fencing_token", &self.fencing_token())
            .field("held", &self.is_held())
            .finish()
    }
}

/// Sends the release of a lease already marked `Releasing`, then settles its status.
async fn finish_release(keepalive: &Keepalive, lease: &Lease) -> Result<()> {
    // Inside the acquisition's span, which settling the status then closes.
    let span = lease
        .observation()
        .map_or_else(tracing::Span::none, |observation| observation.span());
    let outcome = keepalive.backend().release(lease).instrument(span).await;
    let settled = match &outcome {
        Err(LockError::NotHeld { .. }) => Status::Lost(LossReason::NotOwner),
        _ => Status::Released,
    };
    lease.state().transition(|_| true, settled);
    keepalive.unregister(lease);
    outcome
}
