//! A backend wrapper that counts calls, so tests can check how the core uses a backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{AcquireRequest, Acquired, Capabilities, Lease, LockBackend, Renewal, Result};
use tokio::time::Instant;

/// Delegates to `inner` and counts `renew` and `extend` calls.
#[derive(Debug)]
pub(crate) struct CountingBackend {
    inner: Arc<dyn LockBackend>,
    pub(crate) renew_calls: AtomicUsize,
    pub(crate) extend_calls: AtomicUsize,
}

impl CountingBackend {
    pub(crate) fn new(inner: Arc<dyn LockBackend>) -> Arc<Self> {
        Arc::new(CountingBackend {
            inner,
            renew_calls: AtomicUsize::new(0),
            extend_calls: AtomicUsize::new(0),
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
}
