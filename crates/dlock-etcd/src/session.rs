//! The client's connection and sessions: the etcd client every request goes through, and
//! per lease length one session, an etcd lease that every lock and waiting key of the client
//! is attached to, kept alive by one keepalive stream, with the loss signals it owes the
//! guards when it ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dlock_core::support::{lock, spawn_clean_up, SessionCheck, SessionLease};
use dlock_core::{Backoff, LockError, LockMode, LossNotifier, LossReason, Result};
use etcd_client::{
    Client, ConnectOptions, GetResponse, LeaseClient, LeaseKeepAliveStream, LeaseKeeper, Txn,
    TxnOpResponse, TxnResponse,
};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::config::{EtcdConfig, Layout};
use crate::error::{request, to_lock_error, BACKEND};

/// How many unused sessions of one lease length a client keeps (see [`Shared::contender`]):
/// dlock's layout only ever has one; with one key per lease and lock, the extra leases of a
/// burst of contenders for one lock are given back beyond this.
const IDLE_SESSIONS: usize = 4;

/// What every clone of an [`EtcdBackend`](crate::EtcdBackend) shares: the etcd client, and
/// the sessions its locks and waiting keys are attached to.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: EtcdConfig,
    /// The endpoints, for error messages (no credentials).
    pub(crate) endpoint: String,
    /// Live sessions by lease length in whole seconds: one in dlock's layout; in a layout
    /// with one key per lease and lock, as many as this client had contenders of one lock
    /// at once (see [`Shared::contender`]).
    pub(crate) sessions: AsyncMutex<HashMap<u64, Vec<Arc<Session>>>>,
    /// Watch events received by waiters, for tests and benchmarks.
    pub(crate) watch_events: AtomicU64,
}

impl Shared {
    /// Connects to the cluster `config` describes, authenticating if it carries credentials,
    /// and checks that a member answers.
    pub(crate) async fn connect(config: EtcdConfig) -> Result<Shared> {
        let endpoint = config.endpoint_list();
        // Every request, and above all every waiter's watch, requires the member to have a
        // leader: a member cut off from the quorum then fails the request, and ends an open
        // watch (etcd's leader monitor), instead of answering from its stale copy or keeping
        // a watch that can never see the holder's key go. The waiter then looks at the queue
        // again, through a member that has a leader if the endpoints list one.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_require_leader(true);
        if let Some(credentials) = &config.credentials {
            options = options.with_user(credentials.user.clone(), credentials.password.clone());
        }
        if let Some(tls) = &config.tls {
            options = options.with_tls(crate::tls::client_config(tls)?);
        }
        let wait = config.connect_timeout + config.request_timeout;
        let mut client = request(
            &endpoint,
            wait,
            Client::connect(config.endpoints.clone(), Some(options)),
        )
        .await?;
        // The channel connects lazily: ask once so an unreachable cluster fails here.
        request(&endpoint, wait, client.status()).await?;
        Ok(Shared {
            client,
            config,
            endpoint,
            sessions: AsyncMutex::new(HashMap::new()),
            watch_events: AtomicU64::new(0),
        })
    }

    /// A session for a contender of `mode` in the queue `dir` with `lease`, and the name of
    /// its key there: the live session of that lease length, started if needed. In a layout
    /// with one key per lease and lock ([`Layout::one_key_per_lease`]) a session whose key
    /// in `dir` is taken (by another task of this client) cannot lend a second one: the next
    /// session of that lease length that can is used, or a new one is started. Those extra
    /// sessions stay for later contenders, but no more than [`IDLE_SESSIONS`] unused ones.
    pub(crate) async fn contender(
        &self,
        lease: Duration,
        dir: &str,
        mode: LockMode,
    ) -> Result<(Arc<Session>, Name)> {
        let seconds = lease.as_secs_f64().ceil().max(1.0) as u64;
        let mut sessions = self.sessions.lock().await;
        let pool = sessions.entry(seconds).or_default();
        // A lease past its validity on this process's clock (after a pause, say) is given up
        // here even if its heartbeat has not run yet: a key put under it would queue behind
        // the keys of its own lost locks.
        let mut idle = 0;
        pool.retain(|session| {
            if session.end_if_overdue() {
                return false;
            }
            // Only the pool holds it: no lock, no waiter, no request uses it.
            if Arc::strong_count(session) == 1 {
                idle += 1;
                return idle <= IDLE_SESSIONS;
            }
            true
        });
        for session in pool.iter() {
            if let Some(name) = session.name(dir, mode) {
                return Ok((Arc::clone(session), name));
            }
        }
        let session = Session::start(
            self.client.lease_client(),
            Duration::from_secs(seconds),
            self.config.layout,
            &self.endpoint,
            self.config.request_timeout,
        )
        .await?;
        let name = session
            .name(dir, mode)
            .ok_or_else(|| LockError::protocol(BACKEND, "a new session has no free key name"))?;
        pool.push(Arc::clone(&session));
        Ok((session, name))
    }

    /// Runs one transaction, bounded by the request timeout.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.client.kv_client();
        request(&self.endpoint, self.config.request_timeout, kv.txn(txn)).await
    }
}

/// The revision a successful single-put transaction wrote at.
pub(crate) fn revision_of(response: &TxnResponse) -> Result<i64> {
    response
        .header()
        .map(|h| h.revision())
        .filter(|r| *r > 0)
        .ok_or_else(|| LockError::protocol(BACKEND, "transaction answer without a revision"))
}

/// The key-values of the `index`th operation of a transaction, which must be a get.
pub(crate) fn got(response: &TxnResponse, index: usize) -> Result<Vec<etcd_client::KeyValue>> {
    got_answer(response, index).map(|mut get| get.take_kvs())
}

/// The answer to the `index`th operation of a transaction, which must be a get.
pub(crate) fn got_answer(response: &TxnResponse, index: usize) -> Result<GetResponse> {
    match response.op_responses().into_iter().nth(index) {
        Some(TxnOpResponse::Get(get)) => Ok(get),
        other => Err(LockError::protocol(
            BACKEND,
            format!("expected a range answer at position {index}, got {other:?}"),
        )),
    }
}

/// One etcd lease and its heartbeat.
///
/// The heartbeat sends a keepalive every third of the TTL on one stream. The session ends
/// when etcd answers that the lease is gone (revoked or expired: [`LossReason::SessionEnded`])
/// or when its validity ran out on this process's clock, because no answer came for a whole
/// TTL or the process was paused ([`LossReason::LeaseExpired`]); every registered guard is
/// then told. A lease given up on this process's clock may still run on the server, so it is
/// also revoked: its keys must not block anyone once their locks are declared lost. An ended
/// session never comes back: the backend starts a new one for later acquisitions, so nothing
/// new is ever queued under a lease given up on.
pub(crate) struct Session {
    shared: Arc<Keepalive>,
    heartbeat: AbortHandle,
    lease: LeaseClient,
    endpoint: String,
    timeout: Duration,
    /// Set when the heartbeat was stopped to simulate a crash: dropping must not revoke.
    abandoned: AtomicBool,
    /// Whose keys the session's names are.
    layout: Layout,
    /// The contender key names this session can use again.
    names: Mutex<Names>,
}

/// Contender key names are reused, as etcd's own `concurrency.Mutex` reuses
/// `<prefix>/<lease id>`: a new name for every acquisition would leave one more deleted key
/// in the lock's directory each time, and until etcd compacts its history every range read
/// of the directory walks all of them (the uncontended rate halved after ~150,000
/// acquisitions). A name is given back only once its key is known gone from the server, so
/// two incarnations of one name never overlap; every delete of a name that may be reused is
/// conditional on the incarnation's create revision, so a late retry cannot remove a newer
/// one. A name whose key's fate is unknown is never reused.
///
/// Where the layout has one key per lease and lock ([`Layout::one_key_per_lease`]), the one
/// name of a directory is lent to one contender at a time instead (`taken`), and a name
/// retired for good takes the directory out of this session's reach: the client uses
/// another session for it.
#[derive(Default)]
struct Names {
    /// Free slot numbers per queue directory.
    free: HashMap<String, Vec<u64>>,
    /// The next slot number never used by this session.
    next: u64,
    /// With one key per lease and lock: the directories whose one name is lent out (or
    /// retired).
    taken: HashSet<String>,
}

/// At most this many queue directories keep free names per session: beyond, a given-back
/// name is dropped (never reused), so memory stays bounded however many locks a client
/// touches. Reuse matters for locks taken again and again, which stay in the map.
const MAX_FREE_DIRS: usize = 4096;

/// A contender key name lent out by a session until its key is known gone from the server.
/// Dropping it without [`Name::give_back`] retires the name for good, the safe default.
pub(crate) struct Name {
    session: Weak<Session>,
    dir: String,
    slot: u64,
    key: String,
}

impl Name {
    /// The etcd key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The key is gone from the server and no request that could put it is in flight: the
    /// session may use the name again.
    pub(crate) fn give_back(self) {
        let Some(session) = self.session.upgrade() else {
            return;
        };
        if session.ended().is_some() {
            return;
        }
        let mut names = lock(&session.names);
        if session.layout.one_key_per_lease() {
            names.taken.remove(&self.dir);
            return;
        }
        let free = &mut names.free;
        if free.len() < MAX_FREE_DIRS || free.contains_key(&self.dir) {
            free.entry(self.dir).or_default().push(self.slot);
        }
    }
}

/// What the session and its heartbeat task share.
struct Keepalive {
    id: i64,
    ttl: Duration,
    /// Valid until the send time of the last answered keepalive plus the TTL it granted.
    lease: SessionLease,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds, at least one; etcd may grant more) and starts
    /// its heartbeat.
    pub(crate) async fn start(
        mut lease: LeaseClient,
        ttl: Duration,
        layout: Layout,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Arc<Session>, LockError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let sent = Instant::now();
        let granted = request(endpoint, timeout, lease.grant(seconds, None)).await?;
        if granted.ttl() <= 0 || !granted.error().is_empty() {
            return Err(LockError::protocol(
                crate::error::BACKEND,
                format!(
                    "lease grant answered ttl {} error {:?}",
                    granted.ttl(),
                    granted.error()
                ),
            ));
        }
        let ttl = Duration::from_secs(granted.ttl() as u64);
        let shared = Arc::new(Keepalive {
            id: granted.id(),
            ttl,
            lease: SessionLease::new(sent + ttl),
        });
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&shared),
            lease.clone(),
            endpoint.to_owned(),
            timeout,
        ))
        .abort_handle();
        Ok(Arc::new(Session {
            shared,
            heartbeat,
            lease,
            endpoint: endpoint.to_owned(),
            timeout,
            abandoned: AtomicBool::new(false),
            layout,
            names: Mutex::new(Names::default()),
        }))
    }

    /// The etcd lease id.
    pub(crate) fn id(&self) -> i64 {
        self.shared.id
    }

    /// A name for a contender key in `mode` in `dir`: a slot this session used before and
    /// got back, else a new one. (A slot is lent to one contender at a time, so the keys of
    /// one slot in different modes never exist together either.) With one key per lease
    /// and lock, the session's one name in `dir`, or `None` while it is lent out.
    pub(crate) fn name(self: &Arc<Self>, dir: &str, mode: LockMode) -> Option<Name> {
        let mut names = lock(&self.names);
        let slot = if self.layout.one_key_per_lease() {
            if !names.taken.insert(dir.to_owned()) {
                return None;
            }
            0
        } else {
            let reused = names.free.get_mut(dir).and_then(Vec::pop);
            reused.unwrap_or_else(|| {
                names.next += 1;
                names.next - 1
            })
        };
        Some(Name {
            session: Arc::downgrade(self),
            dir: dir.to_owned(),
            slot,
            key: self.layout.contender_key(dir, self.id(), slot, mode),
        })
    }

    /// Until when the lease surely runs, on this process's clock.
    pub(crate) fn valid_until(&self) -> Instant {
        self.shared.lease.valid_until()
    }

    /// Why the session ended, if it did.
    pub(crate) fn ended(&self) -> Option<LossReason> {
        self.shared.lease.ended()
    }

    /// Resolves when the session ends.
    pub(crate) async fn until_ended(&self) -> LossReason {
        self.shared.lease.until_ended().await
    }

    /// Tells `notifier` when the session ends (at once if it already has).
    pub(crate) fn register(&self, notifier: LossNotifier) {
        self.shared.lease.register(notifier);
    }

    /// Ends the session because etcd said its lease is gone.
    pub(crate) fn end(&self, reason: LossReason) {
        self.shared.end(reason);
        self.heartbeat.abort();
    }

    /// Ends the session (and revokes its lease) if its validity has run out on this
    /// process's clock; true if it has ended, now or before. Its locks are lost by then, and
    /// nothing new may be queued under it.
    pub(crate) fn end_if_overdue(&self) -> bool {
        match self.shared.lease.end_if_overdue() {
            SessionCheck::Live => false,
            SessionCheck::Ended => true,
            SessionCheck::EndedNow => {
                self.shared.log_end(LossReason::LeaseExpired);
                self.heartbeat.abort();
                spawn_clean_up(revoke_given_up(
                    self.lease.clone(),
                    self.shared.id,
                    self.shared.ttl,
                    self.endpoint.clone(),
                    self.timeout,
                ));
                true
            }
        }
    }

    /// Stops the heartbeat without revoking the lease, as a crashed process would: etcd
    /// frees everything when the lease runs out.
    #[cfg(feature = "testing")]
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.heartbeat.abort();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if self.abandoned.load(Ordering::SeqCst) || self.ended().is_some() {
            return;
        }
        // Nobody uses the lease any more: give it back so waiting keys vanish at once.
        let (mut lease, id) = (self.lease.clone(), self.shared.id);
        let (endpoint, timeout) = (self.endpoint.clone(), self.timeout);
        spawn_clean_up(async move {
            let _ = request(&endpoint, timeout, lease.revoke(id)).await;
        });
    }
}

impl Keepalive {
    /// Ends the session; true if this call did it.
    fn end(&self, reason: LossReason) -> bool {
        let first = self.lease.end(reason);
        if first {
            self.log_end(reason);
        }
        first
    }

    /// Logs the end of the session, once.
    fn log_end(&self, reason: LossReason) {
        tracing::warn!(lease = self.id, %reason, "etcd session ended");
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        self.lease.renewed(sent + ttl);
    }

    fn valid_until(&self) -> Instant {
        self.lease.valid_until()
    }
}

/// Keeps the lease alive until it ends; reopens the keepalive stream after connection
/// failures for as long as the lease may still run.
async fn heartbeat(
    shared: Arc<Keepalive>,
    mut lease: LeaseClient,
    endpoint: String,
    timeout: Duration,
) {
    let interval = shared.ttl / 3;
    let mut backoff = Backoff::new(
        Duration::from_millis(50),
        interval.max(Duration::from_millis(100)),
    );
    loop {
        let deadline = shared.valid_until();
        let sent = Instant::now();
        let opened =
            tokio::time::timeout_at(deadline.min(sent + timeout), lease.keep_alive(shared.id))
                .await;
        let outcome = match opened {
            Err(_) => Beat::Retry,
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Beat::Gone,
            Ok(Err(error)) => {
                tracing::debug!(error = %to_lock_error(&endpoint, error), "etcd keepalive stream failed");
                Beat::Retry
            }
            Ok(Ok((keeper, stream))) => {
                // Opening the stream sent one keepalive and read its (positive) answer.
                shared.renewed(sent, shared.ttl);
                backoff = Backoff::new(
                    Duration::from_millis(50),
                    interval.max(Duration::from_millis(100)),
                );
                beat(&shared, keeper, stream, interval).await
            }
        };
        match outcome {
            Beat::Gone => {
                shared.end(LossReason::SessionEnded);
                return;
            }
            Beat::Retry if Instant::now() >= shared.valid_until() => {
                if shared.end(LossReason::LeaseExpired) {
                    revoke_given_up(lease, shared.id, shared.ttl, endpoint, timeout).await;
                }
                return;
            }
            Beat::Retry => {
                let pause = Instant::now() + backoff.next_delay();
                tokio::time::sleep_until(pause.min(shared.valid_until())).await;
            }
        }
    }
}

/// Revokes a lease this process gave up on its own clock, retrying connection failures for
/// one TTL: past that, etcd has expired it anyway (no keepalive was sent since).
async fn revoke_given_up(
    mut lease: LeaseClient,
    id: i64,
    ttl: Duration,
    endpoint: String,
    timeout: Duration,
) {
    let give_up = Instant::now() + ttl;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match request(&endpoint, timeout, lease.revoke(id)).await {
            Ok(_) => return,
            // Not found: etcd expired it already. Any other answer will not change either.
            Err(LockError::Backend { .. } | LockError::Protocol { .. }) => return,
            Err(error) => {
                tracing::debug!(lease = id, %error, "revoking a given-up etcd lease failed; retrying");
            }
        }
        let pause = Instant::now() + backoff.next_delay();
        if pause >= give_up {
            return;
        }
        tokio::time::sleep_until(pause).await;
    }
}

enum Beat {
    /// etcd says the lease no longer exists.
    Gone,
    /// The stream broke or went silent; open another while the lease may still run.
    Retry,
}

/// Sends a keepalive every `interval` on an open stream and books each answer.
async fn beat(
    shared: &Keepalive,
    mut keeper: LeaseKeeper,
    mut stream: LeaseKeepAliveStream,
    interval: Duration,
) -> Beat {
    loop {
        tokio::time::sleep(interval).await;
        let sent = Instant::now();
        if keeper.keep_alive().await.is_err() {
            return Beat::Retry;
        }
        match tokio::time::timeout_at(shared.valid_until(), stream.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                shared.renewed(sent, Duration::from_secs(answer.ttl() as u64));
            }
            Ok(Ok(Some(_))) => return Beat::Gone,
            Ok(Ok(None) | Err(_)) | Err(_) => return Beat::Retry,
        }
    }
}
