//! The ZooKeeper lock backend: the classic ephemeral-sequential recipe over one session per
//! client.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{
    AcquireRequest, Acquired, Capabilities, FencingToken, Introspection, Lease, ListPage,
    ListRequest, ListedLock, LockBackend, LockError, LockInfo, LockKey, LockMode, LockOptions,
    LockReport, LossNotifier, LossReason, Renewal, Result,
};
use tokio::time::Instant;
use zookeeper_client::{Client, Error, EventType, OneshotWatcher, Stat};

use crate::config::{Layout, ZooKeeperConfig};
use crate::error::{is_connection, zk_error};
use crate::layout;
use crate::session::{Session, Shared};
use crate::waiter::{retry_backoff, sleep_until, Attempt, Line};

/// A ZooKeeper client that takes locks: one session, shared by every lock it holds.
///
/// - **Acquire**: an `EPHEMERAL_SEQUENTIAL` node under the key's node (a `CONTAINER`, so the
///   server removes it when empty); the lowest sequence holds the lock, every other contender
///   watches only the node just before its own (FIFO, one waiter woken per release).
/// - **Modes** (dlock's layout only): a reader's or a semaphore permit's node carries its
///   mode in its name; [`dlock_core::turn`] over the modes ahead decides who holds, and a
///   waiter watches the one node it waits for, or (a permit) the key's line.
/// - **Fencing token**: the lock node's creation zxid (see the crate documentation for why it
///   strictly grows).
/// - **Lease**: the session. Its timeout is the lease of every lock of this client, its
///   heartbeat renews them all at once, and when it ends (expired, or disconnected past its
///   deadline on this process's clock) every guard is signalled lost.
///
/// Make one with [`crate::connect`] or [`ZooKeeperBackend::connect`], and wrap it in a
/// [`Locker`](dlock_core::Locker).
#[derive(Clone)]
pub struct ZooKeeperBackend {
    shared: Arc<Shared>,
}

impl ZooKeeperBackend {
    /// Opens a session to the ensemble in `config` (creating the chroot if missing).
    ///
    /// Fails with [`LockError::Connection`] if no server answers within the connect timeout.
    pub async fn connect(config: ZooKeeperConfig) -> Result<Self> {
        config.validate()?;
        let session = Session::open(&config).await?;
        Ok(ZooKeeperBackend {
            shared: Arc::new(Shared {
                config,
                current: tokio::sync::Mutex::new(Some(session)),
                wakeups: AtomicU64::new(0),
                rechecks: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ZooKeeperConfig {
        &self.shared.config
    }

    /// The session timeout the server granted to the current session (the lease of its
    /// locks), or `None` if there is no live session right now.
    pub async fn session_timeout(&self) -> Option<Duration> {
        self.shared.live().await.map(|session| session.timeout())
    }

    /// The id of the current session, as the server writes it in a lock node's
    /// `ephemeralOwner`, or `None` if there is no live session right now.
    pub async fn session_id(&self) -> Option<i64> {
        self.shared.live().await.map(|session| session.id())
    }

    /// The current session's id and password, or `None` if there is no live session right
    /// now. Whoever has them can take the session over or close it: tests use this to end a
    /// session "from outside". Keep them as secret as a password.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn session_info(&self) -> Option<zookeeper_client::SessionInfo> {
        let session = self.shared.live().await?;
        let client = session.client().ok()?;
        Some(client.session().clone())
    }

    /// How many times a waiter of this client was woken by the server: the node it waited
    /// for went (P8: one per release that concerns it, never a herd), or, for a semaphore's
    /// permit, its key's line changed.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }

    /// How many times a waiter of this client read its key's line again after a wake-up.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn rechecks(&self) -> u64 {
        self.shared.rechecks.load(Ordering::Relaxed)
    }

    /// Stops the current session's heartbeat and drops its connection without closing the
    /// session, as a crashed process would: the server removes its locks when the session
    /// times out. The guards of those locks are signalled lost; the next call opens a new
    /// session. Fault tests use this.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn abandon_session(&self) {
        if let Some(session) = self.shared.current.lock().await.take() {
            session.retire(LossReason::SessionEnded);
        }
    }

    /// The path (below the chroot) of the lock node a lease of this backend holds: watch it,
    /// or read its `czxid`, the fencing token. `None` for a lease of another backend.
    pub fn node_path(lease: &Lease) -> Option<&str> {
        lease.record::<HeldNode>().map(|held| held.node.as_str())
    }

    async fn take(&self, request: &AcquireRequest<'_>, wait: bool) -> Result<Option<Acquired>> {
        if !self.supports(request.mode()) {
            return Err(LockError::Unsupported {
                backend: "zookeeper",
                operation: "shared and permit modes in a foreign layout",
            });
        }
        let dir = layout::lock_dir(
            self.shared.config.layout,
            &self.shared.config.namespace,
            &request.options.prefix,
            request.key,
        )?;
        let mut backoff = retry_backoff();
        loop {
            let session = match self.shared.session().await {
                Ok(session) => session,
                // A waiter keeps trying to reach the ensemble until its wait limit.
                Err(error) if wait && is_connection_error(&error) => {
                    tracing::warn!(%error, key = %request.key, "cannot open a ZooKeeper session; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = sleep_until(request.deadline) => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            };
            match self.take_in(&session, &dir, request, wait).await {
                Ok(Some(outcome)) => return Ok(outcome),
                // The session ended or our node vanished: start over in a new place in line.
                Ok(None) => {}
                Err(error) if is_connection_error(&error) && session.retired_reason().is_some() => {
                }
                Err(error) => return Err(error),
            }
            if request
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                return Err(request.timeout());
            }
        }
    }

    /// One attempt in one session: `Ok(None)` means "start over".
    async fn take_in(
        &self,
        session: &Arc<Session>,
        dir: &str,
        request: &AcquireRequest<'_>,
        wait: bool,
    ) -> Result<Option<Option<Acquired>>> {
        let client = session.client()?;
        let mut attempt = Attempt::new(
            Arc::clone(session),
            self.shared.config.layout,
            dir,
            request.owner(),
            request.mode(),
        );
        let sent = Instant::now();
        let (created, listed) = attempt.create().await?;
        let token = u64::try_from(created.czxid).map_err(|_| {
            LockError::protocol(
                "zookeeper",
                format!("negative creation zxid {}", created.czxid),
            )
        })?;
        // Where we stand: the list read with the create, in the same round trip. Should it
        // be missing, or not show our node (it always does: the server answers a session's
        // requests in order), read it again rather than trust it.
        let (sent, children) = match listed {
            Some(names) if names.iter().any(|name| name == attempt.name()) => (sent, Ok(names)),
            _ => (Instant::now(), client.list_children(dir).await),
        };
        // A waiter keeps asking through a dropped connection (in `wait_for_turn`); a
        // `try_acquire` reports it (its node is removed in the background).
        let children = match children {
            Err(error) if !wait && is_connection(&error) => {
                return self.lost_connection(session, error)
            }
            children => children,
        };
        let attempt = match attempt
            .wait_for_turn(&client, children, sent, request, wait, &self.shared)
            .await?
        {
            Line::Holder(attempt) => attempt,
            Line::Busy => return Ok(Some(None)),
            Line::Dropped => return Ok(None),
        };
        let node = attempt.keep();
        let held = HeldNode {
            session: Arc::clone(session),
            node,
            czxid: created.czxid,
            state: Arc::new(AtomicU8::new(HELD)),
            settled: Arc::new(tokio::sync::Notify::new()),
        };
        tokio::spawn(watch_held(
            watch_grace(session.timeout()),
            Arc::downgrade(session),
            held.node.clone(),
            held.czxid,
            Arc::clone(&held.state),
            Arc::clone(&held.settled),
            request.loss.clone(),
            session.retired(),
        ));
        Ok(Some(Some(Acquired {
            token: FencingToken::new(token),
            valid_until: session.deadline(),
            record: Box::new(held),
        })))
    }

    /// What the key node `dir` says of its lock: the first node in line holds it (its
    /// `czxid` is the token, its data the owner, its `ctime` when it joined the line; with
    /// readers or permits it is the oldest of the holders), the contenders [`turn`] does not
    /// grant wait. Two reads; read again if the first leaves between them.
    ///
    /// [`turn`]: dlock_core::turn
    async fn report_at(
        session: &Session,
        layout: Layout,
        client: &Client,
        dir: &str,
    ) -> Result<LockReport> {
        // Each retry means a holder left between two reads; a busy key can hand over many
        // times a second, so give up (with an error, never a wrong answer) after a few.
        for _ in 0..16 {
            let children = match client.list_children(dir).await {
                Ok(children) => children,
                Err(Error::NoNode) => return Ok(free_report()),
                Err(error) => return Err(zk_error(session.endpoint(), error)),
            };
            let line = layout::line(layout, &children);
            let Some(first) = line.first() else {
                return Ok(free_report());
            };
            let (data, stat) = match client.get_data(&format!("{dir}/{}", first.name)).await {
                Ok(read) => read,
                Err(Error::NoNode) => continue,
                Err(error) => return Err(zk_error(session.endpoint(), error)),
            };
            return Ok(report_of(&line, &data, &stat));
        }
        Err(LockError::protocol(
            "zookeeper",
            format!("the holder of {dir} changed during every one of 16 reads"),
        ))
    }

    /// [`LockBackend::wait_for_change`] in `session`: one pass of reads with watches;
    /// `Ok(())` once something may have changed since `seen`.
    async fn wait_for_change_in(
        &self,
        session: &Session,
        dir: &str,
        seen: &LockReport,
    ) -> Result<()> {
        let client = session.client()?;
        let layout = self.shared.config.layout;
        let endpoint = session.endpoint();
        // The server tells every change; the timer only bounds the wait should a watch be
        // lost with a connection (the client sets its watches again on reconnecting).
        let safety_net = tokio::time::sleep(session.timeout().max(Duration::from_secs(1)));
        tokio::pin!(safety_net);
        let retired = session.retired();
        tokio::pin!(retired);
        loop {
            let (children, line_watch) = match client.list_and_watch_children(dir).await {
                Ok(read) => read,
                // No key node, so nobody in line: wait for it to be made.
                Err(Error::NoNode) => match client.check_and_watch_stat(dir).await {
                    Ok((Some(_), _)) => continue,
                    Ok((None, made)) => {
                        if *seen != free_report() {
                            return Ok(());
                        }
                        tokio::select! {
                            _ = made.changed() => {}
                            _ = &mut safety_net => {}
                            _ = &mut retired => {}
                        }
                        return Ok(());
                    }
                    Err(error) => return Err(zk_error(endpoint, error)),
                },
                Err(error) => return Err(zk_error(endpoint, error)),
            };
            let line = layout::line(layout, &children);
            // The holder's data watch sees a new owner description (a leader's proclaim),
            // which changes no child.
            let (current, holder_watch) = match line.first() {
                None => (free_report(), None),
                Some(first) => {
                    match client
                        .get_and_watch_data(&format!("{dir}/{}", first.name))
                        .await
                    {
                        Ok((data, stat, watcher)) => {
                            (report_of(&line, &data, &stat), Some(watcher))
                        }
                        // The holder just left: a change.
                        Err(Error::NoNode) => return Ok(()),
                        Err(error) => return Err(zk_error(endpoint, error)),
                    }
                }
            };
            if current != *seen {
                return Ok(());
            }
            let holder_changed = async move {
                match holder_watch {
                    Some(watcher) => {
                        watcher.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = line_watch.changed() => {}
                _ = holder_changed => {}
                _ = &mut safety_net => {}
                _ = &mut retired => {}
            }
            return Ok(());
        }
    }

    fn lost_connection<T>(&self, session: &Session, error: Error) -> Result<Option<T>> {
        if session.retired_reason().is_some() {
            Ok(None)
        } else {
            Err(zk_error(session.endpoint(), error))
        }
    }
}

#[async_trait]
impl LockBackend for ZooKeeperBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "zookeeper",
            fifo: true,
            session_lease: true,
            server_wakeup: true,
            // Twice the tick of a server tuned for short sessions; the server's
            // `minSessionTimeout` is the real floor.
            min_lease: Duration::from_millis(200),
            // The server expires sessions on its own tick (2 s by default).
            crash_release_bound: Duration::from_secs(2),
        }
    }

    /// Every mode in dlock's layout; only [`LockMode::Exclusive`] in a foreign one (kazoo's
    /// and Curator's read-write locks name their nodes in ways of their own, not mapped).
    fn supports(&self, mode: LockMode) -> bool {
        mode == LockMode::Exclusive || !self.shared.config.layout.is_foreign()
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        self.take(&request, false).await
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        self.take(&request, true)
            .await?
            .ok_or_else(|| LockError::protocol("zookeeper", "a waiting acquire gave up early"))
    }

    async fn extend(&self, lease: &Lease, _ttl: Duration) -> Result<Instant> {
        let held = held(lease)?;
        if held.state.load(Ordering::Acquire) != HELD || held.session.retired_reason().is_some() {
            return Err(lease.not_held());
        }
        let client = held.session.client().map_err(|_| lease.not_held())?;
        let sent = Instant::now();
        match client.check_stat(&held.node).await {
            Ok(Some(stat))
                if stat.czxid == held.czxid && stat.ephemeral_owner == held.session.id() =>
            {
                held.session.answered(sent);
                Ok(held.session.deadline())
            }
            Ok(_) => {
                held.state.store(LOST, Ordering::Release);
                Err(lease.not_held())
            }
            Err(error) => Err(zk_error(held.session.endpoint(), error)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let held = held(lease)?;
        if held
            .state
            .compare_exchange(HELD, RELEASING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(lease.not_held());
        }
        // Whatever the outcome, the watching task looks at the state again (and ends unless
        // the lock is still held).
        let _settled = Settled(&held.settled);
        let session = &held.session;
        // Connection losses are retried for a while; past that the session's expiry still
        // removes the node, and the caller hears that the release was not confirmed.
        let give_up = Instant::now() + (session.timeout() / 2).min(Duration::from_secs(5));
        let mut backoff = retry_backoff();
        // Whether a delete went out whose answer was lost: it may have been done.
        let mut maybe_deleted = false;
        loop {
            let Ok(client) = session.client() else {
                held.state.store(LOST, Ordering::Release);
                return Err(lease.not_held());
            };
            // Any version: the path is unique to this acquisition (its random attempt id), so
            // this deletes our node and nothing else, whoever wrote its data last (our own
            // `update_owner`, or Curator's revocation in its layout).
            match client.delete(&held.node, None).await {
                Ok(()) => {
                    held.state.store(RELEASED, Ordering::Release);
                    return Ok(());
                }
                // Our own earlier delete, whose answer was lost, removed the node: released.
                // (Had the node gone otherwise in between, the lock would be just as free.)
                Err(Error::NoNode) if maybe_deleted => {
                    held.state.store(RELEASED, Ordering::Release);
                    return Ok(());
                }
                Err(Error::NoNode | Error::BadVersion) => {
                    held.state.store(LOST, Ordering::Release);
                    return Err(lease.not_held());
                }
                Err(error)
                    if is_connection(&error)
                        && Instant::now() < give_up
                        && session.retired_reason().is_none() =>
                {
                    maybe_deleted = true;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => {
                    // Ownership stays recorded: the node may still be there.
                    held.state.store(HELD, Ordering::Release);
                    return Err(zk_error(session.endpoint(), error));
                }
            }
        }
    }

    /// One `setData` of our own node (its data is the owner description). The node's path is
    /// unique to this acquisition and the node goes with the session or the release, so the
    /// write succeeding proves the lock still ours; a missing node is `NotHeld`.
    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        let held = held(lease)?;
        let session = &held.session;
        if held.state.load(Ordering::Acquire) != HELD || session.retire_if_overdue() {
            return Err(lease.not_held());
        }
        let client = session.client().map_err(|_| lease.not_held())?;
        let mut backoff = retry_backoff();
        loop {
            let sent = Instant::now();
            match client.set_data(&held.node, owner.as_bytes(), None).await {
                Ok(_) => {
                    session.answered(sent);
                    return Ok(());
                }
                Err(Error::NoNode) => {
                    held.state.store(LOST, Ordering::Release);
                    return Err(lease.not_held());
                }
                // The session ended under us, and the lock with it.
                Err(_) if session.retire_if_overdue() => return Err(lease.not_held()),
                // Writing the same data twice does no harm: retry while the session may live.
                Err(error) if is_connection(&error) => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Err(zk_error(session.endpoint(), error)),
            }
        }
    }

    /// Server-woken: a children watch on the key node (arrivals and departures) and a data
    /// watch on the first node in line (a new owner description), both set by the reads
    /// that compare the lock with `seen`, so nothing between the caller's read and the
    /// watches is missed; an exists-watch on a missing key node. Three reads per call; the
    /// session timeout is the timer of last resort.
    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        let config = &self.shared.config;
        let dir = layout::lock_dir(config.layout, &config.namespace, &options.prefix, key)?;
        let session = self.shared.session().await?;
        self.wait_for_change_in(&session, &dir, seen).await
    }

    /// Costs no round trip: the session's heartbeat keeps every lock of the client alive at
    /// once, and the watch on each lock node (set once the lock is held past the watch grace)
    /// reports deletions as they happen. This only reports what is known.
    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        leases
            .iter()
            .map(|lease| {
                let held = held(lease)?;
                held.session.retire_if_overdue();
                Ok(match held.session.retired_reason() {
                    Some(reason) => Renewal::Lost(reason),
                    None if held.state.load(Ordering::Acquire) == LOST => {
                        Renewal::Lost(LossReason::NotOwner)
                    }
                    None => Renewal::Renewed {
                        valid_until: held.session.deadline(),
                    },
                })
            })
            .collect()
    }

    /// Two reads: the key node's children, then the first one's data and `Stat`.
    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.report(key, options).await.map(|report| report.info)
    }

    /// Owner (the lock node's data, written by its create) and acquisition time (the lock
    /// node's `ctime`: when the holder joined the line, so for a holder that waited, earlier
    /// than the grant); every layout's list is its children, in sequence order.
    fn introspection(&self) -> Introspection {
        let mut introspection = Introspection::all();
        introspection.list = !self.shared.config.layout.is_foreign();
        introspection
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        let config = &self.shared.config;
        let dir = layout::lock_dir(config.layout, &config.namespace, &options.prefix, key)?;
        let session = self.shared.session().await?;
        let client = session.client()?;
        Self::report_at(&session, config.layout, &client, &dir).await
    }

    /// One `getChildren` of the prefix's node, which ZooKeeper does not paginate: O(keys
    /// under the prefix) per page (one reply, bounded by the server's `jute.maxbuffer`, 1 MB
    /// by default: some 30,000 keys of 30 bytes), then two reads per listed lock, all of a
    /// page sent at once (pipelined on the session's connection): O(n + page) work, about
    /// three round trips of latency. Key nodes without contenders (containers the server
    /// has not removed yet) are skipped.
    ///
    /// Foreign layouts cannot list: their lock paths are anywhere in the tree, not gathered
    /// under one node.
    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        if self.shared.config.layout.is_foreign() {
            return Err(LockError::Unsupported {
                backend: "zookeeper",
                operation: "listing the locks of a foreign layout",
            });
        }
        let dir = layout::prefix_dir(&self.shared.config.namespace, &options.prefix)?;
        let session = self.shared.session().await?;
        let client = session.client()?;
        let children = match client.list_children(&dir).await {
            Ok(children) => children,
            Err(Error::NoNode) => return Ok(ListPage::default()),
            Err(error) => return Err(zk_error(session.endpoint(), error)),
        };
        let mut keys: Vec<LockKey> = children
            .iter()
            .filter_map(|child| layout::key_of(child))
            .filter(|key| {
                key.as_str().starts_with(&request.key_prefix)
                    && request
                        .after
                        .as_deref()
                        .is_none_or(|after| key.as_str() > after)
            })
            .collect();
        // Escaping does not keep the byte order of keys, so sort the keys themselves.
        keys.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut locks = Vec::with_capacity(request.limit.min(keys.len()));
        let mut rest = keys.as_slice();
        while locks.len() < request.limit && !rest.is_empty() {
            let (batch, after) = rest.split_at((request.limit - locks.len()).min(rest.len()));
            rest = after;
            let reports = futures::future::join_all(batch.iter().map(|key| {
                let node = layout::key_node(&dir, key);
                let (session, client) = (&session, &client);
                async move { Self::report_at(session, Layout::Dlock, client, &node).await }
            }))
            .await;
            for (key, report) in batch.iter().zip(reports) {
                let report = report?;
                if report.info.held || report.info.waiters.unwrap_or(0) > 0 {
                    locks.push(ListedLock::new(key.clone(), report));
                }
            }
        }
        let next = match (rest.is_empty(), locks.last()) {
            (false, Some(last)) => Some(last.key.as_str().to_owned()),
            _ => None,
        };
        Ok(ListPage::new(locks, next))
    }

    /// One `exists` of the root: a read served by the server the session is connected to.
    async fn ping(&self) -> Result<Duration> {
        let session = self.shared.session().await?;
        let client = session.client()?;
        let started = Instant::now();
        client
            .check_stat("/")
            .await
            .map_err(|error| crate::error::zk_error(session.endpoint(), error))?;
        Ok(started.elapsed())
    }
}

impl fmt::Debug for ZooKeeperBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeperBackend")
            .field("endpoint", &self.shared.config.endpoint())
            .field("session_timeout", &self.shared.config.session_timeout)
            .finish_non_exhaustive()
    }
}

/// The backend's record of a held lock.
struct HeldNode {
    session: Arc<Session>,
    node: String,
    czxid: i64,
    state: Arc<AtomicU8>,
    /// Notified when a release is over, so the task watching the node looks again.
    settled: Arc<tokio::sync::Notify>,
}

const HELD: u8 = 0;
const RELEASING: u8 = 1;
const RELEASED: u8 = 2;
const LOST: u8 = 3;

/// How long a lock is held before its node is watched: a lock released sooner (the common
/// short critical section) never costs the server the `exists` that sets the watch, so an
/// uncontended acquire+release is create (with getChildren pipelined) and delete. A deletion
/// from outside within the grace is signalled when it ends (the `exists` then finds no
/// node), well within P5's bound (the lease), as other backends find one at their next
/// renewal; the session's end is signalled at once, watched or not.
fn watch_grace(session_timeout: Duration) -> Duration {
    (session_timeout / 4).min(Duration::from_secs(1))
}

/// Wakes the task watching a held node when it is dropped: the release is over.
struct Settled<'a>(&'a tokio::sync::Notify);

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Signals the loss of a held lock when its node is deleted by someone else or its session
/// ends; ends quietly when the lock is released.
///
/// The node's watch is set only after `grace` (see [`watch_grace`]), unless the lock was
/// released (`settled` is notified) by then.
#[allow(clippy::too_many_arguments)]
async fn watch_held(
    grace: Duration,
    // Weak: watching must not keep a session alive that everything else let go of.
    session: std::sync::Weak<Session>,
    node: String,
    czxid: i64,
    state: Arc<AtomicU8>,
    settled: Arc<tokio::sync::Notify>,
    loss: LossNotifier,
    retired: impl std::future::Future<Output = LossReason>,
) {
    tokio::pin!(retired);
    let watch_from = Instant::now() + grace;
    let reason = 'watch: {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(watch_from) => break,
                _ = settled.notified() => {
                    if state.load(Ordering::Acquire) != HELD {
                        return;
                    }
                }
                reason = &mut retired => break 'watch reason,
            }
        }
        if state.load(Ordering::Acquire) != HELD {
            return;
        }
        let mut watcher = match rewatch(&session, &node, czxid).await {
            Some(Some(watcher)) => watcher,
            Some(None) => break 'watch LossReason::NotOwner,
            None => break 'watch (&mut retired).await,
        };
        loop {
            tokio::select! {
                event = watcher.changed() => match event.event_type {
                    EventType::NodeDeleted => break 'watch LossReason::NotOwner,
                    EventType::Session => break 'watch LossReason::SessionEnded,
                    // Someone wrote to the node (Curator's revocation request does): the lock
                    // is still ours, but the one-shot watch is spent, so set it again, or a
                    // later deletion would go unnoticed.
                    _ => match rewatch(&session, &node, czxid).await {
                        Some(Some(next)) => watcher = next,
                        Some(None) => break 'watch LossReason::NotOwner,
                        None => break 'watch (&mut retired).await,
                    },
                },
                reason = &mut retired => break 'watch reason,
            }
        }
    };
    if state
        .compare_exchange(HELD, LOST, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        loss.notify_lost(reason);
    }
}

/// A new watch on a held node: `Some(None)` if the node is gone, `None` if the session can
/// no longer ask (its end is then signalled by the session itself).
/// The node must still be the one created for the lock (`czxid`).
async fn rewatch(
    session: &std::sync::Weak<Session>,
    node: &str,
    czxid: i64,
) -> Option<Option<OneshotWatcher>> {
    let client = session.upgrade()?.client().ok()?;
    match client.check_and_watch_stat(node).await {
        Ok((Some(stat), watcher)) if stat.czxid == czxid => Some(Some(watcher)),
        Ok(_) => Some(None),
        Err(_) => None,
    }
}

fn held(lease: &Lease) -> Result<&HeldNode> {
    lease.record_of::<HeldNode>("zookeeper")
}

fn is_connection_error(error: &LockError) -> bool {
    matches!(error, LockError::Connection { .. })
}

/// The report of a key nobody holds or waits for.
fn free_report() -> LockReport {
    LockReport::from(LockInfo {
        held: false,
        fencing_token: None,
        remaining_lease: None,
        waiters: Some(0),
    })
}

/// The report of a non-empty `line` whose first node holds `data` and has `stat`.
fn report_of(line: &[layout::Contender<'_>], data: &[u8], stat: &Stat) -> LockReport {
    let mut report = LockReport::from(LockInfo {
        held: true,
        fencing_token: u64::try_from(stat.czxid).ok().map(FencingToken::new),
        // Another session's time left is the server's secret; the holder's session
        // timeout would only be an upper bound.
        remaining_lease: None,
        // The first in line always holds: at least one holder.
        waiters: Some(line.len() - layout::holders(line).max(1)),
    });
    if !data.is_empty() {
        report = report.with_owner(String::from_utf8_lossy(data));
    }
    if let Ok(millis) = u64::try_from(stat.ctime) {
        report = report.with_acquired_at(std::time::UNIX_EPOCH + Duration::from_millis(millis));
    }
    report
}
