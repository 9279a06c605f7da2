//! The suite catches broken backends: each test here runs one suite test against the
//! in-memory backend with one deliberate flaw, declaring the in-memory backend's
//! capabilities, and checks that the suite test fails, for that flaw.
//!
//! `tests/memory.rs` shows the same tests pass on the unbroken backend, so a failure here is
//! the flaw's doing.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_conformance::{async_trait, suite, ConformanceTarget, RequestCounting};
use dlock_core::{
    AcquireRequest, Acquired, BackendLayer, Layered, Lease, ListPage, ListRequest, LockBackend,
    LockError, LockGuard, LockInfo, LockKey, LockMode, LockOptions, LockReport, Locker, LossReason,
    MemoryServer, Renewal, Result,
};
use tokio::sync::Notify;
use tokio::time::Instant;

#[test]
fn catches_valid_until_later_than_the_server() {
    assert_caught(
        Flaw::LateValidUntil,
        |t| {
            Box::pin(suite::p05_valid_until_is_no_later_than_the_servers_expiry(
                t,
            ))
        },
        "past the send time plus the lease",
    );
}

#[test]
fn catches_extend_that_keeps_the_old_deadline() {
    assert_caught(
        Flaw::ExtendKeepsOldDeadline,
        |t| Box::pin(suite::p05_extend_to_a_shorter_lease_moves_the_deadline(t)),
        "valid_until is still",
    );
}

#[test]
fn catches_one_loss_taking_every_lock_with_it() {
    assert_caught(
        Flaw::OneLossLosesAll,
        |t| Box::pin(suite::p05_losing_one_of_many_locks_signals_only_that_one(t)),
        "was lost with",
    );
}

#[test]
fn catches_crash_release_later_than_declared() {
    assert_caught(
        Flaw::LateCrashRelease,
        |t| Box::pin(suite::p03_crashed_holder_frees_the_lock_within_the_declared_bound(t)),
        "crash_release_bound",
    );
}

#[test]
fn catches_renewal_one_request_per_lock() {
    assert_caught(
        Flaw::RenewsOneByOne,
        |t| Box::pin(suite::p04_renewal_is_batched_per_client(t)),
        "does not batch",
    );
}

#[test]
fn catches_waiters_that_poll() {
    assert_caught(
        Flaw::PollingWaiters,
        |t| Box::pin(suite::p08_handover_takes_a_few_round_trips(t)),
        "not woken by the server",
    );
}

#[test]
fn catches_a_release_that_wakes_every_waiter() {
    assert_caught(
        Flaw::HerdWakeUp,
        |t| Box::pin(suite::p08_each_release_hands_over_to_one_waiter(t)),
        "wakes every waiter",
    );
}

#[test]
fn catches_try_acquire_that_waits() {
    assert_caught(
        Flaw::WaitingTry,
        |t| Box::pin(suite::p09_try_acquire_never_waits(t)),
        "waited for the holder",
    );
}

#[test]
fn catches_acquire_that_ignores_its_deadline() {
    assert_caught(
        Flaw::IgnoresDeadline,
        |t| Box::pin(suite::p09_backend_acquire_honours_its_deadline(t)),
        "did not return by its deadline",
    );
}

#[test]
fn catches_keys_that_differ_only_in_case() {
    assert_caught(
        Flaw::CaseInsensitiveKeys,
        |t| Box::pin(suite::p12_distinct_keys_never_collide(t)),
        "collided",
    );
}

#[test]
fn catches_prefix_and_key_running_together() {
    assert_caught(
        Flaw::PrefixRunsIntoKey,
        |t| Box::pin(suite::p12_prefix_and_key_never_run_together(t)),
        "collided",
    );
}

#[test]
fn catches_inspect_that_reports_every_lock_free() {
    assert_caught(
        Flaw::InspectSaysFree,
        |t| Box::pin(suite::p12_inspect_reports_what_the_server_holds(t)),
        "inspected as free",
    );
}

#[test]
fn catches_report_that_names_nobody() {
    assert_caught(
        Flaw::ReportNamesNobody,
        |t| Box::pin(suite::p13_report_names_the_holder(t)),
        "names another owner",
    );
}

#[test]
fn catches_list_that_ignores_its_limit() {
    assert_caught(
        Flaw::ListIgnoresLimit,
        |t| Box::pin(suite::p13_list_pages_through_held_locks(t)),
        "larger than its limit",
    );
}

#[test]
fn catches_ping_that_never_asks_the_server() {
    assert_caught(
        Flaw::PingWithoutServer,
        |t| Box::pin(suite::p12_ping_times_a_round_trip(t)),
        "never asked the server",
    );
}

#[test]
fn catches_acquire_cancelled_in_flight_leaving_an_orphan() {
    assert_caught(
        Flaw::CancelLeavesOrphan,
        |t| {
            Box::pin(suite::p07_acquire_cancelled_in_its_first_round_trips_leaves_nothing_behind(t))
        },
        "left something behind",
    );
}

#[test]
fn catches_a_semaphore_granting_one_permit_too_many() {
    assert_caught(
        Flaw::OverAdmits,
        |t| Box::pin(suite::p14_semaphore_admits_exactly_its_permits(t)),
        "granted a fourth",
    );
}

#[test]
fn catches_a_semaphore_ignoring_disagreeing_counts() {
    assert_caught(
        Flaw::PermitCountsIgnored,
        |t| Box::pin(suite::p14_semaphore_permit_counts_must_agree(t)),
        "disagreeing with a semaphore",
    );
}

#[test]
fn catches_readers_that_do_not_share() {
    assert_caught(
        Flaw::ReadersExclusive,
        |t| Box::pin(suite::p15_readers_share_and_writers_exclude(t)),
        "a second reader shares the lock",
    );
}

#[test]
fn catches_readers_overtaking_a_waiting_writer() {
    assert_caught(
        Flaw::WritersOutsideTheLine,
        |t| Box::pin(suite::p15_waiting_writer_is_not_starved_by_new_readers(t)),
        "overtook a waiting writer",
    );
}

#[test]
fn catches_proclaim_that_changes_nothing() {
    assert_caught(
        Flaw::ProclaimIgnored,
        |t| Box::pin(suite::p16_leader_and_its_value_are_visible(t)),
        "proclaim was not stored",
    );
}

#[test]
fn catches_observers_that_are_never_woken() {
    assert_caught(
        Flaw::ObserveNeverWakes,
        |t| Box::pin(suite::p16_observe_follows_leader_changes(t)),
        "to be observed",
    );
}

/// One deliberate flaw of a [`Broken`] backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Reports every deadline 5 s later than the server's.
    LateValidUntil,
    /// `extend` answers with the old deadline when it is later than the new one.
    ExtendKeepsOldDeadline,
    /// When one lease of a renewal is lost, reports all of them lost. (Its server forgets
    /// locks silently, as Redis does when a key is deleted: the holder learns at renewal.)
    OneLossLosesAll,
    /// The server keeps every lock 1 s past the lease it reports.
    LateCrashRelease,
    /// Renews lease by lease, one request each.
    RenewsOneByOne,
    /// Waiters retry every 250 ms instead of being woken.
    PollingWaiters,
    /// Every release wakes every waiter of the server, and each asks again.
    HerdWakeUp,
    /// `try_acquire` retries for up to 3 s before it gives up.
    WaitingTry,
    /// `acquire` waits on past its deadline.
    IgnoresDeadline,
    /// Keys are lower-cased on the way to the server.
    CaseInsensitiveKeys,
    /// The prefix and the key are joined with a bare `/` into one key.
    PrefixRunsIntoKey,
    /// `inspect` says every lock is free.
    InspectSaysFree,
    /// `ping` answers without asking the server.
    PingWithoutServer,
    /// `report` promises owners but names nobody.
    ReportNamesNobody,
    /// `list` ignores the page limit.
    ListIgnoresLimit,
    /// An acquire dropped before its first reply leaves a waiter behind on the server that
    /// takes the lock later and keeps it for a lease.
    CancelLeavesOrphan,
    /// A semaphore of N permits is asked for with N + 1.
    OverAdmits,
    /// Each permit count is a semaphore of its own, so disagreeing clients never meet.
    PermitCountsIgnored,
    /// Readers take the lock exclusively.
    ReadersExclusive,
    /// Writers wait by retrying outside the line, so readers arriving later overtake them.
    WritersOutsideTheLine,
    /// `update_owner` answers `Ok` and changes nothing.
    ProclaimIgnored,
    /// `wait_for_change` never resolves.
    ObserveNeverWakes,
}

/// Runs `test` against a target whose clients have `flaw`, and checks it fails with a
/// message containing `expected`.
fn assert_caught(
    flaw: Flaw,
    test: impl for<'t> FnOnce(&'t dyn ConformanceTarget) -> Pin<Box<dyn Future<Output = ()> + 't>>
        + Send
        + 'static,
    expected: &str,
) {
    // A thread of its own, so the suite test's panic is caught at the join, with its message.
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let target = BrokenTarget::new(flaw);
            tokio::time::timeout(Duration::from_secs(60), test(&target))
                .await
                .expect("the suite test hung on the broken backend");
        });
    })
    .join();
    let payload = match outcome {
        Ok(()) => panic!("the suite passed a backend with the flaw {flaw:?}"),
        Err(payload) => payload,
    };
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains(expected),
        "the suite failed on {flaw:?}, but not for the flaw: {message}"
    );
}

/// In-memory clients with one flaw, on one server, counting requests to it.
struct BrokenTarget {
    flaw: Flaw,
    server: Arc<MemoryServer>,
    requests: Arc<AtomicU64>,
    /// The herd: every release of any client wakes every waiter of every client.
    released: Arc<Notify>,
    /// Keys the server forgot without telling anyone ([`Flaw::OneLossLosesAll`]).
    forgotten: Arc<Mutex<HashSet<String>>>,
}

impl BrokenTarget {
    fn new(flaw: Flaw) -> Self {
        BrokenTarget {
            flaw,
            server: MemoryServer::new(),
            requests: Arc::default(),
            released: Arc::new(Notify::new()),
            forgotten: Arc::default(),
        }
    }
}

#[async_trait]
impl ConformanceTarget for BrokenTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(Layered::new(
            RequestCounting::wrap(Arc::new(self.server.client()), &self.requests),
            Broken {
                flaw: self.flaw,
                released: Arc::clone(&self.released),
                forgotten: Arc::clone(&self.forgotten),
            },
        )))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>> {
        let server = MemoryServer::new();
        server.set_reachable(false);
        Ok(Arc::new(Layered::new(
            Arc::new(server.client()),
            Broken {
                flaw: self.flaw,
                released: Arc::new(Notify::new()),
                forgotten: Arc::default(),
            },
        )))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<()> {
        if self.flaw == Flaw::OneLossLosesAll {
            self.forgotten
                .lock()
                .unwrap()
                .insert(guard.key().to_string());
            return Ok(());
        }
        self.server
            .forget(&guard.lease().options().prefix, guard.key());
        Ok(())
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.requests.load(Ordering::Relaxed))
    }
}

/// One flaw around a client of the in-memory server; every other call is forwarded.
#[derive(Debug)]
struct Broken {
    flaw: Flaw,
    released: Arc<Notify>,
    forgotten: Arc<Mutex<HashSet<String>>>,
}

const LATE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(250);

#[async_trait]
impl BackendLayer for Broken {
    async fn try_acquire(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Option<Acquired>> {
        match self.flaw {
            Flaw::LateValidUntil => Ok(inner.try_acquire(request).await?.map(late)),
            Flaw::WaitingTry => {
                let give_up = Instant::now() + Duration::from_secs(3);
                loop {
                    let again = AcquireRequest::new(
                        request.key,
                        request.options,
                        None,
                        request.loss.clone(),
                        None,
                    );
                    match inner.try_acquire(again).await? {
                        None if Instant::now() < give_up => tokio::time::sleep(POLL / 5).await,
                        outcome => return Ok(outcome),
                    }
                }
            }
            Flaw::CaseInsensitiveKeys
            | Flaw::PrefixRunsIntoKey
            | Flaw::LateCrashRelease
            | Flaw::OverAdmits
            | Flaw::PermitCountsIgnored
            | Flaw::ReadersExclusive => {
                let (key, options) = self.mangle(&request)?;
                let mangled = AcquireRequest::new(&key, &options, None, request.loss.clone(), None);
                Ok(inner.try_acquire(mangled).await?.map(|a| self.early(a)))
            }
            _ => inner.try_acquire(request).await,
        }
    }

    async fn acquire(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Acquired> {
        match self.flaw {
            Flaw::LateValidUntil => Ok(late(inner.acquire(request).await?)),
            Flaw::LateCrashRelease
            | Flaw::OverAdmits
            | Flaw::PermitCountsIgnored
            | Flaw::ReadersExclusive => {
                let (key, options) = self.mangle(&request)?;
                let mangled = AcquireRequest::new(
                    &key,
                    &options,
                    request.deadline,
                    request.loss.clone(),
                    None,
                );
                Ok(self.early(inner.acquire(mangled).await?))
            }
            Flaw::IgnoresDeadline => {
                let endless =
                    AcquireRequest::new(request.key, request.options, None, request.loss, None);
                inner.acquire(endless).await
            }
            Flaw::PollingWaiters | Flaw::HerdWakeUp => {
                self.acquire_by_retrying(inner, request).await
            }
            Flaw::WritersOutsideTheLine if request.mode() == LockMode::Exclusive => {
                self.acquire_by_retrying(inner, request).await
            }
            Flaw::CancelLeavesOrphan => {
                let orphan = Orphan {
                    inner: Some(Arc::clone(inner)),
                    key: request.key.clone(),
                    options: request.options.clone(),
                };
                // The request to join the line is on its way: a drop now leaves it behind.
                tokio::task::yield_now().await;
                orphan.disarm();
                inner.acquire(request).await
            }
            _ => inner.acquire(request).await,
        }
    }

    async fn extend(
        &self,
        inner: &Arc<dyn LockBackend>,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Instant> {
        let extended = inner.extend(lease, ttl).await?;
        Ok(match self.flaw {
            Flaw::LateValidUntil => extended + LATE,
            Flaw::ExtendKeepsOldDeadline => extended.max(lease.valid_until()),
            _ => extended,
        })
    }

    async fn release(&self, inner: &Arc<dyn LockBackend>, lease: &Lease) -> Result<()> {
        let released = inner.release(lease).await;
        self.released.notify_waiters();
        released
    }

    async fn renew(&self, inner: &Arc<dyn LockBackend>, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        match self.flaw {
            Flaw::RenewsOneByOne => {
                let mut renewals = Vec::new();
                for lease in leases {
                    renewals.push(match inner.extend(lease, lease.ttl()).await {
                        Ok(valid_until) => Renewal::Renewed { valid_until },
                        Err(LockError::NotHeld { .. }) => Renewal::Lost(LossReason::NotOwner),
                        Err(other) => return Err(other),
                    });
                }
                Ok(renewals)
            }
            Flaw::OneLossLosesAll => {
                let mut renewals = inner.renew(leases).await?;
                let forgotten = self.forgotten.lock().unwrap().clone();
                for (renewal, lease) in renewals.iter_mut().zip(leases) {
                    if forgotten.contains(lease.key().as_str()) {
                        *renewal = Renewal::Lost(LossReason::NotOwner);
                    }
                }
                if renewals.iter().any(|r| matches!(r, Renewal::Lost(_))) {
                    return Ok(vec![Renewal::Lost(LossReason::NotOwner); renewals.len()]);
                }
                Ok(renewals)
            }
            Flaw::LateValidUntil => Ok(inner
                .renew(leases)
                .await?
                .into_iter()
                .map(|renewal| match renewal {
                    Renewal::Renewed { valid_until } => Renewal::Renewed {
                        valid_until: valid_until + LATE,
                    },
                    lost => lost,
                })
                .collect()),
            _ => inner.renew(leases).await,
        }
    }

    async fn inspect(
        &self,
        inner: &Arc<dyn LockBackend>,
        key: &LockKey,
        options: &LockOptions,
    ) -> Result<LockInfo> {
        match self.flaw {
            Flaw::InspectSaysFree => Ok(LockInfo::default()),
            _ => inner.inspect(key, options).await,
        }
    }

    async fn ping(&self, inner: &Arc<dyn LockBackend>) -> Result<Duration> {
        match self.flaw {
            Flaw::PingWithoutServer => Ok(Duration::from_micros(1)),
            _ => inner.ping().await,
        }
    }

    async fn update_owner(
        &self,
        inner: &Arc<dyn LockBackend>,
        lease: &Lease,
        owner: &str,
    ) -> Result<()> {
        match self.flaw {
            Flaw::ProclaimIgnored => Ok(()),
            _ => inner.update_owner(lease, owner).await,
        }
    }

    async fn wait_for_change(
        &self,
        inner: &Arc<dyn LockBackend>,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        match self.flaw {
            Flaw::ObserveNeverWakes => std::future::pending().await,
            _ => inner.wait_for_change(key, options, seen).await,
        }
    }

    async fn report(
        &self,
        inner: &Arc<dyn LockBackend>,
        key: &LockKey,
        options: &LockOptions,
    ) -> Result<LockReport> {
        let report = inner.report(key, options).await?;
        match self.flaw {
            Flaw::ReportNamesNobody => Ok(LockReport::from(report.info)),
            _ => Ok(report),
        }
    }

    async fn list(
        &self,
        inner: &Arc<dyn LockBackend>,
        options: &LockOptions,
        request: &ListRequest,
    ) -> Result<ListPage> {
        match self.flaw {
            Flaw::ListIgnoresLimit => {
                let everything = request.clone().limit(dlock_core::MAX_LIST_LIMIT);
                let page = inner.list(options, &everything).await?;
                Ok(ListPage::new(page.locks, None))
            }
            _ => inner.list(options, request).await,
        }
    }
}

impl Broken {
    /// The key and options the flawed mapping sends to the server.
    fn mangle(&self, request: &AcquireRequest<'_>) -> Result<(LockKey, LockOptions)> {
        let options = request.options.clone();
        Ok(match self.flaw {
            Flaw::CaseInsensitiveKeys => {
                (LockKey::new(request.key.as_str().to_lowercase())?, options)
            }
            Flaw::PrefixRunsIntoKey => (
                LockKey::new(format!("{}/{}", options.prefix, request.key.as_str()))?,
                options.prefix(""),
            ),
            Flaw::LateCrashRelease => {
                let lease = options.lease + LATE / 5;
                (request.key.clone(), options.lease(lease))
            }
            Flaw::OverAdmits => match options.mode {
                LockMode::Permit(n) => (request.key.clone(), options.mode(LockMode::Permit(n + 1))),
                _ => (request.key.clone(), options),
            },
            Flaw::PermitCountsIgnored => match options.mode {
                LockMode::Permit(n) => (LockKey::new(format!("{}#{n}", request.key))?, options),
                _ => (request.key.clone(), options),
            },
            Flaw::ReadersExclusive => (request.key.clone(), options.mode(LockMode::Exclusive)),
            _ => (request.key.clone(), options),
        })
    }

    /// For [`Flaw::LateCrashRelease`]: reports the lease asked for, not the longer one the
    /// server was given.
    fn early(&self, mut acquired: Acquired) -> Acquired {
        if self.flaw == Flaw::LateCrashRelease {
            acquired.valid_until -= LATE / 5;
        }
        acquired
    }

    /// A waiter that asks again on every wake-up: by timer ([`Flaw::PollingWaiters`]) or on
    /// every release anywhere ([`Flaw::HerdWakeUp`]).
    async fn acquire_by_retrying(
        &self,
        inner: &Arc<dyn LockBackend>,
        request: AcquireRequest<'_>,
    ) -> Result<Acquired> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let again = AcquireRequest::new(
                request.key,
                request.options,
                None,
                request.loss.clone(),
                None,
            );
            if let Some(acquired) = inner.try_acquire(again).await? {
                return Ok(acquired);
            }
            request.queued();
            if request.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LockError::Timeout {
                    key: request.key.to_string(),
                    waited: request.options.wait.unwrap_or_default(),
                });
            }
            let deadline = request
                .deadline
                .unwrap_or_else(|| Instant::now() + LATE * 10);
            match self.flaw {
                Flaw::PollingWaiters => {
                    tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await
                }
                _ => {
                    tokio::select! {
                        _ = released => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        }
    }
}

fn late(mut acquired: Acquired) -> Acquired {
    acquired.valid_until += LATE;
    acquired
}

/// For [`Flaw::CancelLeavesOrphan`]: the server-side waiter a dropped acquire leaves behind.
struct Orphan {
    inner: Option<Arc<dyn LockBackend>>,
    key: LockKey,
    options: LockOptions,
}

impl Orphan {
    fn disarm(mut self) {
        self.inner = None;
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (key, options) = (self.key.clone(), self.options.clone());
        tokio::spawn(async move {
            let orphan = Locker::from_backend(inner);
            if let Ok(guard) = orphan.acquire_with(key, &options).await {
                // Nobody is left to release it: it lives until its lease would end.
                tokio::time::sleep(options.lease).await;
                guard.abandon();
            }
        });
    }
}
