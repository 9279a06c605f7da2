//! Faults shared by the session backends' fault tests (ZooKeeper, etcd): a lock lost on the
//! holder's clock while the server still keeps its session.
//!
//! Both are made in-process and deterministic, instead of stopping a holder process with
//! SIGSTOP for a fraction of its lease (whether such a pause makes the holder's clock run out
//! before the server's depends on when the last renewal happened, which a test cannot pick).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Waker};
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{
    AcquireRequest, Acquired, Capabilities, Lease, LockBackend, LockInfo, LockKey, LockOptions,
    Renewal, Result,
};
use tokio::time::Instant;

/// A backend whose renewals, once [`FrozenRenewals::freeze`] is called, no longer move a
/// lease's deadline, while the backend underneath keeps its session alive on the server:
/// the client's keepalive and its session heartbeat out of step, as after a pause that hit
/// the keepalive just before it renewed. The core then declares the lock lost
/// (`LeaseExpired`) when the deadline it last heard of passes, and the server still holds it.
#[derive(Debug)]
pub struct FrozenRenewals {
    inner: Arc<dyn LockBackend>,
    frozen: AtomicBool,
}

impl FrozenRenewals {
    /// Wraps `inner`; renewals pass through until frozen.
    pub fn new(inner: impl LockBackend) -> Arc<FrozenRenewals> {
        Arc::new(FrozenRenewals {
            inner: Arc::new(inner),
            frozen: AtomicBool::new(false),
        })
    }

    /// From now on, renewals keep every lease's deadline where it is.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl LockBackend for FrozenRenewals {
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
        self.inner.extend(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.inner.release(lease).await
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        let renewals = self.inner.renew(leases).await?;
        if !self.frozen.load(Ordering::SeqCst) {
            return Ok(renewals);
        }
        Ok(renewals
            .into_iter()
            .zip(leases)
            .map(|(renewal, lease)| match renewal {
                Renewal::Renewed { .. } => Renewal::Renewed {
                    valid_until: lease.valid_until(),
                },
                lost => lost,
            })
            .collect())
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.inner.inspect(key, options).await
    }

    async fn ping(&self) -> Result<Duration> {
        self.inner.ping().await
    }
}

/// Moves the current runtime's clock forward by `by` at once: every timer of the client sees
/// `by` go by, as in a process stopped (SIGSTOP) for that long, while the server saw no
/// silence (it keeps the session for sure). The runtime must be a current-thread one.
pub fn jump_clock(by: Duration) {
    tokio::time::pause();
    // `advance` moves the clock on its first poll and then yields; it is not awaited, so the
    // clock cannot also auto-advance to the next timer while paused.
    let mut advance = std::pin::pin!(tokio::time::advance(by));
    let _ = advance
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    tokio::time::resume();
}

/// A second runtime with its own clock, for clients that must not see [`jump_clock`].
pub fn elsewhere() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the other clients")
    })
}
