//! The client applications hold: one backend, any number of locks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Capabilities, LockBackend};
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::keepalive::Keepalive;
use crate::key::IntoLockKey;
use crate::lease::{Lease, LeaseState};
use crate::options::LockOptions;

/// How long past its wait limit an `acquire` may run before the locker gives up on the
/// backend and reports [`LockError::Timeout`] itself (P9).
pub const WAIT_LIMIT_GRACE: Duration = Duration::from_millis(500);

/// A lock client over any backend. Application code is written against `Locker`, so the
/// backend can be swapped without touching it.
///
/// Cloning is cheap and clones share the backend's connection and keepalive.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use std::time::Duration;
/// use dlock_core::{LockOptions, Locker, MemoryBackend};
///
/// let locker = Locker::new(MemoryBackend::new())
///     .with_options(LockOptions::default().lease(Duration::from_secs(10)))?;
///
/// let guard = locker.acquire("invoices/2026-11").await?;
/// println!("holding {} with token {}", guard.key(), guard.fencing_token());
///
/// // Somebody else trying at the same time does not get it.
/// assert!(locker.try_acquire("invoices/2026-11").await?.is_none());
///
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locker {
    keepalive: Arc<Keepalive>,
    options: LockOptions,
}

impl Locker {
    /// A locker over `backend` with default [`LockOptions`].
    pub fn new(backend: impl LockBackend) -> Self {
        Self::from_backend(Arc::new(backend))
    }

    /// A locker over a shared backend.
    pub fn from_backend(backend: Arc<dyn LockBackend>) -> Self {
        Locker {
            keepalive: Keepalive::new(backend),
            options: LockOptions::default(),
        }
    }

    /// The same locker with other default options, checked first.
    pub fn with_options(mut self, options: LockOptions) -> Result<Self> {
        options.validate()?;
        self.options = options;
        Ok(self)
    }

    /// The options `acquire` and `try_acquire` use.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// The backend underneath.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        self.keepalive.backend()
    }

    /// What the backend guarantees.
    pub fn capabilities(&self) -> Capabilities {
        self.backend().capabilities()
    }

    /// How many locks taken through this locker (and its clones) are held or being released.
    pub fn held_count(&self) -> usize {
        self.keepalive.len()
    }

    /// Takes the lock on `key`, waiting up to the default wait limit (forever by default).
    pub async fn acquire(&self, key: impl IntoLockKey) -> Result<LockGuard> {
        self.acquire_with(key, &self.options.clone()).await
    }

    /// Takes the lock if nobody holds it, without waiting; `Ok(None)` if somebody does.
    pub async fn try_acquire(&self, key: impl IntoLockKey) -> Result<Option<LockGuard>> {
        self.try_acquire_with(key, &self.options.clone()).await
    }

    /// Takes the lock on `key` with the given options. A wait limit of zero tries once and
    /// reports [`LockError::Timeout`] if the lock is held.
    pub async fn acquire_with(
        &self,
        key: impl IntoLockKey,
        options: &LockOptions,
    ) -> Result<LockGuard> {
        self.acquire_observed(key, options, None).await
    }

    /// Like [`Locker::acquire_with`], and sends on `queued` once this request stands in the
    /// server's line for the lock (it is not sent if the lock was free).
    ///
    /// Useful to tell a user "waiting for the lock", and for tests that need waiters queued
    /// in a known order.
    pub async fn acquire_observed(
        &self,
        key: impl IntoLockKey,
        options: &LockOptions,
        queued: Option<oneshot::Sender<()>>,
    ) -> Result<LockGuard> {
        let key = key.into_lock_key()?;
        options.validate()?;
        let timeout = || LockError::Timeout {
            key: key.to_string(),
            waited: options.wait.unwrap_or_default(),
        };
        if options.wait == Some(Duration::ZERO) {
            return self
                .try_acquire_with(&key, options)
                .await?
                .ok_or_else(timeout);
        }
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        let mut queued = queued;
        loop {
            let state = LeaseState::new();
            let request =
                AcquireRequest::new(&key, options, deadline, state.notifier(), queued.take());
            let acquiring = self.backend().acquire(request);
            let acquired = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline + WAIT_LIMIT_GRACE, acquiring)
                    .await
                    .map_err(|_| timeout())??,
                None => acquiring.await?,
            };
            if let Some(acquired) = self.fresh(&key, options, acquired, &state, deadline).await {
                return Ok(self.guard(key, options, acquired, state));
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(timeout());
            }
        }
    }

    /// Like [`Locker::try_acquire`], with the given options.
    pub async fn try_acquire_with(
        &self,
        key: impl IntoLockKey,
        options: &LockOptions,
    ) -> Result<Option<LockGuard>> {
        let key = key.into_lock_key()?;
        options.validate()?;
        let state = LeaseState::new();
        let request = AcquireRequest::new(&key, options, None, state.notifier(), None);
        let Some(acquired) = self.backend().try_acquire(request).await? else {
            return Ok(None);
        };
        let fresh = self.fresh(&key, options, acquired, &state, None).await;
        Ok(fresh.map(|acquired| self.guard(key, options, acquired, state)))
    }

    /// `acquired`, unless its lease already ran out on this process's clock: a grant that
    /// arrived while the process was stopped, or that took longer to confirm than the lease.
    /// Such a lock may already be someone else's, so it is never handed out; it is given back
    /// (owner-checked, waiting no longer than `deadline`) so that nobody waits on it.
    async fn fresh(
        &self,
        key: &crate::LockKey,
        options: &LockOptions,
        acquired: crate::Acquired,
        state: &Arc<LeaseState>,
        deadline: Option<Instant>,
    ) -> Option<crate::Acquired> {
        if acquired.valid_until > Instant::now() {
            return Some(acquired);
        }
        tracing::warn!(%key, token = %acquired.token, "the lock was granted with its lease already run out; giving it back");
        state.begin_release();
        let stale = Lease::new(key.clone(), options.clone(), acquired, Arc::clone(state));
        let giving_back = self.backend().release(&stale);
        let outcome = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline + WAIT_LIMIT_GRACE, giving_back)
                .await
                .ok(),
            None => Some(giving_back.await),
        };
        if let Some(Err(error)) = outcome {
            tracing::debug!(%key, %error, "giving back a stale grant failed; its lease ends it");
        }
        state.transition(|_| true, crate::lease::Status::Released);
        None
    }

    fn guard(
        &self,
        key: crate::LockKey,
        options: &LockOptions,
        acquired: crate::Acquired,
        state: Arc<LeaseState>,
    ) -> LockGuard {
        let lease = Arc::new(Lease::new(key, options.clone(), acquired, state));
        LockGuard::new(lease, Arc::clone(&self.keepalive))
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", self.backend())
            .field("options", &self.options)
            .finish()
    }
}
