//! The conformance suite against the in-memory reference backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget, RequestCounting};
use dlock_core::{LockBackend, LockError, LockGuard, MemoryServer};

/// Every test gets a fresh in-memory server; clients are separate `MemoryBackend`s on it.
struct MemoryTarget {
    server: Arc<MemoryServer>,
    /// Every call into a client is one request to the in-process server.
    requests: Arc<AtomicU64>,
}

#[async_trait]
impl ConformanceTarget for MemoryTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(RequestCounting::wrap(
            Arc::new(self.server.client()),
            &self.requests,
        ))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let server = MemoryServer::new();
        server.set_reachable(false);
        Ok(Arc::new(server.client()))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        self.server
            .forget(&guard.lease().options().prefix, guard.key());
        Ok(())
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.requests.load(Ordering::Relaxed))
    }
}

dlock_conformance::conformance_tests!(async {
    MemoryTarget {
        server: MemoryServer::new(),
        requests: Arc::default(),
    }
});
