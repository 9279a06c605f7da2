//! The conformance suite against a real ZooKeeper server (one per test binary).

use std::any::Any;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, Locker};
use dlock_test_servers::shared_zookeeper;
use dlock_zookeeper::{ZooKeeperBackend, ZooKeeperConfig};

mod conformance_support;

use conformance_support::CountingProxy;

/// Clients are separate sessions on the shared server, reached through a counting proxy of
/// this target's own.
struct ZooKeeperTarget {
    /// The server itself, for what tests do "from outside".
    url: &'static str,
    /// The server through the proxy, for the clients under test.
    proxied_url: String,
    proxy: CountingProxy,
}

impl ZooKeeperTarget {
    async fn new(url: &'static str) -> ZooKeeperTarget {
        let address = url.trim_start_matches("zookeeper://");
        let proxy = CountingProxy::start(address, &Arc::new(AtomicU64::new(0))).await;
        ZooKeeperTarget {
            url,
            proxied_url: format!("zookeeper://{}", proxy.address),
            proxy,
        }
    }

    fn config(&self, lease: Duration) -> ZooKeeperConfig {
        ZooKeeperConfig::from_url(&self.proxied_url)
            .expect("the harness gives a valid URL")
            .session_timeout(lease)
    }
}

#[async_trait]
impl ConformanceTarget for ZooKeeperTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_secs(2)
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
        let admin = zookeeper_admin(self.url).await;
        admin
            .delete(&node, None)
            .await
            .map_err(|error| LockError::backend("zookeeper", error))
    }

    /// Drops the session's connection without closing the session.
    async fn crash(&self, locker: Locker, guard: LockGuard) {
        guard.abandon();
        let backend: &dyn Any = locker.backend().as_ref();
        backend
            .downcast_ref::<ZooKeeperBackend>()
            .expect("a zookeeper backend")
            .abandon_session()
            .await;
        drop(locker);
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.proxy.requests())
    }

    async fn stop_heartbeats(&self, client: &Locker) -> bool {
        let backend: &dyn Any = client.backend().as_ref();
        backend
            .downcast_ref::<ZooKeeperBackend>()
            .expect("a zookeeper backend")
            .abandon_session()
            .await;
        true
    }
}

/// A plain client of the server, for what tests do "from outside".
async fn zookeeper_admin(url: &str) -> dlock_zookeeper::zookeeper_client::Client {
    let hosts = url.trim_start_matches("zookeeper://");
    dlock_zookeeper::zookeeper_client::Client::connect(hosts)
        .await
        .expect("an admin session")
}

dlock_conformance::conformance_tests!(ZooKeeperTarget::new(&shared_zookeeper().url));
