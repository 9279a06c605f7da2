//! The conformance suite against the in-memory reference backend.

use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, MemoryServer};

/// Every test gets a fresh in-memory server; clients are separate `MemoryBackend`s on it.
struct MemoryTarget {
    server: Arc<MemoryServer>,
}

#[async_trait]
impl ConformanceTarget for MemoryTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(Arc::new(self.server.client()))
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
}

dlock_conformance::conformance_tests!(async {
    MemoryTarget {
        server: MemoryServer::new(),
    }
});
