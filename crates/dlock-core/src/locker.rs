//! The client applications hold: one backend, any number of locks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{AcquireRequest, Capabilities, LockBackend};
use crate::election::Election;
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::inspect::{ListPage, ListRequest, LockReport};
use crate::keepalive::Keepalive;
use crate::key::IntoLockKey;
use crate::lease::{Lease, LeaseState};
use crate::metrics::Attempt;
use crate::mode::LockMode;
use crate::options::LockOptions;
use crate::rw_lock::RwLock;
use crate::semaphore::Semaphore;

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
    prefix_label: bool,
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
            prefix_label: false,
        }
    }

    /// The same locker, labelling its [metrics](crate::metrics) with each lock's key
    /// [`prefix`](LockOptions::prefix) too (off by default). Turn it on only where the
    /// prefixes are few and fixed: every prefix is a new set of time series.
    pub fn with_prefix_label(mut self, on: bool) -> Self {
        self.prefix_label = on;
        self
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
        self.acquire_with(key, &self.options).await
    }

    /// Takes the lock if nobody holds it, without waiting; `Ok(None)` if somebody does.
    pub async fn try_acquire(&self, key: impl IntoLockKey) -> Result<Option<LockGuard>> {
        self.try_acquire_with(key, &self.options).await
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
        self.check(options)?;
        let attempt = self.attempt(&key, options);
        let granted = self
            .wait_for_grant(&key, options, queued, &attempt)
            .instrument(attempt.span().clone())
            .await;
        match granted {
            Ok((acquired, state)) => Ok(self.guard(key, options, acquired, state, attempt)),
            Err(error) => {
                attempt.failed(&error);
                Err(error)
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
        self.check(options)?;
        let attempt = self.attempt(&key, options);
        let tried = self
            .try_once(&key, options, &attempt)
            .instrument(attempt.span().clone())
            .await;
        match tried {
            Ok(Some((acquired, state))) => {
                Ok(Some(self.guard(key, options, acquired, state, attempt)))
            }
            Ok(None) => {
                attempt.busy();
                Ok(None)
            }
            Err(error) => {
                attempt.failed(&error);
                Err(error)
            }
        }
    }

    /// A counting semaphore named `name` with `permits` permits, under this locker's
    /// options (see [`Semaphore`]). [`LockError::InvalidKey`] or
    /// [`LockError::InvalidOptions`] for a bad name or count; taking a permit on a backend
    /// without semaphores is [`LockError::Unsupported`].
    pub fn semaphore(&self, name: impl IntoLockKey, permits: u32) -> Result<Semaphore> {
        let mode = LockMode::Permit(permits);
        mode.validate()?;
        let options = self.options.clone().mode(mode);
        Ok(Semaphore::new(self.clone(), name.into_lock_key()?, options))
    }

    /// A read-write lock named `name`, under this locker's options (see [`RwLock`]).
    pub fn rw_lock(&self, name: impl IntoLockKey) -> Result<RwLock> {
        Ok(RwLock::new(self.clone(), name.into_lock_key()?))
    }

    /// The leader election named `name`, under this locker's options (see [`Election`]).
    pub fn election(&self, name: impl IntoLockKey) -> Result<Election> {
        Ok(Election::new(self.clone(), name.into_lock_key()?))
    }

    /// What the server knows of the lock on `key` under this locker's options: held, token,
    /// lease, waiters, and the holder's owner and acquisition time where the backend stores
    /// them ([`LockBackend::introspection`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock_core::LockError> {
    /// use dlock_core::{LockOptions, Locker, MemoryServer};
    ///
    /// let server = MemoryServer::new();
    /// let worker = Locker::new(server.client())
    ///     .with_options(LockOptions::default().owner("worker-7"))?;
    /// let operator = Locker::new(server.client());
    ///
    /// let guard = worker.acquire("exports/nightly").await?;
    /// let report = operator.inspect("exports/nightly").await?;
    /// assert!(report.info.held);
    /// assert_eq!(report.info.fencing_token, Some(guard.fencing_token()));
    /// assert_eq!(report.owner.as_deref(), Some("worker-7"));
    /// assert!(report.acquired_at.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self, key: impl IntoLockKey) -> Result<LockReport> {
        self.inspect_with(key, &self.options.clone()).await
    }

    /// Like [`Locker::inspect`], for the lock under `options.prefix`.
    pub async fn inspect_with(
        &self,
        key: impl IntoLockKey,
        options: &LockOptions,
    ) -> Result<LockReport> {
        let key = key.into_lock_key()?;
        options.validate()?;
        self.backend().report(&key, options).await
    }

    /// One page of the locks held or waited for under this locker's key prefix whose key
    /// starts with `request.key_prefix`, with their holders; [`LockError::Unsupported`] if
    /// the backend cannot list ([`LockBackend::introspection`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock_core::LockError> {
    /// use dlock_core::{ListRequest, Locker, MemoryBackend};
    ///
    /// let locker = Locker::new(MemoryBackend::new());
    /// let _a = locker.acquire("jobs/a").await?;
    /// let _b = locker.acquire("jobs/b").await?;
    /// let _c = locker.acquire("mail/c").await?;
    ///
    /// let first = locker.list(&ListRequest::new("jobs/").limit(1)).await?;
    /// assert_eq!(first.locks[0].key.as_str(), "jobs/a");
    /// let cursor = first.next.expect("one more page");
    /// let second = locker.list(&ListRequest::new("jobs/").limit(1).after(cursor)).await?;
    /// assert_eq!(second.locks[0].key.as_str(), "jobs/b");
    /// assert_eq!(second.next, None);
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, request: &ListRequest) -> Result<ListPage> {
        self.list_with(&self.options.clone(), request).await
    }

    /// Like [`Locker::list`], under `options.prefix`.
    pub async fn list_with(
        &self,
        options: &LockOptions,
        request: &ListRequest,
    ) -> Result<ListPage> {
        options.validate()?;
        request.validate()?;
        self.backend().list(options, request).await
    }

    /// The acquire loop: asks the backend until it grants a lease that is still fresh, or
    /// the wait limit passes.
    async fn wait_for_grant(
        &self,
        key: &crate::LockKey,
        options: &LockOptions,
        queued: Option<oneshot::Sender<()>>,
        attempt: &Attempt,
    ) -> Result<(crate::Acquired, Arc<LeaseState>)> {
        let timeout = || LockError::Timeout {
            key: key.to_string(),
            waited: options.wait.unwrap_or_default(),
        };
        if options.wait == Some(Duration::ZERO) {
            return self
                .try_once(key, options, attempt)
                .await?
                .ok_or_else(timeout);
        }
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        let mut queued = queued;
        loop {
            let state = LeaseState::new();
            let request =
                AcquireRequest::new(key, options, deadline, state.notifier(), queued.take())
                    .with_queued_flag(attempt.queued_flag());
            let acquiring = self.backend().acquire(request);
            let acquired = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline + WAIT_LIMIT_GRACE, acquiring)
                    .await
                    .map_err(|_| timeout())??,
                None => acquiring.await?,
            };
            if let Some(acquired) = self.fresh(key, options, acquired, &state, deadline).await {
                return Ok((acquired, state));
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(timeout());
            }
        }
    }

    /// One `try_acquire` of the backend; a stale grant counts as held.
    async fn try_once(
        &self,
        key: &crate::LockKey,
        options: &LockOptions,
        attempt: &Attempt,
    ) -> Result<Option<(crate::Acquired, Arc<LeaseState>)>> {
        let state = LeaseState::new();
        let request = AcquireRequest::new(key, options, None, state.notifier(), None)
            .with_queued_flag(attempt.queued_flag());
        let Some(acquired) = self.backend().try_acquire(request).await? else {
            return Ok(None);
        };
        let fresh = self.fresh(key, options, acquired, &state, None).await;
        Ok(fresh.map(|acquired| (acquired, state)))
    }

    /// `options` are in range and the backend can take locks in their mode.
    fn check(&self, options: &LockOptions) -> Result<()> {
        options.validate()?;
        if self.backend().supports(options.mode) {
            return Ok(());
        }
        Err(LockError::Unsupported {
            backend: self.capabilities().name,
            operation: match options.mode {
                LockMode::Exclusive => "exclusive locks",
                LockMode::Shared => "shared (read) locks",
                LockMode::Permit(_) => "semaphores",
            },
        })
    }

    fn attempt(&self, key: &crate::LockKey, options: &LockOptions) -> Attempt {
        Attempt::start(self.capabilities().name, key, options, self.prefix_label)
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
        attempt: Attempt,
    ) -> LockGuard {
        state.observe(attempt.granted(acquired.token));
        let lease = Arc::new(Lease::new(key, options.clone(), acquired, state));
        LockGuard::new(lease, Arc::clone(&self.keepalive))
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", self.backend())
            .field("options", &self.options)
            .field("prefix_label", &self.prefix_label)
            .finish()
    }
}
