//! The conformance suite against a real etcd (one server shared by this test binary).

use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, Locker};
use dlock_etcd::EtcdBackend;
use dlock_test_servers::{free_port, shared_etcd};

/// Clients of the shared etcd; each `connect` is a new client with its own session.
struct EtcdTarget {
    url: String,
}

#[async_trait]
impl ConformanceTarget for EtcdTarget {
    fn short_lease(&self) -> Duration {
        // etcd grants leases in whole seconds and never below its minimum TTL (2 s).
        Duration::from_secs(2)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        // The session's lease length follows each lock's `lease` option.
        Ok(Arc::new(dlock_etcd::connect(&self.url).await?))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let url = format!(
            "etcd://127.0.0.1:{}?connect_timeout=1s&timeout=1s",
            free_port()
        );
        Ok(Arc::new(dlock_etcd::connect(&url).await?))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        // An operator deleting the lock key: the guard must notice on its own.
        let backend = dlock_etcd::connect(&self.url).await?;
        let key = dlock_etcd::fence::lock_key(guard)?;
        let mut client = backend.client().clone();
        client
            .delete(key, None)
            .await
            .map_err(|e| LockError::backend("etcd", e))?;
        Ok(())
    }

    async fn crash(&self, locker: Locker, guard: LockGuard) {
        let backend = locker.backend();
        let etcd = (&**backend as &dyn std::any::Any)
            .downcast_ref::<EtcdBackend>()
            .expect("an etcd backend");
        etcd.abandon_sessions().await;
        guard.abandon();
        drop(locker);
    }
}

dlock_conformance::conformance_tests!(async {
    EtcdTarget {
        url: shared_etcd().url.clone(),
    }
});
