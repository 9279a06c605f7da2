//! The conformance suite against a real etcd (one server shared by this test binary).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, Locker};
use dlock_etcd::EtcdBackend;
use dlock_test_servers::{free_port, shared_etcd};

mod conformance_support;

use conformance_support::CountingProxy;

/// Clients of the shared etcd; each `connect` is a new client with its own session, reached
/// through a counting proxy of this target's own.
struct EtcdTarget {
    /// The server itself, for what tests do "from outside".
    url: String,
    /// The server through the proxy, for the clients under test.
    proxied_url: String,
    proxy: CountingProxy,
}

impl EtcdTarget {
    async fn new(url: &str, address: &str) -> EtcdTarget {
        let proxy = CountingProxy::start(address, &Arc::new(AtomicU64::new(0))).await;
        EtcdTarget {
            url: url.to_owned(),
            proxied_url: url.replace(address, &proxy.address),
            proxy,
        }
    }

    async fn abandon_sessions(locker: &Locker) {
        let backend = locker.backend();
        (&**backend as &dyn std::any::Any)
            .downcast_ref::<EtcdBackend>()
            .expect("an etcd backend")
            .abandon_sessions()
            .await;
    }
}

#[async_trait]
impl ConformanceTarget for EtcdTarget {
    fn short_lease(&self) -> Duration {
        // etcd grants leases in whole seconds and never below its minimum TTL (2 s).
        Duration::from_secs(2)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        // The session's lease length follows each lock's `lease` option.
        Ok(Arc::new(dlock_etcd::connect(&self.proxied_url).await?))
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
        EtcdTarget::abandon_sessions(&locker).await;
        guard.abandon();
        drop(locker);
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.proxy.requests())
    }

    async fn stop_heartbeats(&self, client: &Locker) -> bool {
        EtcdTarget::abandon_sessions(client).await;
        true
    }
}

dlock_conformance::conformance_tests!(EtcdTarget::new(&shared_etcd().url, &shared_etcd().address));
