//! The etcd lock backend: sessions per lease length, acquisition by create-revision order,
//! release, renewal.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{
    support, AcquireRequest, Acquired, Backoff, Capabilities, FencingToken, Introspection, Lease,
    ListPage, ListRequest, ListedLock, LockBackend, LockError, LockInfo, LockKey, LockMode,
    LockOptions, LockReport, LossReason, Renewal, Result,
};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};
use tokio::time::Instant;

use crate::config::{EtcdConfig, Layout};
use crate::error::{is_lease_gone, request, BACKEND};
use crate::layout::{self, Found, Stamp};
use crate::line;
use crate::pending::PendingKey;
use crate::report;
use crate::session::{revision_of, Name, Session, Shared};
use crate::waiter::{Contender, Line};

/// A client of an etcd cluster that takes dlock locks.
///
/// Every lock and every waiting request of one client is attached to one etcd lease per
/// lease length (in practice: one), kept alive by one keepalive stream, so renewal costs
/// O(1) round trips however many locks are held (P4). A lock is a queue of keys, one per
/// contender; the oldest key (lowest create revision) holds the lock, and each waiter
/// watches only the key just ahead of it (P8, P10). The fencing token is the create
/// revision of the holder's key, which etcd itself can check: see
/// [`fence`](crate::fence). Every [`LockMode`] is supported: readers and semaphore permits
/// queue in the same line, tagged with their mode.
///
/// With [`Layout::EtcdConcurrency`] (URL `layout=etcd-concurrency`) the keys are those of
/// etcd's `concurrency.Mutex` instead (`NAME/{lease id hex}`, see [`Layout`]), exclusive
/// locks and elections only, one lease per concurrent contender of one name.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::Locker;
///
/// let locker = Locker::new(dlock_etcd::connect("etcd://127.0.0.1:2379?prefix=myapp").await?);
/// let guard = locker.acquire("reports/daily").await?;
/// println!("token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Shared>,
}

/// The backend's record of one acquisition, kept in the [`Lease`].
pub(crate) struct EtcdRecord {
    /// The holder's key in the lock's queue.
    pub(crate) key: String,
    /// The session (etcd lease) the key is attached to.
    pub(crate) session: Arc<Session>,
    /// The key's name, given back to the session once the release has removed the key.
    name: std::sync::Mutex<Option<Name>>,
    /// The key's value as put (times of queueing and grant), which a new owner
    /// description keeps.
    stamp: Stamp,
    /// Set when the release starts: a grant time not written yet is not needed any more.
    released: Arc<AtomicBool>,
}

impl EtcdBackend {
    /// Connects to the cluster `config` describes, authenticating if it carries credentials,
    /// and checks that a member answers.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        Ok(EtcdBackend {
            inner: Arc::new(Shared::connect(config).await?),
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// The underlying `etcd-client` client, for your own requests (see [`fence`](crate::fence)).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// How many watch events this client's waiters have received: one per handoff when
    /// only the next waiter is woken.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn watch_events_received(&self) -> u64 {
        self.inner
            .watch_events
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The etcd lease ids of this client's live sessions.
    pub async fn session_lease_ids(&self) -> Vec<i64> {
        let sessions = self.inner.sessions.lock().await;
        sessions
            .values()
            .flatten()
            .filter(|s| s.ended().is_none())
            .map(|s| s.id())
            .collect()
    }

    /// Stops keeping this client's leases alive without revoking them, as a crashed process
    /// would: etcd frees its locks when the leases run out. Locks taken later use a new
    /// lease. Meant for tests.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn abandon_sessions(&self) {
        let mut sessions = self.inner.sessions.lock().await;
        for session in sessions.drain().flat_map(|(_, pool)| pool) {
            session.abandon();
        }
    }

    /// The queue directory of the request's lock, or `Unsupported` for a mode the layout
    /// does not take.
    fn queue_dir(&self, request: &AcquireRequest<'_>) -> Result<String> {
        if !self.supports(request.mode()) {
            return Err(LockError::Unsupported {
                backend: BACKEND,
                operation: "shared and permit modes in the etcd-concurrency layout",
            });
        }
        Ok(self.dir_of(request.key, request.options))
    }

    /// The layout of this client's keys.
    fn layout(&self) -> Layout {
        self.inner.config.layout
    }

    /// What the backend hands the core for a key it now holds; `released` is set when its
    /// release starts.
    fn acquired(
        &self,
        request: &AcquireRequest<'_>,
        session: Arc<Session>,
        (name, revision): (Name, i64),
        (stamp, released): (Stamp, Arc<AtomicBool>),
    ) -> Result<Acquired> {
        let token = u64::try_from(revision)
            .map_err(|_| LockError::protocol(BACKEND, format!("negative revision {revision}")))?;
        // The core checks session locks against the session whatever their keepalive option.
        let valid_until = session.valid_until();
        session.register(request.loss.clone());
        Ok(Acquired {
            token: FencingToken::new(token),
            valid_until,
            record: Box::new(EtcdRecord {
                key: name.key().to_owned(),
                session,
                name: std::sync::Mutex::new(Some(name)),
                stamp,
                released,
            }),
        })
    }

    /// One `try_acquire` under `session`, with the key `name` in `dir`.
    async fn try_in(
        &self,
        request: &AcquireRequest<'_>,
        dir: &str,
        (session, name): (&Arc<Session>, Name),
    ) -> Result<Option<Acquired>> {
        let (lock, mode) = (request.key.as_str(), request.mode());
        let key = name.key().to_owned();
        let stamp = Stamp::now(request.owner());
        let value = self.layout().value(&stamp);
        let Some((nobody, refusal)) = line::try_conditions(dir, mode) else {
            // A permit: queue, and keep the key only if a permit is free at once.
            let contender =
                Contender::enqueue(&self.inner, session, (dir, lock), (name, mode), value).await?;
            if !contender.granted() {
                contender.withdraw().await;
                return Ok(None);
            }
            return self
                .acquired(
                    request,
                    Arc::clone(session),
                    contender.keep(),
                    (stamp, Arc::default()),
                )
                .map(Some);
        };
        // Put our key only if nobody is in its way; if someone is, tell why.
        let txn = Txn::new()
            .when(nobody)
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(session.id())),
            )])
            .or_else([refusal]);
        // Armed before the request goes out: a `try_acquire` dropped while it is in flight
        // must not leave a key that holds the lock for the session's whole life.
        let mut pending = PendingKey::put(&self.inner, name, txn);
        let response = pending.settled().await?;
        if !response.succeeded() {
            pending.forget();
            line::refused(self.layout(), lock, dir, mode, &response)?;
            return Ok(None);
        }
        let revision = revision_of(&response)?;
        self.acquired(
            request,
            Arc::clone(session),
            (pending.keep(), revision),
            (stamp, Arc::default()),
        )
        .map(Some)
    }

    /// One `acquire`: queue, wait for the turn, queue again if the key was dropped.
    async fn acquire_once(&self, request: &AcquireRequest<'_>) -> Result<Acquired> {
        let dir = self.queue_dir(request)?;
        let (lock, mode) = (request.key.as_str(), request.mode());
        let mut tries = 0;
        loop {
            let (session, name) = self
                .inner
                .contender(request.options.lease, &dir, mode)
                .await?;
            let mut stamp = Stamp::now(request.owner());
            let value = self.layout().value(&stamp);
            let enqueued =
                Contender::enqueue(&self.inner, &session, (&dir, lock), (name, mode), value).await;
            let contender = match enqueued {
                Ok(contender) => contender,
                // etcd expired or revoked the lease before the heartbeat noticed: the
                // session is over, and a new one is started at once.
                Err(error) if is_lease_gone(&error) && tries < LEASE_GONE_RETRIES => {
                    tries += 1;
                    session.end(LossReason::SessionEnded);
                    continue;
                }
                Err(error) => return Err(error),
            };
            match contender.wait_for_turn(&session, request).await? {
                Line::Holder(contender) => {
                    let waited = contender.waited();
                    let (name, revision) = contender.keep();
                    let released = Arc::new(AtomicBool::new(false));
                    if waited && self.layout().records_grant_time() {
                        stamp.acquired_at = Some(std::time::SystemTime::now());
                        self.stamp_grant(name.key(), revision, &stamp, Arc::clone(&released));
                    }
                    let stamp = (stamp, released);
                    return self.acquired(request, session, (name, revision), stamp);
                }
                // The session ended or our key vanished while we waited: queue again.
                Line::Dropped => continue,
            }
        }
    }
}

#[async_trait]
impl LockBackend for EtcdBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "etcd",
            fifo: true,
            session_lease: true,
            server_wakeup: true,
            min_lease: Duration::from_secs(1),
            // Leases are whole seconds, etcd grants at least its minimum TTL (2 s with the
            // default election timeout) and checks expiry every 500 ms.
            crash_release_bound: Duration::from_secs(3),
        }
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        let dir = self.queue_dir(&request)?;
        let mut tries = 0;
        loop {
            let (session, name) = self
                .inner
                .contender(request.options.lease, &dir, request.mode())
                .await?;
            match self.try_in(&request, &dir, (&session, name)).await {
                Err(error) if is_lease_gone(&error) && tries < LEASE_GONE_RETRIES => {
                    tries += 1;
                    session.end(LossReason::SessionEnded);
                }
                outcome => return outcome,
            }
        }
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.acquire_once(&request).await {
                // A request that went to a member that died, or hung in an election, fails
                // one try, not the wait: another member answers soon (a cluster elects a new
                // leader in a second or two). The failed try's key is deleted in the
                // background, so queueing again costs this waiter its place, nothing more.
                // A cluster that stays out of reach is an error after `OUTAGE_LIMIT`, even
                // for a waiter without a wait limit, as on the other backends.
                Err(error @ LockError::Connection { .. }) => {
                    let now = Instant::now();
                    let since = *failing_since.get_or_insert(now);
                    let retry_at = now + backoff.next_delay();
                    match request.deadline {
                        Some(deadline) if retry_at >= deadline => return Err(error),
                        _ if now.duration_since(since) >= OUTAGE_LIMIT => return Err(error),
                        _ => {
                            tracing::debug!(%error, "etcd acquire failed; trying again");
                            tokio::time::sleep_until(retry_at).await;
                        }
                    }
                }
                outcome => return outcome,
            }
        }
    }

    async fn extend(&self, lease: &Lease, _ttl: Duration) -> Result<Instant> {
        // The lease is the session's and keeps its own length; extending checks that the
        // lock is still ours and reports how long the session surely runs.
        let record = record(lease)?;
        // The read makes etcd answer through the quorum: a transaction without one (only a
        // comparison) is served from the copy of whichever member the request reaches, which
        // may not have applied the latest writes yet. Through a client with several endpoints
        // an extend right after the acquire then said `NotHeld` for a held lock, and one
        // right after a release through another member said the lock was still ours.
        let txn = Txn::new()
            .when([still_ours(record, lease)])
            .and_then([TxnOp::get(
                record.key.as_str(),
                Some(GetOptions::new().with_count_only()),
            )]);
        if !self.inner.txn(txn).await?.succeeded() {
            return Err(lease.not_held());
        }
        if let Some(reason) = record.session.ended() {
            tracing::debug!(%reason, "extend after the session ended");
            return Err(lease.not_held());
        }
        Ok(record.session.valid_until())
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let record = record(lease)?;
        record.released.store(true, Ordering::Relaxed);
        let txn = Txn::new()
            .when([still_ours(record, lease)])
            .and_then([TxnOp::delete(record.key.as_str(), None)]);
        // Sent from a task of its own: a caller that stops waiting for the release (a
        // dropped future) must not leave the key holding the lock for the session's whole
        // life, as a request cut off before it reached etcd would.
        let name = support::lock(&record.name).take();
        let sending = tokio::spawn({
            let backend = self.clone();
            let session = Arc::clone(&record.session);
            async move {
                let outcome = backend.inner.txn(txn.clone()).await;
                match (&outcome, name) {
                    // Removed, or not this incarnation any more: gone either way (our
                    // name is ours alone, so no other incarnation can be there).
                    (Ok(_), Some(name)) => name.give_back(),
                    // The key stays attached to a live session, so it would not expire:
                    // keep trying in the background while the session lives.
                    (Err(_), name) => backend.retry_release(txn, session, name),
                    (Ok(_), None) => {}
                }
                outcome
            }
        });
        let sent = sending
            .await
            .map_err(|error| LockError::backend(BACKEND, error.to_string()))?;
        match sent {
            Ok(response) if response.succeeded() => Ok(()),
            Ok(_) => Err(lease.not_held()),
            Err(error) => Err(error),
        }
    }

    /// Everything in dlock's layout. In etcd's concurrency layout the value holds no
    /// times (no `acquired_at`) and a lock name can be any key (no `list`).
    fn introspection(&self) -> Introspection {
        let mut introspection = Introspection::all();
        if !self.layout().lists() {
            introspection.list = false;
        }
        if !self.layout().records_grant_time() {
            introspection.acquired_at = false;
        }
        introspection
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        Ok(self.report(key, options).await?.info)
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        self.report_dir(&self.dir_of(key, options)).await
    }

    /// Every mode in dlock's layout, where every mode stands in the one line of create
    /// revisions (see `line`); only [`LockMode::Exclusive`] in etcd's concurrency layout
    /// (Go's Mutex counts every key under the name as an exclusive contender).
    fn supports(&self, mode: LockMode) -> bool {
        self.layout().supports(mode)
    }

    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        let record = record(lease)?;
        let stamp = Stamp {
            owner: owner.to_owned(),
            ..record.stamp.clone()
        };
        // Only while the key is still ours (this incarnation), keeping its lease.
        let txn = Txn::new()
            .when([still_ours(record, lease)])
            .and_then([TxnOp::put(
                record.key.as_str(),
                self.layout().value(&stamp),
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        if self.inner.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(lease.not_held())
        }
    }

    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        report::wait_for_change(&self.inner, self.layout(), &self.dir_of(key, options), seen).await
    }

    /// `Unsupported` in etcd's concurrency layout: a lock name there can be any key.
    async fn list(&self, options: &LockOptions, list: &ListRequest) -> Result<ListPage> {
        if !self.layout().lists() {
            return Err(LockError::Unsupported {
                backend: BACKEND,
                operation: "listing the locks of the etcd-concurrency layout",
            });
        }
        let base = layout::lock_base(self.inner.config.namespace.as_deref(), &options.prefix);
        let range_start = format!("{base}{}", layout::escape_key_prefix(&list.key_prefix));
        let range_end = layout::prefix_end(range_start.as_bytes());
        let mut from = match &list.after {
            // Everything of the cursor's lock (and of longer prefixes under its name) is
            // behind us.
            Some(after) => {
                let after = LockKey::new(after.as_str())?;
                let after = format!("{base}{}/", after.path_segment());
                layout::prefix_end(after.as_bytes()).max(range_start.clone().into_bytes())
            }
            None => range_start.into_bytes(),
        };
        // One lock more than the page, to know whether there is a next page.
        let mut found: Vec<(String, LockKey)> = Vec::new();
        let (endpoint, timeout) = (&self.inner.endpoint, self.inner.config.request_timeout);
        let mut kv = self.inner.client.kv_client();
        'scan: while found.len() <= list.limit && from < range_end {
            // Keys only, a bounded batch: a page costs O(page + its waiters) keys read.
            let batch = GetOptions::new()
                .with_range(range_end.clone())
                .with_keys_only()
                .with_limit(LIST_BATCH);
            let answer = request(endpoint, timeout, kv.get(from.clone(), Some(batch))).await?;
            if answer.kvs().is_empty() {
                break;
            }
            let full = answer.kvs().len() as i64 == LIST_BATCH;
            let mut next = from.clone();
            for kv in answer.kvs() {
                if kv.key() < next.as_slice() {
                    continue; // inside a lock or nested prefix already stepped over
                }
                match layout::classify(&base, kv.key()) {
                    Found::Lock { dir, key } => {
                        if !key.as_str().starts_with(&list.key_prefix) {
                            next = layout::prefix_end(dir.as_bytes());
                            continue;
                        }
                        next = layout::prefix_end(dir.as_bytes());
                        found.push((dir, key));
                        if found.len() > list.limit {
                            break 'scan;
                        }
                    }
                    Found::Nested { skip } => next = layout::prefix_end(skip.as_bytes()),
                    Found::Foreign => {
                        next = kv.key().to_vec();
                        next.push(0);
                    }
                }
            }
            from = next;
            if !full {
                break;
            }
        }
        let more = found.len() > list.limit;
        found.truncate(list.limit);
        let mut locks = Vec::with_capacity(found.len());
        for (dir, key) in found {
            let report = self.report_dir(&dir).await?;
            // Released between the scan and the report: not a lock any more.
            if report.info.held {
                locks.push(ListedLock::new(key, report));
            }
        }
        let next = if more {
            locks.last().map(|lock| lock.key.as_str().to_owned())
        } else {
            None
        };
        Ok(ListPage::new(locks, next))
    }

    async fn ping(&self) -> Result<Duration> {
        // A linearizable read: what a waiter's confirmation costs, the cheapest lock request.
        let mut kv = self.inner.client.kv_client();
        let started = Instant::now();
        let probe = kv.get("dlock-ping", Some(GetOptions::new().with_count_only()));
        request(
            &self.inner.endpoint,
            self.inner.config.request_timeout,
            probe,
        )
        .await?;
        Ok(started.elapsed())
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        // One question per session (etcd lease): which keys are still attached to it?
        let mut attached: HashMap<i64, Option<HashSet<Vec<u8>>>> = HashMap::new();
        let mut renewals = Vec::with_capacity(leases.len());
        for lease in leases {
            let record = record(lease)?;
            let session = &record.session;
            session.end_if_overdue();
            if let Some(reason) = session.ended() {
                renewals.push(Renewal::Lost(reason));
                continue;
            }
            let keys = match attached.entry(session.id()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(unknown) => unknown.insert(self.attached_keys(session).await?),
            };
            renewals.push(match keys {
                None => Renewal::Lost(LossReason::SessionEnded),
                Some(keys) if keys.contains(record.key.as_bytes()) => Renewal::Renewed {
                    valid_until: session.valid_until(),
                },
                Some(_) => Renewal::Lost(LossReason::NotOwner),
            });
        }
        Ok(renewals)
    }
}

impl EtcdBackend {
    /// The queue directory of `key` under `options`.
    fn dir_of(&self, key: &LockKey, options: &LockOptions) -> String {
        self.layout()
            .queue_dir(self.inner.config.namespace.as_deref(), &options.prefix, key)
    }

    /// Who holds the lock whose queue directory is `dir` (see [`report::report_dir`]).
    async fn report_dir(&self, dir: &str) -> Result<LockReport> {
        report::report_dir(&self.inner, self.layout(), dir).await
    }

    /// Writes the grant time into the value of a key that waited, off the grant's path (the
    /// lock is the caller's already; until this lands, a report says the time it queued),
    /// and only once the lock has been held for [`GRANT_TIME_DELAY`] and is not being
    /// released (`released`): a lock handed on at once never needs it, and this write was a
    /// third of etcd's writes per handoff under contention. Only while the key is still this
    /// incarnation and its value the one put: a new owner description
    /// ([`LockBackend::update_owner`]) that lands first carries the grant time itself and
    /// must not be overwritten with the old owner. The lease is kept.
    fn stamp_grant(&self, key: &str, revision: i64, stamp: &Stamp, released: Arc<AtomicBool>) {
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Equal, revision),
                Compare::mod_revision(key, CompareOp::Equal, revision),
            ])
            .and_then([TxnOp::put(
                key,
                stamp.encode(),
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        let shared = Arc::clone(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(GRANT_TIME_DELAY).await;
            if released.load(Ordering::Relaxed) {
                return;
            }
            if let Err(error) = shared.txn(txn).await {
                tracing::debug!(%error, "writing the grant time failed");
            }
        });
    }

    /// Sends a failed release again, with backoff, until it goes through, the session ends
    /// (its keys vanish with it) or about a minute has passed.
    fn retry_release(&self, txn: Txn, session: Arc<Session>, name: Option<Name>) {
        let backend = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
            for _ in 0..20 {
                tokio::time::sleep(backoff.next_delay()).await;
                if session.ended().is_some() {
                    return;
                }
                match backend.inner.txn(txn.clone()).await {
                    Ok(_) => {
                        if let Some(name) = name {
                            name.give_back();
                        }
                        return;
                    }
                    Err(error) => tracing::debug!(%error, "release retry failed"),
                }
            }
            tracing::warn!("gave up releasing a lock; it is freed when the client's session ends");
        });
    }

    /// The keys attached to the session's lease, or `None` if etcd says the lease is gone
    /// (the session is then ended).
    async fn attached_keys(&self, session: &Session) -> Result<Option<HashSet<Vec<u8>>>> {
        let mut leases = self.inner.client.lease_client();
        let answer = request(
            &self.inner.endpoint,
            self.inner.config.request_timeout,
            leases.time_to_live(
                session.id(),
                Some(LeaseTimeToLiveOptions::new().with_keys()),
            ),
        )
        .await?;
        // etcd answers -1 for a lease it does not have. A live lease with less than a second
        // left is answered 0 (whole seconds, rounded down): it is still there, with its keys,
        // and the heartbeat may be renewing it right now (after a pause, say). Taking that for
        // "gone" would stop the heartbeat and keep the keys until etcd expires the lease.
        if answer.ttl() < 0 {
            session.end(LossReason::SessionEnded);
            return Ok(None);
        }
        Ok(Some(answer.keys().iter().cloned().collect()))
    }
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// How many times in a row one acquisition starts a new session because etcd says the last
/// one's lease is gone: once is the expected case (a lease expired or revoked before the
/// heartbeat noticed); a fresh lease gone again at once means something else is wrong.
const LEASE_GONE_RETRIES: u32 = 3;

/// How long an `acquire` keeps trying through connection failures (a dead member, an
/// election, the whole cluster out of reach) before it returns the error: well above a
/// leader election, like the Redis backend's default `retry_limit`.
const OUTAGE_LIMIT: Duration = Duration::from_secs(10);

/// How long a lock that waited is held before its grant time is written into its key (see
/// `stamp_grant`): until then, a report gives the time it queued as its `acquired_at`.
const GRANT_TIME_DELAY: Duration = Duration::from_millis(50);

/// How many keys one read of a `list` scan fetches (keys only).
const LIST_BATCH: i64 = 256;

/// The backend's record of `lease`, or a typed error if another backend took it.
pub(crate) fn record(lease: &Lease) -> Result<&EtcdRecord> {
    lease.record_of::<EtcdRecord>(BACKEND)
}

/// The create revision the lock key of `lease` must still have.
pub(crate) fn token_revision(lease: &Lease) -> i64 {
    i64::try_from(lease.fencing_token().get()).unwrap_or(i64::MAX)
}

/// The comparison that holds exactly while the lock key of `lease` (whose record is
/// `record`) still exists with the create revision it was acquired with: the lock is ours.
pub(crate) fn still_ours(record: &EtcdRecord, lease: &Lease) -> Compare {
    Compare::create_revision(record.key.as_str(), CompareOp::Equal, token_revision(lease))
}
