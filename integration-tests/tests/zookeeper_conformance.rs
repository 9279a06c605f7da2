//! The conformance suite against a real ZooKeeper server (one per test binary).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, Locker};
use dlock_test_servers::shared_zookeeper;
use dlock_zookeeper::{ZooKeeperBackend, ZooKeeperConfig};

/// Clients are separate sessions on the shared server.
struct ZooKeeperTarget {
    url: &'static str,
}

impl ZooKeeperTarget {
    fn config(&self, lease: Duration) -> ZooKeeperConfig {
        ZooKeeperConfig::from_url(self.url)
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
}

/// A plain client of the server, for what tests do "from outside".
async fn zookeeper_admin(url: &str) -> dlock_zookeeper::zookeeper_client::Client {
    let hosts = url.trim_start_matches("zookeeper://");
    dlock_zookeeper::zookeeper_client::Client::connect(hosts)
        .await
        .expect("an admin session")
}

dlock_conformance::conformance_tests!(async {
    ZooKeeperTarget {
        url: &shared_zookeeper().url,
    }
});
