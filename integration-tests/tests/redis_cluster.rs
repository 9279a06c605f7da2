//! Redis Cluster (issue 12): the conformance suite on three primaries with a replica each
//! (`redis+cluster://seed1,seed2,…`), started once for this binary, and the faults a cluster
//! adds: the primary that owns a held lock's slot killed (its replica promoted), and the
//! lock's slot moved to another primary while it is held and waited for.
//!
//! What is promised across a failover (replication is asynchronous, so a lock granted just
//! before it may be lost and granted again: exclusion is not promised across a failover):
//! the client follows the promoted replica, fencing tokens keep growing (so fenced writes
//! stay safe), and a waiter gets the lock. Across a slot move nothing is lost: the keys move
//! with the slot, and the waiters follow it.

use std::sync::Arc;
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, LockOptions};
use dlock_test_servers::{free_port, RedisCluster};

#[macro_use]
mod redis_support;

struct ClusterTarget {
    url: String,
    /// The clients' URL query (`?layout=redis-standard`, or none).
    query: &'static str,
}

impl ClusterTarget {
    fn shared(query: &'static str) -> ClusterTarget {
        ClusterTarget {
            url: shared_cluster_url(),
            query,
        }
    }

    fn url(&self) -> String {
        format!("{}{}", self.url, self.query)
    }
}

fn shared_cluster_url() -> String {
    dlock_test_servers::shared_redis_cluster().url()
}

#[async_trait]
impl ConformanceTarget for ClusterTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(600)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(Arc::new(dlock_redis::connect(&self.url()).await?))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let url = format!("redis+cluster://127.0.0.1:{}{}", free_port(), self.query);
        Ok(Arc::new(dlock_redis::connect(&url).await?))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        let backend = dlock_redis::connect(&self.url()).await?;
        let name = backend.lock_key_name(&guard.lease().options().prefix, guard.key());
        let seed = backend.config().endpoints[0].to_string();
        cluster_command(&seed, &["DEL", &name])
            .await
            .expect("DEL the lock's key");
        Ok(())
    }
}

/// One command on the node that owns its key: sent to `seed`, and again where a `MOVED`
/// answer points.
async fn cluster_command(seed: &str, args: &[&str]) -> Result<String, String> {
    match redis_support::command(seed, args).await {
        Err(moved) if moved.starts_with("MOVED ") => {
            let owner = moved.split(' ').nth(2).unwrap_or_default().to_owned();
            redis_support::command(&owner, args).await
        }
        other => other,
    }
}

mod conformance {
    use super::*;

    dlock_conformance::conformance_tests!(async { ClusterTarget::shared("") });
}

/// The suite in the standard layout of redsync and redis-py on the cluster, minus what that
/// layout gives up (see `standard_layout_suite!`). Waiters poll: a cluster's keyspace events
/// are each node's own.
mod standard_layout {
    use super::*;

    standard_layout_suite!(async { ClusterTarget::shared("?layout=redis-standard") });
}

/// The primary that owns a held and waited-for lock's slot is killed (SIGKILL): after
/// `cluster-node-timeout` its replica is promoted. The client follows, the holder either
/// still holds the lock (its keys had reached the replica) or is told it lost it, the waiter
/// gets the lock, and its token is above the holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_owning_the_slot_killed_while_held_and_waited_for() {
    let cluster = RedisCluster::start();
    let scene = redis_support::Scene::new(
        &cluster.url(),
        "redis-cluster-killed",
        LockOptions::default().lease(Duration::from_secs(3)),
    )
    .await;
    let killed = cluster.kill_primary_of(RedisCluster::slot_of(&scene.lock_key));
    eprintln!("killed {killed}, replica promoted");
    // The cluster client finds the promoted replica: the lock's slot answers again.
    redis_support::eventually(
        Duration::from_secs(30),
        "the lock's slot answers after the failover",
        async || scene.holder.inspect("k").await.ok(),
    )
    .await;
    scene.release_and_hand_over(Duration::from_secs(60)).await;
}

/// The lock's slot is moved to another primary (as `redis-cli --cluster reshard` moves it)
/// while the lock is held and waited for: nothing is lost, since its keys and line move
/// with the slot. The holder still holds it afterwards (its keepalive renews it there), its
/// release hands the lock to the waiter at once (the server dropped the waiter's sharded
/// subscription when the slot left, and the waiter listens again where the slot is now:
/// it is not left to find the lock free when the holder's lease, as it saw it, would have
/// run out: 20 s, less the second or so this test takes),
/// and tokens keep growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_moved_while_held_and_waited_for() {
    let cluster = RedisCluster::start();
    let scene = redis_support::Scene::new(
        &cluster.url(),
        "redis-cluster-moved",
        // Renewed every second, so that the renewal on the new primary is seen soon.
        LockOptions::default()
            .lease(LONG_LEASE)
            .keepalive_interval(Duration::from_secs(1)),
    )
    .await;
    let slot = RedisCluster::slot_of(&scene.lock_key);
    let to = cluster.another_primary(slot);
    cluster.migrate_slot(slot, &to);
    assert_eq!(cluster.primary_of(slot), to);
    let report = scene
        .holder
        .inspect("k")
        .await
        .expect("inspect after the move");
    assert!(report.info.held, "the lock moved with its slot: {report:?}");
    assert_eq!(report.info.waiters, Some(1), "and so did its line");
    // The keepalive renews it there: its remaining lease goes up between two looks.
    let mut last = None;
    redis_support::eventually(
        Duration::from_secs(10),
        "the keepalive renews the lock on its new primary",
        async || {
            let left = scene.holder.inspect("k").await.ok()?.info.remaining_lease?;
            let renewed = last.is_some_and(|before| left > before);
            last = Some(left);
            renewed.then_some(())
        },
    )
    .await;
    assert!(
        scene.guard.is_held(),
        "the holder was told it lost the lock"
    );
    scene.release_and_hand_over(PROMPTLY).await;
}

/// A lease long enough that a waiter finding the lock free at its end is told apart from
/// one woken by the release ...
const LONG_LEASE: Duration = Duration::from_secs(20);
/// ... which takes at most this long, far above a healthy hand-over (milliseconds).
const PROMPTLY: Duration = Duration::from_secs(5);

/// `rediss+cluster://` (TLS to every node, the nodes' own traffic over TLS too): a lock is
/// taken, waited for and handed over; plain text to the TLS ports, or TLS without trusting
/// the CA, is a `Connection` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster() {
    let certificates = tempfile::tempdir().expect("a temporary directory");
    dlock_test_servers::make_test_certificates(certificates.path());
    let cluster = RedisCluster::start_tls(certificates.path());
    let url = cluster.tls_url(certificates.path());
    let scene = redis_support::Scene::new(
        &url,
        "redis-cluster-tls",
        LockOptions::default().lease(LONG_LEASE),
    )
    .await;
    scene.release_and_hand_over(PROMPTLY).await;
    let (tls_hosts, _) = url
        .trim_start_matches("rediss+cluster://")
        .split_once('?')
        .expect("a query");
    for wrong in [
        format!("redis+cluster://{tls_hosts}"),
        format!("rediss+cluster://{tls_hosts}"),
    ] {
        let refused = dlock_redis::connect(&wrong).await;
        assert!(
            matches!(refused, Err(LockError::Connection { .. })),
            "{wrong}: {refused:?}"
        );
    }
}
