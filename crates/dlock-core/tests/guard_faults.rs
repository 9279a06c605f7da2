//! Regression tests for the guard's view of validity under faults (issue 9, items 2, 5 and 6):
//! it must follow the server's both ways, a lock lost on the holder's clock is cleaned up on
//! the server, and a grant that is already stale is never handed out.
//!
//! Time is paused (tokio's test clock), so leases run out exactly when the tests say.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock_core::{
    async_trait, AcquireRequest, Acquired, BackendLayer, Layered, Lease, LockBackend, LockError,
    LockOptions, Locker, LossReason, MemoryBackend, MemoryServer, Renewal,
};
use tokio::time::Instant;

fn options(lease_ms: u64, keepalive: bool) -> LockOptions {
    let mut options = LockOptions::default().lease(Duration::from_millis(lease_ms));
    options.keepalive = keepalive;
    options
}

/// Issue 9 item 2, without keepalive: shortening a lease must move the guard's deadline, so
/// that the guard never says "held" while the server already lets another client in.
#[tokio::test(start_paused = true)]
async fn shortened_lease_moves_the_guards_deadline() {
    let server = MemoryServer::new();
    let alice = Locker::new(server.client());
    let bob = Locker::new(server.client());
    let guard = alice
        .acquire_with("short", &options(30_000, false))
        .await
        .unwrap();
    let lost = guard.lost();

    guard.extend(Duration::from_millis(200)).await.unwrap();
    assert!(guard.lease().valid_until() <= Instant::now() + Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(!guard.is_held(), "the server's lease ran out 300 ms ago");
    assert_eq!(
        tokio::time::timeout(Duration::ZERO, lost).await,
        Ok(LossReason::LeaseExpired),
        "the loss must be signalled by the time the server lets others in"
    );
    assert!(bob.try_acquire("short").await.unwrap().is_some());
}

/// Issue 9 item 2, with keepalive: after shortening, the keepalive must renew before the new,
/// shorter deadline, so the lock is neither lost nor held by two.
#[tokio::test(start_paused = true)]
async fn shortened_lease_rearms_the_keepalive() {
    let server = MemoryServer::new();
    let alice = Locker::new(server.client());
    let bob = Locker::new(server.client());
    let guard = alice
        .acquire_with("short-kept", &options(30_000, true))
        .await
        .unwrap();

    guard.extend(Duration::from_millis(200)).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other = bob.try_acquire("short-kept").await.unwrap();
        assert!(
            other.is_none() && guard.is_held(),
            "after shortening, the keepalive must keep the lock (other holder: {}, held: {})",
            other.is_some(),
            guard.is_held()
        );
    }
}

/// A renewal sent before a shortening `extend` and answered after it must not move the guard's
/// deadline past the shortened one: the server may have applied them in either order.
#[tokio::test(start_paused = true)]
async fn renewal_in_flight_does_not_undo_a_shortening() {
    let backend = Faulty::new(
        MemoryBackend::new(),
        Fault::SlowRenewAnswer(Duration::from_millis(300)),
    );
    let locker = Locker::from_backend(backend.clone());
    let mut opts = options(900, true);
    opts.keepalive_interval = Some(Duration::from_millis(100));
    let guard = locker.acquire_with("race", &opts).await.unwrap();

    backend.layer().wait_for_renewal_in_flight().await;
    guard.extend(Duration::from_millis(150)).await.unwrap();
    let shortened = guard.lease().valid_until();
    // The slow renewal answers now, with a deadline from its own (earlier) send time.
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert!(
        backend.layer().extend_crossed_a_renewal(),
        "the test's premise"
    );
    assert!(
        guard.lease().valid_until() <= shortened,
        "a renewal answered after a shortening moved the deadline forward"
    );
}

/// Issue 9 item 5: once the core declares a lock lost on its own clock, what the server still
/// holds for it is removed, so nobody waits on a lock that no one holds.
#[tokio::test(start_paused = true)]
async fn lock_expired_on_the_holders_clock_is_released_on_the_server() {
    let server = MemoryServer::new();
    let backend = Faulty::new(server.client(), Fault::RenewCutOff);
    let alice = Locker::from_backend(backend.clone());
    let guard = alice
        .acquire_with("stuck", &options(300, true))
        .await
        .unwrap();

    assert_eq!(guard.lost().await, LossReason::LeaseExpired);
    // The memory server keeps the lock alive through `extend`s the renew decorator never
    // sends, so only a release can free it; give the background release a moment to run.
    tokio::time::timeout(Duration::from_millis(50), backend.layer().released())
        .await
        .expect("the lost lease was not released on the server");
}

/// Issue 9 item 6: a grant whose deadline has already passed on this process's clock (it
/// arrived while the process was stopped) is never returned; the locker gives it back and
/// waits again.
#[tokio::test(start_paused = true)]
async fn stale_grant_is_never_handed_out() {
    let server = MemoryServer::new();
    let backend = Faulty::new(server.client(), Fault::StaleFirstGrant);
    let locker = Locker::from_backend(backend.clone());
    let guard = locker
        .acquire_with("stale", &options(1_000, true).wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(guard.is_held());
    assert!(guard.lease().valid_until() > Instant::now());
    assert_eq!(
        backend.layer().acquires.load(Ordering::SeqCst),
        2,
        "one stale, one good"
    );
    assert_eq!(
        backend.layer().releases.load(Ordering::SeqCst),
        1,
        "the stale grant was given back"
    );
}

/// The same for `try_acquire`: a stale grant is given back and reported as not acquired.
#[tokio::test(start_paused = true)]
async fn stale_grant_is_not_returned_by_try_acquire() {
    let server = MemoryServer::new();
    let backend = Faulty::new(server.client(), Fault::StaleFirstGrant);
    let locker = Locker::from_backend(backend.clone());
    let first = locker
        .try_acquire_with("stale-try", &options(1_000, true))
        .await
        .unwrap();
    assert!(first.is_none());
    assert_eq!(backend.layer().releases.load(Ordering::SeqCst), 1);
    assert!(locker.try_acquire("stale-try").await.unwrap().is_some());
}

/// One fault switched on around a memory client, counting what it is asked.
#[derive(Debug, Default)]
struct Faulty {
    fault: Fault,
    acquires: AtomicUsize,
    releases: AtomicUsize,
    released: tokio::sync::Notify,
    renewal_in_flight: tokio::sync::Notify,
    renewing: AtomicBool,
    crossed: AtomicBool,
}

#[derive(Debug, Clone, Copy, Default)]
enum Fault {
    #[default]
    None,
    /// `renew` is applied at once, but its answer comes this much later.
    SlowRenewAnswer(Duration),
    /// `renew` never reaches the server, which keeps the lock.
    RenewCutOff,
    /// The first grant arrives already stale (valid until a moment in the past).
    StaleFirstGrant,
}

impl Faulty {
    fn new(inner: MemoryBackend, fault: Fault) -> Arc<Layered<Faulty>> {
        Arc::new(Layered::new(
            Arc::new(inner),
            Faulty {
                fault,
                ..Faulty::default()
            },
        ))
    }

    async fn wait_for_renewal_in_flight(&self) {
        self.renewal_in_flight.notified().await;
    }

    /// Whether an `extend` was answered while a renewal was in flight.
    fn extend_crossed_a_renewal(&self) -> bool {
        self.crossed.load(Ordering::SeqCst)
    }

    async fn released(&self) {
        self.released.notified().await;
    }

    fn granted(&self, mut acquired: Acquired) -> Acquired {
        let first = self.acquires.fetch_add(1, Ordering::SeqCst) == 0;
        if first && matches!(self.fault, Fault::StaleFirstGrant) {
            acquired.valid_until = Instant::now() - Duration::from_millis(1);
        }
        acquired
    }
}

#[async_trait]
impl BackendLayer for Faulty {
    async fn try_acquire(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Option<Acquired>, LockError> {
        Ok(inner.try_acquire(request).await?.map(|a| self.granted(a)))
    }
    async fn acquire(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Acquired, LockError> {
        let acquired = inner.acquire(request).await?;
        Ok(self.granted(acquired))
    }
    async fn extend(
        &self,
        inner: &Arc<dyn LockBackend>,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Instant, LockError> {
        let at = inner.extend(lease, ttl).await?;
        if self.renewing.load(Ordering::SeqCst) {
            self.crossed.store(true, Ordering::SeqCst);
        }
        Ok(at)
    }
    async fn release(&self, inner: &Arc<dyn LockBackend>, lease: &Lease) -> Result<(), LockError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.released.notify_one();
        inner.release(lease).await
    }
    async fn renew(
        &self,
        inner: &Arc<dyn LockBackend>,
        leases: &[&Lease],
    ) -> Result<Vec<Renewal>, LockError> {
        match self.fault {
            Fault::RenewCutOff => Err(LockError::protocol("test", "renewals are cut off")),
            Fault::SlowRenewAnswer(delay) => {
                let renewals = inner.renew(leases).await;
                self.renewing.store(true, Ordering::SeqCst);
                self.renewal_in_flight.notify_one();
                tokio::time::sleep(delay).await;
                self.renewing.store(false, Ordering::SeqCst);
                renewals
            }
            _ => inner.renew(leases).await,
        }
    }
}
