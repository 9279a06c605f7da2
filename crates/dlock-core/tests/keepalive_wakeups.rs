//! The keepalive task is woken only when a new lease needs it sooner than it would look anyway
//! (issue 14: waking it on every acquisition cost a task switch per uncontended acquire), and
//! a task that ended while a renewal was under way is started again by the next lock.
//!
//! Time is paused (tokio's test clock), so leases run out exactly when the tests say.

use std::sync::Arc;
use std::time::Duration;

use dlock_core::{
    async_trait, BackendLayer, Layered, Lease, LockBackend, LockError, LockOptions, Locker,
    MemoryServer, Renewal,
};
use tokio::sync::Notify;

fn kept(lease_ms: u64) -> LockOptions {
    LockOptions::default().lease(Duration::from_millis(lease_ms))
}

/// A lease far shorter than those already held must still be renewed in time: the task,
/// asleep until the long lease's renewal, is woken for it.
#[tokio::test(start_paused = true)]
async fn a_shorter_lease_taken_later_is_renewed_in_time() {
    let server = MemoryServer::new();
    let alice = Locker::new(server.client());
    let bob = Locker::new(server.client());
    let long = alice.acquire_with("long", &kept(30_000)).await.unwrap();
    // Let the task settle into its sleep until the long lease's renewal.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let short = alice.acquire_with("short", &kept(600)).await.unwrap();

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(short.is_held(), "renewed every 200 ms");
    assert!(bob.try_acquire("short").await.unwrap().is_none());
    short.release().await.unwrap();
    long.release().await.unwrap();
}

/// Renewals that take a while to be answered, and tell when one is under way.
#[derive(Debug, Default)]
struct SlowRenewals {
    under_way: Notify,
}

#[async_trait]
impl BackendLayer for SlowRenewals {
    async fn renew(
        &self,
        inner: &Arc<dyn LockBackend>,
        leases: &[&Lease],
    ) -> Result<Vec<Renewal>, LockError> {
        self.under_way.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        inner.renew(leases).await
    }
}

/// Every lock released while a renewal was under way: the task ends after it, and the next
/// lock must start a new one (it used to find the task marked running, and was never renewed).
#[tokio::test(start_paused = true)]
async fn the_keepalive_starts_again_after_a_renewal_outlived_every_lock() {
    let server = MemoryServer::new();
    let backend = Arc::new(Layered::new(
        Arc::new(server.client()),
        SlowRenewals::default(),
    ));
    let alice = Locker::from_backend(backend.clone());
    let bob = Locker::new(server.client());
    let first = alice.acquire_with("first", &kept(600)).await.unwrap();
    backend.layer().under_way.notified().await;
    first.release().await.unwrap();
    // The renewal is answered, and the task finds nothing held.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(alice.held_count(), 0);

    let second = alice.acquire_with("second", &kept(600)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(second.is_held(), "renewed by a new keepalive task");
    assert!(bob.try_acquire("second").await.unwrap().is_none());
    second.release().await.unwrap();
}
