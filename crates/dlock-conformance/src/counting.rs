//! Backend wrappers that count and watch calls, so tests can check how the core uses a
//! backend and how a backend uses its server.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{
    AcquireRequest, Acquired, Capabilities, Introspection, Lease, ListPage, ListRequest,
    LockBackend, LockInfo, LockKey, LockMode, LockOptions, LockReport, Renewal, Result,
};
use tokio::time::Instant;

/// A client that counts every call into `inner` as one request to the server, for targets
/// whose backend makes exactly one request per call (an in-process server, say) and so can
/// implement [`ConformanceTarget::server_requests`](crate::ConformanceTarget::server_requests)
/// without a proxy. Wrap every client of one target around the same counter.
#[derive(Debug)]
pub struct RequestCounting {
    inner: Arc<dyn LockBackend>,
    requests: Arc<AtomicU64>,
}

impl RequestCounting {
    /// `inner`, counting each of its calls in `requests`.
    pub fn wrap(inner: Arc<dyn LockBackend>, requests: &Arc<AtomicU64>) -> Arc<dyn LockBackend> {
        Arc::new(RequestCounting {
            inner,
            requests: Arc::clone(requests),
        })
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl LockBackend for RequestCounting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        self.count();
        self.inner.try_acquire(request).await
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        self.count();
        self.inner.acquire(request).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant> {
        self.count();
        self.inner.extend(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.count();
        self.inner.release(lease).await
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        self.count();
        self.inner.renew(leases).await
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.count();
        self.inner.inspect(key, options).await
    }

    fn introspection(&self) -> Introspection {
        self.inner.introspection()
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        self.count();
        self.inner.report(key, options).await
    }

    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        self.count();
        self.inner.list(options, request).await
    }

    fn supports(&self, mode: LockMode) -> bool {
        self.inner.supports(mode)
    }

    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        self.count();
        self.inner.update_owner(lease, owner).await
    }

    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        self.inner.wait_for_change(key, options, seen).await
    }

    async fn ping(&self) -> Result<Duration> {
        self.count();
        self.inner.ping().await
    }
}

/// Delegates to `inner` and counts `renew` and `extend` calls, and the calls to
/// `wait_for_change` that have begun.
#[derive(Debug)]
pub(crate) struct CountingBackend {
    inner: Arc<dyn LockBackend>,
    pub(crate) renew_calls: AtomicUsize,
    pub(crate) extend_calls: AtomicUsize,
    pub(crate) change_waits: tokio::sync::watch::Sender<usize>,
}

impl CountingBackend {
    pub(crate) fn new(inner: Arc<dyn LockBackend>) -> Arc<Self> {
        Arc::new(CountingBackend {
            inner,
            renew_calls: AtomicUsize::new(0),
            extend_calls: AtomicUsize::new(0),
            change_waits: tokio::sync::watch::Sender::new(0),
        })
    }
}

#[async_trait]
impl LockBackend for CountingBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        self.inner.try_acquire(request).await
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        self.inner.acquire(request).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant> {
        self.extend_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.extend(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.inner.release(lease).await
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        self.renew_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.renew(leases).await
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.inner.inspect(key, options).await
    }

    fn introspection(&self) -> Introspection {
        self.inner.introspection()
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        self.inner.report(key, options).await
    }

    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        self.inner.list(options, request).await
    }

    fn supports(&self, mode: LockMode) -> bool {
        self.inner.supports(mode)
    }

    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        self.inner.update_owner(lease, owner).await
    }

    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        self.change_waits.send_modify(|waits| *waits += 1);
        self.inner.wait_for_change(key, options, seen).await
    }

    async fn ping(&self) -> Result<Duration> {
        self.inner.ping().await
    }
}
