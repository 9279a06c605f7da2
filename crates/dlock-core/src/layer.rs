//! Backends that wrap another backend: a [`BackendLayer`] changes or watches a few calls, and
//! [`Layered`] forwards every other call to the backend underneath.
//!
//! Test doubles (call counters, fault injectors, deliberately broken backends) and
//! instrumentation are written this way so that a hook added to [`LockBackend`] later is
//! forwarded by every wrapper at once: a wrapper that forwards by hand silently falls back
//! to the trait's default for a hook it does not know (a mutex where a semaphore was asked
//! for, a poll where the server would have woken the caller).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Acquired, Capabilities, LockBackend, LockInfo, Renewal};
use crate::error::Result;
use crate::inspect::{Introspection, ListPage, ListRequest, LockReport};
use crate::key::LockKey;
use crate::lease::Lease;
use crate::mode::LockMode;
use crate::options::LockOptions;

/// What a wrapper adds around a backend. Every method is handed the backend underneath
/// (`inner`) and by default forwards to it, after telling [`BackendLayer::on_call`]; a layer
/// overrides only the calls it changes.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use dlock_core::{BackendCall, BackendLayer, Layered, Locker, MemoryBackend};
///
/// /// Counts the renewals the keepalive sends.
/// #[derive(Debug, Default)]
/// struct CountRenewals(AtomicUsize);
///
/// impl BackendLayer for CountRenewals {
///     fn on_call(&self, call: BackendCall) {
///         if call == BackendCall::Renew {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let counted = Arc::new(Layered::new(
///     Arc::new(MemoryBackend::new()),
///     CountRenewals::default(),
/// ));
/// let locker = Locker::from_backend(counted.clone());
/// assert_eq!(counted.layer().0.load(Ordering::Relaxed), 0);
/// # let _ = locker;
/// ```
#[async_trait]
pub trait BackendLayer: fmt::Debug + Send + Sync + 'static {
    /// Called once at the start of every call that reaches [`Layered`], before the call
    /// itself (also for calls the layer overrides). The default does nothing.
    fn on_call(&self, call: BackendCall) {
        let _ = call;
    }

    /// See [`LockBackend::capabilities`].
    fn capabilities(&self, inner: &Arc<dyn LockBackend>) -> Capabilities {
        inner.capabilities()
    }

    /// See [`LockBackend::try_acquire`].
    async fn try_acquire(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Option<Acquired>> {
        inner.try_acquire(request).await
    }

    /// See [`LockBackend::acquire`].
    async fn acquire(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Acquired> {
        inner.acquire(request).await
    }

    /// See [`LockBackend::extend`].
    async fn extend(
        &self,
        inner: &Arc<dyn LockBackend>,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Instant> {
        inner.extend(lease, ttl).await
    }

    /// See [`LockBackend::release`].
    async fn release(&self, inner: &Arc<dyn LockBackend>, lease: &Lease) -> Result<()> {
        inner.release(lease).await
    }

    /// See [`LockBackend::renew`].
    async fn renew(&self, inner: &Arc<dyn LockBackend>, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        inner.renew(leases).await
    }

    /// See [`LockBackend::inspect`].
    async fn inspect(
        &self,
        inner: &Arc<dyn LockBackend>,
        key: &LockKey,
        options: &LockOptions,
    ) -> Result<LockInfo> {
        inner.inspect(key, options).await
    }

    /// See [`LockBackend::introspection`].
    fn introspection(&self, inner: &Arc<dyn LockBackend>) -> Introspection {
        inner.introspection()
    }

    /// See [`LockBackend::report`].
    async fn report(
        &self,
        inner: &Arc<dyn LockBackend>,
        key: &LockKey,
        options: &LockOptions,
    ) -> Result<LockReport> {
        inner.report(key, options).await
    }

    /// See [`LockBackend::list`].
    async fn list(
        &self,
        inner: &Arc<dyn LockBackend>,
        options: &LockOptions,
        request: &ListRequest,
    ) -> Result<ListPage> {
        inner.list(options, request).await
    }

    /// See [`LockBackend::supports`].
    fn supports(&self, inner: &Arc<dyn LockBackend>, mode: LockMode) -> bool {
        inner.supports(mode)
    }

    /// See [`LockBackend::update_owner`].
    async fn update_owner(
        &self,
        inner: &Arc<dyn LockBackend>,
        lease: &Lease,
        owner: &str,
    ) -> Result<()> {
        inner.update_owner(lease, owner).await
    }

    /// See [`LockBackend::wait_for_change`].
    async fn wait_for_change(
        &self,
        inner: &Arc<dyn LockBackend>,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        inner.wait_for_change(key, options, seen).await
    }

    /// See [`LockBackend::ping`].
    async fn ping(&self, inner: &Arc<dyn LockBackend>) -> Result<Duration> {
        inner.ping().await
    }
}

/// Which [`LockBackend`] method a call into [`Layered`] is, as [`BackendLayer::on_call`] is
/// told. Only the methods that may ask the server are named; `capabilities`,
/// `introspection` and `supports` are answered locally and not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendCall {
    /// [`LockBackend::try_acquire`].
    TryAcquire,
    /// [`LockBackend::acquire`].
    Acquire,
    /// [`LockBackend::extend`].
    Extend,
    /// [`LockBackend::release`].
    Release,
    /// [`LockBackend::renew`].
    Renew,
    /// [`LockBackend::inspect`].
    Inspect,
    /// [`LockBackend::report`].
    Report,
    /// [`LockBackend::list`].
    List,
    /// [`LockBackend::update_owner`].
    UpdateOwner,
    /// [`LockBackend::wait_for_change`]: a wait for the server, not a request of its own.
    WaitForChange,
    /// [`LockBackend::ping`].
    Ping,
}

/// A backend made of `inner` with a [`BackendLayer`] around it: every [`LockBackend`] call
/// goes through the layer, which forwards what it does not change.
#[derive(Debug)]
pub struct Layered<L> {
    inner: Arc<dyn LockBackend>,
    layer: L,
}

impl<L: BackendLayer> Layered<L> {
    /// `inner`, wrapped in `layer`.
    pub fn new(inner: Arc<dyn LockBackend>, layer: L) -> Layered<L> {
        Layered { inner, layer }
    }

    /// The layer, to read what it recorded or to change how it behaves.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The backend underneath.
    pub fn inner(&self) -> &Arc<dyn LockBackend> {
        &self.inner
    }
}

#[async_trait]
impl<L: BackendLayer> LockBackend for Layered<L> {
    fn capabilities(&self) -> Capabilities {
        self.layer.capabilities(&self.inner)
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        self.layer.on_call(BackendCall::TryAcquire);
        self.layer.try_acquire(&self.inner, request).await
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        self.layer.on_call(BackendCall::Acquire);
        self.layer.acquire(&self.inner, request).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant> {
        self.layer.on_call(BackendCall::Extend);
        self.layer.extend(&self.inner, lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.layer.on_call(BackendCall::Release);
        self.layer.release(&self.inner, lease).await
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        self.layer.on_call(BackendCall::Renew);
        self.layer.renew(&self.inner, leases).await
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.layer.on_call(BackendCall::Inspect);
        self.layer.inspect(&self.inner, key, options).await
    }

    fn introspection(&self) -> Introspection {
        self.layer.introspection(&self.inner)
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        self.layer.on_call(BackendCall::Report);
        self.layer.report(&self.inner, key, options).await
    }

    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        self.layer.on_call(BackendCall::List);
        self.layer.list(&self.inner, options, request).await
    }

    fn supports(&self, mode: LockMode) -> bool {
        self.layer.supports(&self.inner, mode)
    }

    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        self.layer.on_call(BackendCall::UpdateOwner);
        self.layer.update_owner(&self.inner, lease, owner).await
    }

    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        self.layer.on_call(BackendCall::WaitForChange);
        self.layer
            .wait_for_change(&self.inner, key, options, seen)
            .await
    }

    async fn ping(&self) -> Result<Duration> {
        self.layer.on_call(BackendCall::Ping);
        self.layer.ping(&self.inner).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Locker, MemoryBackend};

    #[derive(Debug, Default)]
    struct Calls(Mutex<Vec<BackendCall>>);

    impl BackendLayer for Calls {
        fn on_call(&self, call: BackendCall) {
            self.0.lock().unwrap().push(call);
        }
    }

    #[tokio::test]
    async fn every_call_is_forwarded_and_reported() {
        let layered = Arc::new(Layered::new(
            Arc::new(MemoryBackend::new()),
            Calls::default(),
        ));
        let locker = Locker::from_backend(layered.clone());
        let guard = locker.acquire("k").await.unwrap();
        guard.extend(Duration::from_secs(5)).await.unwrap();
        let report = locker.inspect("k").await.unwrap();
        assert!(report.info.held);
        guard.release().await.unwrap();
        assert!(layered.supports(LockMode::Shared), "supports is forwarded");
        let calls = layered.layer().0.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                BackendCall::Acquire,
                BackendCall::Extend,
                BackendCall::Report,
                BackendCall::Release
            ]
        );
    }
}
