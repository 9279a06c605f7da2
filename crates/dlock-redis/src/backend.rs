//! The Redis lock backend: one instance, or a Redlock quorum of independent instances.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::collections::BTreeSet;
use std::time::UNIX_EPOCH;

use dlock_core::{
    AcquireRequest, Acquired, Capabilities, FencingToken, Introspection, Lease, ListPage,
    ListRequest, ListedLock, LockBackend, LockError, LockInfo, LockKey, LockMode, LockOptions,
    LockReport, LossReason, Renewal, Result, MIN_LEASE,
};
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::error::BACKEND;
use crate::layout::{index_name, mode_suffix, LockNames};
use crate::node::{Holder, Node};
use crate::quorum::{first_error, Attempt};
use crate::session::Shared;
use crate::waiter;
use crate::watch::Watcher;

/// Distributed locks in Redis: a single instance (`redis://`, `rediss://`) or Redlock over
/// independent instances (`redis+redlock://a,b,c`).
///
/// * **Acquire** is one Lua script: set the key to a fresh owner id with the lease if it is
///   free (and nobody waits before us), and bump the key's fence counter in the same step:
///   the token is `max(counter + 1, server time in ms × 1000)`, so it keeps growing when the
///   counter was rolled back or lost (see the crate docs for the clock assumption).
/// * **Release and extend** check the owner id on the server first (P6).
/// * **Renewal** of every lock a client holds is one script call per instance per interval;
///   the reply names the keys that are no longer ours, and their guards are signalled lost.
/// * **Waiting** (P8, P10): a waiter that finds the lock taken listens on its own channel and
///   queues itself in a per-lock list in Redis, with a deadline it refreshes whenever it asks
///   again (at least every 10 s; an entry counts 30 s at most), and skipped at once when its
///   waiter no longer listens (crashed, cancelled, or served before a restart reloaded the
///   line). On a single instance the release script hands the lock straight to the first live
///   waiter and tells it, with its token and the number of the request it answers, by one
///   message on its channel; the waiter ignores a grant of an earlier request, and trusts the
///   lease from the moment it sent the request (or confirms with one more script call if that
///   was long ago). Every waiter in line also sets its own timer at the holder's expiry,
///   for a holder that vanished: the waiters ahead of it may have vanished too (killed), and
///   nothing tells Redis's line that a subscriber left, so the first one to learn that it is
///   now first must be the live one. One release wakes one waiter; a holder's expiry wakes
///   every waiter once (one script call each).
///
/// * **Read-write locks and semaphores** (single instance, Sentinel): each shared or permit
///   holder has a key of its own with its own lease; the scripts' copy of `dlock_core::turn`
///   decides grants, and a release hands the key to every waiter at the head of the line
///   whose turn it now is. Redlock declares only exclusive locks (see `supports`).
///
/// * **In the standard layout** (`layout=redis-standard`, see [`Layout`](crate::Layout)) the
///   same calls run scripts that read and write only the lock key, as redsync and redis-py
///   do, and its fence counter: there is no line, so waiters are not served in order and
///   every waiter of a key tries again when it hears of a change (a keyspace event) or when
///   its polling period or the holder's lease runs out; only exclusive locks, no `list`.
///
/// **Order on a single instance:** first come, first served among waiters, counted from the
/// moment their acquire script joined the line (a waiter first tries without joining).
/// `try_acquire` never jumps the line, and a holder that releases and asks again queues
/// behind the waiters (no barging). A waiter that stopped listening (crashed, cancelled, or
/// its connection dropped) loses its place; so does a waiter whose entry's deadline passed.
///
/// **Redlock** promises no order among waiters (`fifo: false`): each instance lets any waiter
/// already in its line take the free lock, and the first to win a majority has it. Newcomers
/// and `try_acquire` still never take a free lock while someone live waits, so a releasing
/// holder cannot barge. Each release wakes the first waiter of each instance (at most one per
/// instance); a waiter that wins only a minority gives it back, keeps its place and retries
/// after a random delay. Every Redlock call goes on with the majority that answers: an
/// instance that is down, slow or frozen holds up nothing (see the crate's assumptions).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::Locker;
///
/// let backend = dlock_redis::connect("redis://127.0.0.1:6379?prefix=myapp").await?;
/// let locker = Locker::new(backend);
/// let guard = locker.acquire("reports/daily").await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Shared>,
}

impl RedisBackend {
    /// Connects to the instance(s) of `config`.
    ///
    /// A single instance must answer now. Redlock needs a majority now; the other
    /// instances are connected to when they come up.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        Ok(RedisBackend {
            inner: Shared::connect(config).await?,
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis key that holds the lock `key` under `prefix` (its owner id, acquisition
    /// time and owner description, expiring with the lease), for operators and tests that
    /// look at or tamper with it.
    pub fn lock_key_name(&self, prefix: &str, key: &LockKey) -> String {
        LockNames::new(&self.inner.config, prefix, key).lock
    }

    /// The Redis key whose value records that `lease` holds its lock (its owner id,
    /// acquisition time and owner description, expiring with the lease): the lock's key for
    /// an exclusive holder, the holder's own key for a shared or permit one. For tests that
    /// make the server forget a holder.
    pub fn held_key_name(&self, lease: &Lease) -> Result<String> {
        let record = record(lease)?;
        Ok(record.names.key_of(&record.owner))
    }

    /// The Redis key that holds the fence counter of the lock `key` under `prefix`.
    pub fn fence_key_name(&self, prefix: &str, key: &LockKey) -> String {
        LockNames::new(&self.inner.config, prefix, key).fence
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    /// In the standard layout: no FIFO (no line), and server wake-up only where every
    /// instance publishes keyspace events (see [`Layout`](crate::Layout)).
    fn capabilities(&self) -> Capabilities {
        let (redlock, cluster) = (self.inner.config.redlock, self.inner.config.cluster);
        Capabilities {
            name: match (redlock, cluster) {
                (true, _) => "redis+redlock",
                (_, true) => "redis+cluster",
                _ => "redis",
            },
            fifo: self.inner.fair(),
            session_lease: false,
            server_wakeup: self.inner.server_wakeup(),
            min_lease: MIN_LEASE,
            crash_release_bound: Duration::from_millis(if redlock { 500 } else { 200 }),
        }
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        self.check_mode(request.mode())?;
        let inner = &self.inner;
        let names = Arc::new(LockNames::new(
            &inner.config,
            &request.options.prefix,
            request.key,
        ));
        let owner = format!("{}{}", inner.next_id(), mode_suffix(request.mode()));
        let (lease, mode) = (request.options.lease, request.mode());
        match inner
            .attempt(&names, &owner, request.owner(), lease, None, mode)
            .await
        {
            Attempt::Granted {
                token, valid_until, ..
            } => Ok(Some(acquired(names, owner, token, valid_until))),
            Attempt::Busy { .. } => Ok(None),
            Attempt::Failed(error) => Err(error),
        }
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        self.check_mode(request.mode())?;
        let names = Arc::new(LockNames::new(
            &self.inner.config,
            &request.options.prefix,
            request.key,
        ));
        let grant = waiter::acquire(&self.inner, &request, &names).await?;
        Ok(acquired(names, grant.owner, grant.token, grant.valid_until))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant> {
        let inner = &self.inner;
        let record = record(lease)?;
        let started = Instant::now();
        let call = {
            let (names, owner) = (record.names.clone(), record.owner.clone());
            move |node: Node| {
                let (names, owner) = (names.clone(), owner.clone());
                async move { node.extend(&names, &owner, ttl).await }
            }
        };
        // A majority that answers after the lease ran out on this side extends nothing the
        // holder can still use.
        let deadline = Some(lease.valid_until().max(started));
        // Never give anything back here: a failed extend leaves the lock as it was.
        inner
            .owner_checked(deadline, call, || lease.not_held())
            .await?;
        Ok(started + ttl.saturating_sub(inner.drift(ttl)))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let record = record(lease)?;
        let inner = &self.inner;
        let fair = inner.fair();
        let call = {
            let (names, owner) = (record.names.clone(), record.owner.clone());
            move |node: Node| {
                let (names, owner) = (names.clone(), owner.clone());
                async move { node.release(&names, &owner, fair).await }
            }
        };
        // Released once every instance answered, or a majority did and the rest had a
        // moment: a frozen instance gets the release when it runs again, queued behind
        // whatever it was sent before, and otherwise frees the lock with its lease.
        let replies = inner.on_quorum(None, None, call, |_| false).await;
        let replies = inner.answers(replies);
        if replies.iter().any(|r| matches!(r, Ok(true))) {
            return Ok(());
        }
        let refused = replies.iter().filter(|r| matches!(r, Ok(false))).count();
        if refused > inner.instances() - inner.config.quorum() {
            return Err(lease.not_held());
        }
        // Some instances answered "not ours" and the others could not be asked: if it was
        // still ours there, it runs out with its lease.
        Err(first_error(replies).unwrap_or_else(|| lease.not_held()))
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        let inner = &self.inner;
        let mut batch = Vec::with_capacity(leases.len());
        for lease in leases {
            let record = record(lease)?;
            batch.push((record.names.clone(), record.owner.clone(), lease.ttl()));
        }
        let started = Instant::now();
        let batch = Arc::new(batch);
        let call = move |node: Node| {
            let batch = Arc::clone(&batch);
            async move {
                let locks: Vec<(&LockNames, &str, Duration)> = batch
                    .iter()
                    .map(|(names, owner, ttl)| (&**names, owner.as_str(), *ttl))
                    .collect();
                node.renew(&locks).await
            }
        };
        let (quorum, count) = (inner.config.quorum(), inner.instances());
        // No renewal that comes after the earliest lease ran out can save it.
        let deadline = leases.iter().map(|lease| lease.valid_until()).min();
        let replies = inner
            .on_quorum(None, deadline, call, |replies| {
                (0..leases.len()).all(|position| {
                    let renewed = replies
                        .iter()
                        .filter(|r| matches!(r, Some(Ok(flags)) if flags[position]))
                        .count();
                    let refused = replies
                        .iter()
                        .filter(|r| matches!(r, Some(Ok(flags)) if !flags[position]))
                        .count();
                    renewed >= quorum || refused > count - quorum
                })
            })
            .await;
        let replies = inner.answers(replies);
        let mut renewals = Vec::with_capacity(leases.len());
        for (position, lease) in leases.iter().enumerate() {
            let renewed = replies
                .iter()
                .filter(|r| matches!(r, Ok(flags) if flags[position]))
                .count();
            let refused = replies
                .iter()
                .filter(|r| matches!(r, Ok(flags) if !flags[position]))
                .count();
            if renewed >= quorum {
                let ttl = lease.ttl();
                renewals.push(Renewal::Renewed {
                    valid_until: started + ttl.saturating_sub(inner.drift(ttl)),
                });
            } else if refused > inner.instances() - quorum {
                renewals.push(Renewal::Lost(LossReason::NotOwner));
            } else {
                // Undecided: let the keepalive retry, and lose it on its own clock if this
                // lasts a whole lease.
                return Err(first_error(replies)
                    .unwrap_or_else(|| LockError::protocol(BACKEND, "renewal undecided")));
            }
        }
        Ok(renewals)
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        Ok(self.report(key, options).await?.info)
    }

    /// Owner and acquisition time live in the lock's value; the index of held locks per
    /// namespace and prefix pages through them in key order. The standard layout keeps no
    /// index, nor does a Redis Cluster (the index of a prefix would be in another slot than
    /// its locks, which no script can touch together): no `list`.
    fn introspection(&self) -> Introspection {
        let mut introspection = Introspection::all();
        introspection.list = self.inner.config.layout.has_line() && !self.inner.config.cluster;
        introspection
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        let names = LockNames::new(&self.inner.config, &options.prefix, key);
        self.report_lock(names, false).await
    }

    /// One `ZRANGEBYLEX` of the prefix's index per instance (O(log n + page)), then one
    /// inspect script per listed key, all in flight at once. Entries of locks that expired
    /// without a release are dropped as they are met, and the next entries read in their
    /// place, so a page may cost more than one round of reads after holders crashed. Only
    /// held locks are listed (a lock that is only waited for is free at that moment).
    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        if !self.inner.config.layout.has_line() {
            return Err(LockError::Unsupported {
                backend: self.capabilities().name,
                operation: "listing the locks of the redis-standard layout",
            });
        }
        if self.inner.config.cluster {
            return Err(LockError::Unsupported {
                backend: self.capabilities().name,
                operation: "listing the locks of a Redis Cluster",
            });
        }
        self.list_locks(options, request).await
    }

    async fn ping(&self) -> Result<Duration> {
        self.ping_all().await
    }

    /// Every mode on a single instance (and behind Sentinel), whose scripts keep the line;
    /// only exclusive locks on Redlock, whose instances each keep a line of their own with
    /// no order among waiters: a majority of permits per instance would not bound the
    /// holders of the whole; and only exclusive locks in the standard layout, whose key
    /// has one holder and no line.
    fn supports(&self, mode: LockMode) -> bool {
        mode == LockMode::Exclusive || self.inner.fair()
    }

    /// One script per instance, owner-checked; on Redlock, done when a majority replaced
    /// it (an instance behind keeps the old description until the lock changes hands;
    /// `report` reads the description of the majority's holder).
    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        let inner = &self.inner;
        let record = record(lease)?;
        let call = {
            let (names, id) = (record.names.clone(), record.owner.clone());
            let description = owner.to_owned();
            move |node: Node| {
                let (names, id, description) = (names.clone(), id.clone(), description.clone());
                async move { node.update_owner(&names, &id, &description).await }
            }
        };
        inner.owner_checked(None, call, || lease.not_held()).await
    }

    /// Woken by the server: the watcher listens on its own channel and lists itself with
    /// the lock, whose grants, releases and owner updates tell it (see `watch`); a timer at
    /// the holder's remaining lease covers an expiry. Three round trips before waiting:
    /// listen, list, read the lock again (a change since `seen` returns at once).
    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        let names = LockNames::new(&self.inner.config, &options.prefix, key);
        let watcher = Watcher::start(&self.inner, &names).await?;
        let now = self.report_lock(names, false).await?;
        if !now.same_holder(seen) {
            return Ok(());
        }
        watcher.changed(&now).await;
        Ok(())
    }
}

impl RedisBackend {
    /// Refuses a mode this backend does not declare (the `Locker` already does; this keeps
    /// a direct call from taking a semaphore's permit as if it were a mutex).
    fn check_mode(&self, mode: LockMode) -> Result<()> {
        if self.supports(mode) {
            return Ok(());
        }
        Err(LockError::Unsupported {
            backend: self.capabilities().name,
            operation: "shared locks and semaphores on Redlock or in the redis-standard layout",
        })
    }

    /// What a majority of the instances say of the lock; `listing` drops the index entry of
    /// a lock found free.
    async fn report_lock(&self, names: LockNames, listing: bool) -> Result<LockReport> {
        let inner = &self.inner;
        let call = move |node: Node| {
            let names = names.clone();
            async move { node.inspect(&names, listing).await }
        };
        let replies = inner.on_quorum(None, None, call, |_| false).await;
        let replies = inner.answers(replies);
        let answered: Vec<_> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
        if answered.len() < inner.config.quorum() {
            return Err(first_error(replies).unwrap_or_else(|| {
                LockError::protocol(BACKEND, "too few instances answered the inspection")
            }));
        }
        let holding: Vec<_> = answered.iter().filter(|i| i.holder_ttl.is_some()).collect();
        let quorum = inner.config.quorum();
        // The holder's token is the value a majority was raised to before its acquire
        // returned (`settle_token`); an instance that granted after the majority settled may
        // have issued a higher one of its own (tokens follow each instance's clock). So the
        // token is the highest value a majority of the holding instances share; while the
        // raises are still under way no value is (the quorum-th highest would be a lower,
        // passing one), and the lock reads as not held yet: an election's observer never
        // sees a term the leader does not have.
        let fences: Vec<u64> = holding.iter().map(|i| i.fence).collect();
        let settled = fences
            .iter()
            .copied()
            .filter(|fence| fences.iter().filter(|other| *other == fence).count() >= quorum)
            .max();
        let held = holding.len() >= quorum && settled.is_some();
        let info = LockInfo {
            held,
            // 0: a holder without a token (another library's, in the standard layout).
            fencing_token: settled
                .filter(|token| held && *token > 0)
                .map(FencingToken::new),
            remaining_lease: held
                .then(|| holding.iter().filter_map(|i| i.holder_ttl).min())
                .flatten(),
            waiters: answered.iter().filter_map(|i| i.waiters).max(),
        };
        let mut report = LockReport::from(info);
        // The holder is the owner id a majority holds the lock under (Redlock: one id per
        // attempt, on every instance it won); it took the lock when the quorum-th of them
        // granted it.
        let holders: Vec<_> = holding.iter().filter_map(|i| i.holder.as_ref()).collect();
        let majority = held
            .then(|| {
                holders
                    .iter()
                    .find(|h| holders.iter().filter(|o| o.id == h.id).count() >= quorum)
            })
            .flatten();
        if let Some(holder) = majority {
            let mut times: Vec<u64> = holders
                .iter()
                .filter(|o| o.id == holder.id)
                .map(|o| o.acquired_ms)
                .collect();
            times.sort_unstable();
            // After an `update_owner` that reached only a majority, the description a
            // majority stores (one instance may lag behind).
            let same: Vec<&&Holder> = holders.iter().filter(|o| o.id == holder.id).collect();
            let description = same
                .iter()
                .map(|o| &o.description)
                .find(|d| same.iter().filter(|o| o.description == **d).count() >= quorum)
                .unwrap_or(&holder.description);
            report = report
                .with_owner(description.clone())
                .with_acquired_at(UNIX_EPOCH + Duration::from_millis(times[quorum - 1]));
        }
        Ok(report)
    }

    async fn list_locks(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        let inner = &self.inner;
        let namespace = &inner.config.namespace;
        let index = index_name(namespace, &options.prefix);
        let limit = request.limit;
        let mut locks = Vec::new();
        let mut cursor = request.after.clone();
        loop {
            let call = {
                let (index, key_prefix) = (index.clone(), request.key_prefix.clone());
                let cursor = cursor.clone();
                move |node: Node| {
                    let (index, key_prefix, cursor) =
                        (index.clone(), key_prefix.clone(), cursor.clone());
                    async move {
                        node.index_page(&index, &key_prefix, cursor.as_deref(), limit)
                            .await
                    }
                }
            };
            let replies = inner.answers(inner.on_quorum(None, None, call, |_| false).await);
            let pages: Vec<&Vec<String>> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
            if pages.len() < inner.config.quorum() {
                return Err(first_error(replies).unwrap_or_else(|| {
                    LockError::protocol(BACKEND, "too few instances answered the listing")
                }));
            }
            // Keys up to the end of the shortest full page are complete on every instance
            // that answered; later ones are read in the next round.
            let horizon = pages
                .iter()
                .filter(|page| page.len() >= limit)
                .filter_map(|page| page.last())
                .min()
                .cloned();
            let candidates: BTreeSet<&String> = pages
                .iter()
                .flat_map(|page| page.iter())
                .filter(|key| horizon.as_ref().is_none_or(|h| *key <= h))
                .collect();
            let keys: Vec<LockKey> = candidates
                .into_iter()
                // An entry that is no key (written by hand) cannot be a lock of ours.
                .filter_map(|key| LockKey::new(key.as_str()).ok())
                .collect();
            let reports = futures::future::try_join_all(keys.iter().map(|key| {
                self.report_lock(LockNames::new(&inner.config, &options.prefix, key), true)
            }))
            .await?;
            for (key, report) in keys.into_iter().zip(reports) {
                if !report.info.held {
                    continue;
                }
                locks.push(ListedLock::new(key, report));
                if locks.len() == limit {
                    let next = locks.last().map(|lock| lock.key.as_str().to_owned());
                    return Ok(ListPage::new(locks, next));
                }
            }
            match horizon {
                Some(horizon) => cursor = Some(horizon),
                None => return Ok(ListPage::new(locks, None)),
            }
        }
    }

    async fn ping_all(&self) -> Result<Duration> {
        let replies = self
            .inner
            .on_quorum(
                None,
                None,
                |node: Node| async move { node.ping().await },
                |_| false,
            )
            .await;
        let replies = self.inner.answers(replies);
        let mut times: Vec<Duration> = replies
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        if times.len() < self.inner.config.quorum() {
            return Err(first_error(replies)
                .unwrap_or_else(|| LockError::protocol(BACKEND, "too few instances answered")));
        }
        // A quorum operation waits for the quorum-th fastest instance.
        times.sort_unstable();
        Ok(times[self.inner.config.quorum() - 1])
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.inner.config)
            .field("client_id", &self.inner.client_id)
            .finish()
    }
}

/// The backend's record of one acquisition. The names are shared with the calls that use
/// them (each instance's call owns its arguments): cloning ten strings per call cost more
/// than the rest of the client's work on an uncontended lock (issue 14).
struct RedisRecord {
    names: Arc<LockNames>,
    owner: String,
}

fn acquired(names: Arc<LockNames>, owner: String, token: u64, valid_until: Instant) -> Acquired {
    Acquired {
        token: FencingToken::new(token),
        valid_until,
        record: Box::new(RedisRecord { names, owner }),
    }
}

fn record(lease: &Lease) -> Result<&RedisRecord> {
    lease.record_of::<RedisRecord>(BACKEND)
}
