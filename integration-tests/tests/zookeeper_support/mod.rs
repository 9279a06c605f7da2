//! The conformance target of a real ZooKeeper, a standalone server or an ensemble: what
//! `zookeeper_conformance.rs` and `zookeeper_ensemble.rs` share.

use std::any::Any;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, Locker};
use dlock_zookeeper::{Layout, ZooKeeperBackend, ZooKeeperConfig};

use crate::conformance_support::CountingProxy;

/// Clients are separate sessions, reaching every server through a counting proxy of this
/// target's own (one count for all servers).
pub struct ZooKeeperTarget {
    /// The servers themselves (`host:port,…`), for what tests do "from outside".
    hosts: String,
    /// The servers through the proxies, for the clients under test.
    proxied_url: String,
    proxies: Vec<CountingProxy>,
    /// Whose nodes the clients write (the suite runs once per layout).
    layout: Layout,
    /// The session timeout the suite's short-lease tests use.
    short_lease: Duration,
    /// Whatever must live as long as the target (a cluster test's shared gate).
    _holding: Option<Box<dyn Any + Send + Sync>>,
}

impl ZooKeeperTarget {
    /// A target for the servers of `url` (`zookeeper://host:port,host:port…`, no path or
    /// options).
    pub async fn new(url: &str) -> ZooKeeperTarget {
        ZooKeeperTarget::with_layout(url, Layout::Dlock).await
    }

    /// [`ZooKeeperTarget::new`] with clients that write `layout`'s nodes.
    pub async fn with_layout(url: &str, layout: Layout) -> ZooKeeperTarget {
        let hosts = url.trim_start_matches("zookeeper://");
        let count = Arc::new(AtomicU64::new(0));
        let mut proxies = Vec::new();
        for address in hosts.split(',') {
            proxies.push(CountingProxy::start(address, &count).await);
        }
        let proxied: Vec<&str> = proxies.iter().map(|p| p.address.as_str()).collect();
        ZooKeeperTarget {
            hosts: hosts.to_owned(),
            proxied_url: format!("zookeeper://{}", proxied.join(",")),
            proxies,
            layout,
            short_lease: Duration::from_secs(2),
            _holding: None,
        }
    }

    /// Clients speak TLS (`zookeepers://`, the URL parameters `tls_params`: `ca=…&…`) to the
    /// servers this target was made for, which must be their secure ports; what tests do
    /// "from outside" goes to `admin_hosts`, the same servers' plain-text ports.
    #[allow(dead_code)]
    pub fn over_tls(mut self, admin_hosts: &str, tls_params: &str) -> ZooKeeperTarget {
        let proxied = self.proxied_url.trim_start_matches("zookeeper://");
        self.proxied_url = format!("zookeepers://{proxied}?{tls_params}");
        self.hosts = admin_hosts.to_owned();
        self
    }

    /// Sessions of `lease` for the suite's short-lease tests: an ensemble of three JVMs on a
    /// loaded two-core machine can miss a 2 s session's heartbeats.
    #[allow(dead_code)]
    pub fn short_lease(mut self, lease: Duration) -> ZooKeeperTarget {
        self.short_lease = lease;
        self
    }

    /// Keeps `value` alive as long as the target.
    #[allow(dead_code)]
    pub fn holding(mut self, value: impl Any + Send + Sync) -> ZooKeeperTarget {
        self._holding = Some(Box::new(value));
        self
    }

    fn config(&self, lease: Duration) -> ZooKeeperConfig {
        let mut config = ZooKeeperConfig::from_url(&self.proxied_url)
            .expect("the harness gives a valid URL")
            .session_timeout(lease);
        config.layout = self.layout;
        config
    }

    fn backend(locker: &Locker) -> &ZooKeeperBackend {
        let backend: &dyn Any = locker.backend().as_ref();
        backend
            .downcast_ref::<ZooKeeperBackend>()
            .expect("a zookeeper backend")
    }
}

#[async_trait]
impl ConformanceTarget for ZooKeeperTarget {
    fn short_lease(&self) -> Duration {
        self.short_lease
    }

    async fn connect(&self, lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(Arc::new(
            ZooKeeperBackend::connect(self.config(lease)).await?,
        ))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let port = dlock_test_servers::free_port();
        let backend =
            dlock_zookeeper::connect(&format!("zookeeper://127.0.0.1:{port}?connect_timeout=1s"))
                .await?;
        Ok(Arc::new(backend))
    }

    /// Deletes the lock node from another session, as an operator would.
    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        let node = ZooKeeperBackend::node_path(guard.lease())
            .expect("a zookeeper lease")
            .to_owned();
        let admin = dlock_zookeeper::zookeeper_client::Client::connect(&self.hosts)
            .await
            .expect("an admin session");
        admin
            .delete(&node, None)
            .await
            .map_err(|error| LockError::backend("zookeeper", error))
    }

    /// Drops the session's connection without closing the session.
    async fn crash(&self, locker: Locker, guard: LockGuard) {
        guard.abandon();
        ZooKeeperTarget::backend(&locker).abandon_session().await;
        drop(locker);
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.proxies[0].requests())
    }

    async fn stop_heartbeats(&self, client: &Locker) -> bool {
        ZooKeeperTarget::backend(client).abandon_session().await;
        true
    }
}
