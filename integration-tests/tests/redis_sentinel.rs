//! Redis behind Sentinel (issue 12): the conformance suite on a primary + replica + three
//! sentinels (`redis+sentinel://s1,s2,s3/dlock-primary`), started once for this binary, and a
//! failover (`SENTINEL FAILOVER`) while a lock is held and a waiter waits, on a deployment of
//! its own.
//!
//! What a failover promises (replication is asynchronous, so a lock granted just before it may
//! be lost and granted again: exclusion is not promised across a failover): the client follows
//! the new primary, fencing tokens keep growing (so fenced writes stay safe), and the waiter
//! gets the lock.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard, LockKey, LockOptions};
use dlock_test_servers::{free_port, SentinelDeployment, SENTINEL_MASTER};

#[macro_use]
mod redis_support;

/// How long the sentinels wait before they call an unreachable primary down.
const DOWN_AFTER: Duration = Duration::from_secs(1);

fn shared_deployment() -> &'static SentinelDeployment {
    static SHARED: OnceLock<SentinelDeployment> = OnceLock::new();
    SHARED.get_or_init(|| SentinelDeployment::start(DOWN_AFTER))
}

struct SentinelTarget {
    deployment: &'static SentinelDeployment,
    /// The clients' URL query (`?layout=redis-standard`, or none).
    query: &'static str,
}

impl SentinelTarget {
    fn url(&self) -> String {
        format!("{}{}", self.deployment.url(), self.query)
    }
}

#[async_trait]
impl ConformanceTarget for SentinelTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(600)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(Arc::new(dlock_redis::connect(&self.url()).await?))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let port = free_port();
        let url = format!(
            "redis+sentinel://127.0.0.1:{port}/{SENTINEL_MASTER}{}",
            self.query
        );
        Ok(Arc::new(dlock_redis::connect(&url).await?))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        let backend = dlock_redis::connect(&self.url()).await?;
        let name = backend.lock_key_name(&guard.lease().options().prefix, guard.key());
        let primary = self.deployment.current_primary().expect("a primary");
        redis_support::command(&primary, &["DEL", &name])
            .await
            .expect("DEL the lock's key");
        Ok(())
    }
}

mod conformance {
    use super::*;

    dlock_conformance::conformance_tests!(async {
        SentinelTarget {
            deployment: shared_deployment(),
            query: "",
        }
    });
}

/// The suite in the standard layout of redsync and redis-py (issue 16) behind Sentinel,
/// minus what that layout gives up (see `standard_layout_suite!`). The deployment's servers
/// publish no keyspace events: waiters poll.
mod standard_layout {
    use super::*;

    standard_layout_suite!(async {
        SentinelTarget {
            deployment: shared_deployment(),
            query: "?layout=redis-standard",
        }
    });
}

/// A lock held and waited for across `SENTINEL FAILOVER`: the client follows the new primary
/// (new locks land there), the waiter gets the lock once the holder releases it, and its
/// token is above the holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_while_held_and_waited_for() {
    held_and_waited_for_across(|deployment| deployment.failover()).await;
}

/// The same when the primary is killed (SIGKILL): the sentinels see it down after
/// `DOWN_AFTER` and promote the replica; whatever the replica had not received is lost, and
/// tokens still grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_while_held_and_waited_for() {
    held_and_waited_for_across(|deployment| deployment.primary.process().kill()).await;
}

async fn held_and_waited_for_across(fail: impl FnOnce(&mut SentinelDeployment)) {
    let started = std::time::Instant::now();
    let mut deployment = SentinelDeployment::start(DOWN_AFTER);
    eprintln!("deployment ready after {:?}", started.elapsed());
    let url = deployment.url();
    let old_primary = deployment.current_primary().expect("a primary");
    let scene = redis_support::Scene::new(
        &url,
        "redis-sentinel-failover",
        LockOptions::default().lease(Duration::from_secs(3)),
    )
    .await;
    fail(&mut deployment);
    let failover = std::time::Instant::now();
    let new_primary = redis_support::eventually(
        Duration::from_secs(30),
        "the sentinels promote",
        async || {
            deployment
                .current_primary()
                .filter(|primary| *primary != old_primary)
        },
    )
    .await;

    // The holder's client follows: new locks land on the new primary. Until the old primary
    // is demoted it still takes writes (which its demotion then discards), so poll.
    let mut attempt = 0;
    redis_support::eventually(
        Duration::from_secs(30),
        "a lock on the new primary",
        async || {
            attempt += 1;
            let key = format!("other-{attempt}");
            let other = scene
                .holder
                .try_acquire(key.as_str())
                .await
                .ok()
                .flatten()?;
            let name = scene.backend.lock_key_name(
                &other.lease().options().prefix,
                &LockKey::new(key.as_str()).unwrap(),
            );
            let there = redis_support::command(&new_primary, &["EXISTS", &name]).await;
            let _ = other.release().await;
            (there.as_deref() == Ok("1")).then_some(())
        },
    )
    .await;

    // The lock itself may have survived (replicated before the failover) or not: either way
    // the release leaves it free for the waiter.
    eprintln!("client follows {:?} after the failover", failover.elapsed());
    scene.release_and_hand_over(Duration::from_secs(60)).await;
}
