//! The conformance target of a real etcd, a single server or a cluster: what
//! `etcd_conformance.rs` and `etcd_cluster.rs` share.

use std::any::Any;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, Locker};
use dlock_etcd::{EtcdBackend, EtcdConfig, Layout};
use dlock_test_servers::free_port;

use crate::conformance_support::CountingProxy;

/// Clients of a running etcd; each `connect` is a new client with its own session, reaching
/// every member through a counting proxy of this target's own (one count for all members).
pub struct EtcdTarget {
    /// The members themselves, for what tests do "from outside".
    url: String,
    /// The members through the proxies, for the clients under test.
    proxied_url: String,
    proxies: Vec<CountingProxy>,
    /// Whose keys the clients write (the suite runs once per layout).
    layout: Layout,
    /// Whatever must live as long as the target (a cluster test's shared gate).
    _holding: Option<Box<dyn Any + Send + Sync>>,
}

impl EtcdTarget {
    /// A target for `url`, whose members are at `addresses` (`host:port,host:port…`, as
    /// written in the URL).
    pub async fn new(url: &str, addresses: &str) -> EtcdTarget {
        EtcdTarget::with_layout(url, addresses, Layout::Dlock).await
    }

    /// [`EtcdTarget::new`] with clients that write `layout`'s keys.
    pub async fn with_layout(url: &str, addresses: &str, layout: Layout) -> EtcdTarget {
        let count = Arc::new(AtomicU64::new(0));
        let mut proxies = Vec::new();
        for address in addresses.split(',') {
            proxies.push(CountingProxy::start(address, &count).await);
        }
        let proxied: Vec<&str> = proxies.iter().map(|p| p.address.as_str()).collect();
        EtcdTarget {
            url: url.to_owned(),
            proxied_url: url.replacen(addresses, &proxied.join(","), 1),
            proxies,
            layout,
            _holding: None,
        }
    }

    /// Keeps `value` alive as long as the target.
    #[allow(dead_code)]
    pub fn holding(mut self, value: impl Any + Send + Sync) -> EtcdTarget {
        self._holding = Some(Box::new(value));
        self
    }

    async fn abandon_sessions(locker: &Locker) {
        let backend = locker.backend();
        (&**backend as &dyn Any)
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
        let mut config = EtcdConfig::from_url(&self.proxied_url)?;
        config.layout = self.layout;
        Ok(Arc::new(EtcdBackend::connect(config).await?))
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
        Some(self.proxies[0].requests())
    }

    async fn stop_heartbeats(&self, client: &Locker) -> bool {
        EtcdTarget::abandon_sessions(client).await;
        true
    }
}
