//! The Redis lock backend: one instance, or a Redlock quorum of independent instances.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{
    AcquireRequest, Acquired, Backoff, Capabilities, FencingToken, Lease, LockBackend, LockError,
    LockInfo, LockKey, LockOptions, LossReason, Renewal, Result, MIN_LEASE,
};
use futures::future::join_all;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::layout::LockNames;
use crate::node::{AcquireReply, Node, Waiters, Wake};

/// How long a waiter that is not first in line sleeps before looking again when no message
/// comes: only a safety net for lost messages, since releases and first-in-line changes are
/// pushed by the server.
const SAFETY_NET: Duration = Duration::from_secs(10);
/// How long a waiter that stands in no line (it reached no instance) or lost a Redlock split
/// vote waits at most before trying again.
const SPLIT_RETRY: Duration = Duration::from_millis(40);
/// How long a Redlock instance that could not be connected to is left alone.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// How long a line entry counts without being refreshed. A live waiter refreshes its entry
/// every time it asks again, at least once per `SAFETY_NET`; an entry whose waiter is gone but
/// whose connection Redis still believes open (its host crashed: TCP keepalive takes minutes)
/// holds the line no longer than this.
const ENTRY_TTL: Duration = Duration::from_secs(30);

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
///   was long ago). The first in line also sets its own timer at the holder's expiry, for a
///   holder that vanished. One release wakes one waiter.
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
/// after a random delay.
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
    inner: Arc<Inner>,
}

impl RedisBackend {
    /// Connects to the instance(s) of `config`.
    ///
    /// A single instance must answer now. Redlock needs a majority now; the other
    /// instances are connected to when they come up.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let client_id = format!("{:016x}", rand::rng().random::<u64>());
        let waiters = Arc::new(Waiters::default());
        let connecting = config
            .endpoints
            .iter()
            .map(|endpoint| Node::connect(&config, endpoint, &client_id, Arc::clone(&waiters)));
        let outcomes = join_all(connecting).await;
        let mut nodes = Vec::with_capacity(outcomes.len());
        let mut first_error = None;
        for (outcome, endpoint) in outcomes.into_iter().zip(&config.endpoints) {
            match outcome {
                Ok(node) => nodes.push(Slot::Up(node)),
                Err(error) => {
                    tracing::warn!(%endpoint, %error, "Redis instance unreachable");
                    first_error.get_or_insert(error);
                    nodes.push(Slot::Down {
                        retry_at: Instant::now() + RECONNECT_PAUSE,
                    });
                }
            }
        }
        let up = nodes.iter().filter(|n| matches!(n, Slot::Up(_))).count();
        if up < config.quorum() {
            return Err(first_error.unwrap_or_else(|| {
                LockError::connection(config.endpoints[0].to_string(), "no instance answered")
            }));
        }
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                config,
                nodes: nodes.into_iter().map(std::sync::Mutex::new).collect(),
                client_id,
                waiters,
                sequence: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis key that holds the lock `key` under `prefix` (its owner id, expiring with
    /// the lease), for operators and tests that look at or tamper with it.
    pub fn lock_key_name(&self, prefix: &str, key: &LockKey) -> String {
        LockNames::new(&self.inner.config.namespace, prefix, key).lock
    }

    /// The Redis key that holds the fence counter of the lock `key` under `prefix`.
    pub fn fence_key_name(&self, prefix: &str, key: &LockKey) -> String {
        LockNames::new(&self.inner.config.namespace, prefix, key).fence
    }
}

struct Inner {
    config: RedisConfig,
    nodes: Vec<std::sync::Mutex<Slot>>,
    client_id: String,
    waiters: Arc<Waiters>,
    sequence: AtomicU64,
}

/// An instance this client is connected to, or one it could not reach yet.
enum Slot {
    Up(Node),
    /// Not connected; the next attempt is not made before `retry_at`, so an instance that is
    /// down does not slow every call by a connection timeout.
    Down {
        retry_at: Instant,
    },
}

/// The backend's record of one acquisition.
struct RedisRecord {
    names: LockNames,
    owner: String,
}

/// What one attempt at all instances came to.
enum Attempt {
    Granted {
        token: u64,
        valid_until: Instant,
        /// Instances where the lock was granted.
        granted: Vec<bool>,
    },
    Busy {
        /// Instances where this waiter now stands in line.
        in_line: Vec<bool>,
        /// When the holder's lease runs out, on instances where this waiter is first.
        first_for: Option<Duration>,
        /// Some instances granted it but not a majority (Redlock): retry soon.
        split: bool,
    },
    Failed(LockError),
}

impl Inner {
    fn fair(&self) -> bool {
        !self.config.redlock
    }

    fn next_id(&self) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}:{sequence}", self.client_id)
    }

    /// Redlock's allowance for clock drift between client and instances.
    fn drift(&self, lease: Duration) -> Duration {
        if self.config.redlock {
            lease.mul_f64(self.config.drift_factor) + Duration::from_millis(2)
        } else {
            Duration::ZERO
        }
    }

    /// The connected instance `index`, connecting now if it was down.
    async fn node(&self, index: usize) -> Result<Node> {
        let endpoint = &self.config.endpoints[index];
        match &*lock(&self.nodes[index]) {
            Slot::Up(node) => return Ok(node.clone()),
            Slot::Down { retry_at } if Instant::now() < *retry_at => {
                return Err(LockError::connection(
                    endpoint.to_string(),
                    "the instance was unreachable a moment ago",
                ));
            }
            Slot::Down { .. } => {}
        }
        let connected = Node::connect(
            &self.config,
            endpoint,
            &self.client_id,
            Arc::clone(&self.waiters),
        )
        .await;
        let mut slot = lock(&self.nodes[index]);
        match connected {
            Ok(node) => {
                // Two callers may have connected at once: keep the first connection.
                if let Slot::Up(existing) = &*slot {
                    return Ok(existing.clone());
                }
                *slot = Slot::Up(node.clone());
                Ok(node)
            }
            Err(error) => {
                *slot = Slot::Down {
                    retry_at: Instant::now() + RECONNECT_PAUSE,
                };
                Err(error)
            }
        }
    }

    /// Runs `call` on every instance at once.
    async fn on_all<'a, T, F, Fut>(&'a self, call: F) -> Vec<Result<T>>
    where
        F: Fn(Node) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let call = &call;
        join_all((0..self.nodes.len()).map(|index| async move {
            match self.node(index).await {
                Ok(node) => call(node).await,
                Err(error) => Err(error),
            }
        }))
        .await
    }

    async fn attempt(
        &self,
        names: &LockNames,
        owner: &str,
        lease: Duration,
        waiter: Option<(&str, Duration, u64)>,
    ) -> Attempt {
        let started = Instant::now();
        let fair = self.fair();
        let replies = self
            .on_all(|node| async move { node.acquire(names, owner, lease, waiter, fair).await })
            .await;
        let quorum = self.config.quorum();
        let mut tokens = vec![None; replies.len()];
        let mut in_line = vec![false; replies.len()];
        let mut first_for: Option<Duration> = None;
        let mut failures = Vec::new();
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(AcquireReply::Granted(token)) => tokens[index] = Some(token),
                Ok(AcquireReply::Waiting { holder_ttl, first }) => {
                    in_line[index] = waiter.is_some();
                    // A lock without expiry (not ours, or tampered with) is freed only by a
                    // release, which wakes us: no timer for it.
                    if let (true, Some(ttl)) = (first, holder_ttl) {
                        first_for = Some(first_for.map_or(ttl, |f| f.min(ttl)));
                    }
                }
                Err(error) => failures.push(error),
            }
        }
        let granted: Vec<bool> = tokens.iter().map(Option::is_some).collect();
        let count = granted.iter().filter(|g| **g).count();
        if count >= quorum {
            let valid_until = started + lease.saturating_sub(self.drift(lease));
            match self.settle_token(names, &tokens).await {
                Ok(token) if Instant::now() < valid_until => {
                    return Attempt::Granted {
                        token,
                        valid_until,
                        granted,
                    }
                }
                Ok(_) => {}
                Err(error) => failures.push(error),
            }
        }
        if count > 0 {
            // Not enough instances (or too late): give back what we got, everywhere.
            self.release_where(names, owner, &granted).await;
        }
        if failures.len() > self.nodes.len() - quorum || (count >= quorum && !failures.is_empty()) {
            return Attempt::Failed(failures.swap_remove(0));
        }
        Attempt::Busy {
            in_line,
            first_for,
            split: count > 0,
        }
    }

    /// The token of a quorum acquisition: the highest counter among the instances that
    /// granted it, after raising the others to it, so the next majority (which shares at least
    /// one instance with this one) issues a greater token.
    async fn settle_token(&self, names: &LockNames, tokens: &[Option<u64>]) -> Result<u64> {
        let highest = tokens.iter().flatten().copied().max().unwrap_or(0);
        let behind: Vec<usize> = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_some_and(|t| t < highest))
            .map(|(i, _)| i)
            .collect();
        if behind.is_empty() {
            return Ok(highest);
        }
        let raised = join_all(behind.iter().map(|&index| async move {
            self.node(index).await?.raise_fence(names, highest).await
        }))
        .await;
        let at_highest = tokens.iter().flatten().filter(|t| **t == highest).count()
            + raised.iter().filter(|r| r.is_ok()).count();
        if at_highest >= self.config.quorum() {
            return Ok(highest);
        }
        Err(raised
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| LockError::protocol("redis", "could not raise the fence counters")))
    }

    async fn release_where(&self, names: &LockNames, owner: &str, which: &[bool]) {
        join_all(which.iter().enumerate().filter(|(_, w)| **w).map(|(index, _)| async move {
            match self.node(index).await {
                Ok(node) => {
                    if let Err(error) = node.release(names, owner, self.fair()).await {
                        tracing::warn!(%error, "could not give back a partial Redlock grant");
                    }
                }
                Err(error) => tracing::warn!(%error, "could not give back a partial Redlock grant"),
            }
        }))
        .await;
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        let redlock = self.inner.config.redlock;
        Capabilities {
            name: if redlock { "redis+redlock" } else { "redis" },
            fifo: !redlock,
            session_lease: false,
            server_wakeup: true,
            min_lease: MIN_LEASE,
            crash_release_bound: Duration::from_millis(if redlock { 500 } else { 200 }),
        }
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        let inner = &self.inner;
        let names = LockNames::new(
            &inner.config.namespace,
            &request.options.prefix,
            request.key,
        );
        let owner = inner.next_id();
        match inner
            .attempt(&names, &owner, request.options.lease, None)
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
        let inner = &self.inner;
        let names = LockNames::new(
            &inner.config.namespace,
            &request.options.prefix,
            request.key,
        );
        let lease = request.options.lease;
        let mut place = PlaceInLine::new(Arc::clone(inner), names.clone(), lease);
        // On a fair line the waiter's id is also the owner id a release hands the lock over
        // under (and a waiter that leaves gives back a lock handed to it meanwhile). Redlock
        // waiters stay in line while they hold the lock, so they own it under another id.
        let owner = if inner.fair() {
            place.id.clone()
        } else {
            inner.next_id()
        };
        // A free lock is taken without joining a line or listening for wake-ups, so the
        // uncontended path costs one script call; a waiter joins the line from its next call
        // on (first come, first served counts from the join).
        match inner.attempt(&names, &owner, lease, None).await {
            Attempt::Granted {
                token, valid_until, ..
            } => return Ok(acquired(names, owner, token, valid_until)),
            Attempt::Failed(error) if !error.is_transient() => return Err(error),
            Attempt::Busy { .. } | Attempt::Failed(_) => {}
        }
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut failing_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let remaining = request.deadline.map(|d| d.saturating_duration_since(now));
            if remaining.is_some_and(|r| r.is_zero()) {
                return Err(LockError::Timeout {
                    key: request.key.to_string(),
                    waited: request.options.wait.unwrap_or_default(),
                });
            }
            // Our entry counts until our wait limit, but never longer than `ENTRY_TTL`: we ask
            // again (and so refresh it) well before that.
            let entry_ttl = remaining.unwrap_or(ENTRY_TTL).min(ENTRY_TTL);
            let mut deaf = false;
            let attempt = match place.listen().await {
                Ok(()) => {
                    // From the moment the request may reach a server we may stand in its
                    // line, even if we never see the answer (cancelled, connection lost).
                    let number = place.next_attempt();
                    let sent = Instant::now();
                    let waiter = Some((place.id.as_str(), entry_ttl, number));
                    let attempt = inner.attempt(&names, &owner, lease, waiter).await;
                    (attempt, sent)
                }
                Err(error) => (Attempt::Failed(error), Instant::now()),
            };
            let (attempt, sent) = attempt;
            let nap = match attempt {
                Attempt::Granted {
                    token,
                    valid_until,
                    granted,
                } => {
                    if inner.fair() {
                        // A fair grant took us out of the line; unfair (Redlock) waiters
                        // leave every line when `place` drops.
                        place.left(&granted);
                    }
                    return Ok(acquired(names, owner, token, valid_until));
                }
                Attempt::Busy {
                    in_line,
                    first_for,
                    split,
                } => {
                    failing_since = None;
                    if in_line.iter().any(|l| *l) {
                        request.queued();
                    }
                    if split || !in_line.iter().any(|l| *l) {
                        deaf = split;
                        jitter(SPLIT_RETRY)
                    } else if let Some(ttl) = first_for {
                        // First in line: look again when the holder's lease runs out, in
                        // case it vanished without releasing (and refresh the entry anyway).
                        (ttl + Duration::from_millis(1)).min(jitter(SAFETY_NET))
                    } else {
                        jitter(SAFETY_NET)
                    }
                }
                Attempt::Failed(error) if error.is_transient() => {
                    let since = *failing_since.get_or_insert(now);
                    if now.duration_since(since) >= inner.config.retry_limit
                        || request
                            .deadline
                            .is_some_and(|d| now + Duration::from_millis(20) >= d)
                    {
                        return Err(error);
                    }
                    tracing::debug!(%error, "acquire failed; retrying");
                    deaf = true;
                    backoff.next_delay()
                }
                Attempt::Failed(error) => return Err(error),
            };
            let mut wake_at = Instant::now() + nap;
            if let Some(deadline) = request.deadline {
                wake_at = wake_at.min(deadline);
            }
            if deaf {
                // After a split vote or a failure, wait out the jittered delay: our own give-back
                // may have woken us, and retrying at once would split the vote again.
                tokio::time::sleep_until(wake_at).await;
                continue;
            }
            let Some(token) = place.wait(wake_at).await else {
                continue;
            };
            // Handed over by a release (fair line, one instance) in answer to the request we
            // sent at `sent` (the grant names it): the lock was set after the server answered
            // that request, so the lease runs at least until `sent + lease`. If that is too
            // close (or past: we may have been paused), confirm with the script.
            let valid_until = sent + lease;
            if inner.fair() && valid_until > Instant::now() + lease / 2 {
                place.left(&vec![true; inner.nodes.len()]);
                return Ok(acquired(names, owner, token, valid_until));
            }
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant> {
        let inner = &self.inner;
        let record = record(lease)?;
        let started = Instant::now();
        let replies = inner
            .on_all(|node| async move { node.extend(&record.names, &record.owner, ttl).await })
            .await;
        let extended = replies.iter().filter(|r| matches!(r, Ok(true))).count();
        let refused = replies.iter().filter(|r| matches!(r, Ok(false))).count();
        if extended >= inner.config.quorum() {
            return Ok(started + ttl.saturating_sub(inner.drift(ttl)));
        }
        // Never give anything back here: a failed extend leaves the lock as it was.
        if refused > inner.nodes.len() - inner.config.quorum() {
            return Err(not_held(lease));
        }
        Err(first_error(replies).unwrap_or_else(|| not_held(lease)))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let record = record(lease)?;
        let fair = self.inner.fair();
        let replies = self
            .inner
            .on_all(|node| async move { node.release(&record.names, &record.owner, fair).await })
            .await;
        if replies.iter().any(|r| matches!(r, Ok(true))) {
            return Ok(());
        }
        if replies.iter().all(|r| matches!(r, Ok(false))) {
            return Err(not_held(lease));
        }
        // Some instances answered "not ours" and the others could not be asked: if it was
        // still ours there, it runs out with its lease.
        Err(first_error(replies).unwrap_or_else(|| not_held(lease)))
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        let inner = &self.inner;
        let mut batch = Vec::with_capacity(leases.len());
        for lease in leases {
            let record = record(lease)?;
            batch.push((&record.names, record.owner.as_str(), lease.ttl()));
        }
        let started = Instant::now();
        let batch = &batch;
        let replies = inner
            .on_all(|node| async move { node.renew(batch).await })
            .await;
        let quorum = inner.config.quorum();
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
            } else if refused > inner.nodes.len() - quorum {
                renewals.push(Renewal::Lost(LossReason::NotOwner));
            } else {
                // Undecided: let the keepalive retry, and lose it on its own clock if this
                // lasts a whole lease.
                return Err(first_error(replies)
                    .unwrap_or_else(|| LockError::protocol("redis", "renewal undecided")));
            }
        }
        Ok(renewals)
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.inspect_lock(key, options).await
    }

    async fn ping(&self) -> Result<Duration> {
        self.ping_all().await
    }
}

impl RedisBackend {
    async fn inspect_lock(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        let inner = &self.inner;
        let names = LockNames::new(&inner.config.namespace, &options.prefix, key);
        let names = &names;
        let replies = inner
            .on_all(|node| async move { node.inspect(names).await })
            .await;
        let answered: Vec<_> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
        if answered.len() < inner.config.quorum() {
            return Err(first_error(replies).unwrap_or_else(|| {
                LockError::protocol("redis", "too few instances answered the inspection")
            }));
        }
        let holding: Vec<_> = answered.iter().filter(|i| i.holder_ttl.is_some()).collect();
        let held = holding.len() >= inner.config.quorum();
        Ok(LockInfo {
            held,
            fencing_token: held
                .then(|| holding.iter().map(|i| i.fence).max())
                .flatten()
                .map(FencingToken::new),
            remaining_lease: held
                .then(|| holding.iter().filter_map(|i| i.holder_ttl).min())
                .flatten(),
            waiters: answered.iter().map(|i| i.waiters).max(),
        })
    }

    async fn ping_all(&self) -> Result<Duration> {
        let replies = self
            .inner
            .on_all(|node| async move { node.ping().await })
            .await;
        let mut times: Vec<Duration> = replies
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        if times.len() < self.inner.config.quorum() {
            return Err(first_error(replies)
                .unwrap_or_else(|| LockError::protocol("redis", "too few instances answered")));
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

/// A waiter's place in the lines of one lock: its id, its wake-ups, the number of its latest
/// request, where it listens and where it may stand in line. Dropping it (the acquire returned
/// or was cancelled at any await point) leaves every line it may stand in, handing the turn
/// on if it was first (P7), and stops listening, which makes any entry left behind (a leave
/// that could not reach the server) dead at once.
struct PlaceInLine {
    inner: Arc<Inner>,
    names: LockNames,
    id: String,
    wakes: mpsc::UnboundedReceiver<Wake>,
    /// The number of the latest request; grants name the request they answer.
    attempt: u64,
    listening: Vec<bool>,
    in_line: Vec<bool>,
}

impl PlaceInLine {
    fn new(inner: Arc<Inner>, names: LockNames, lease: Duration) -> Self {
        // `<client>:<seq>:<lease ms>`: scripts read the channel and the lease from it.
        let id = format!("{}:{}", inner.next_id(), lease.as_millis().max(1));
        let wakes = inner.waiters.register(&id);
        let count = inner.nodes.len();
        PlaceInLine {
            inner,
            names,
            id,
            wakes,
            attempt: 0,
            listening: vec![false; count],
            in_line: vec![false; count],
        }
    }

    /// Listens for this waiter's wake-ups on every instance not listened on yet; enough when
    /// a quorum listens (an instance where it does not counts its entry dead, as if it were
    /// down).
    async fn listen(&mut self) -> Result<()> {
        let (inner, id) = (&self.inner, &self.id);
        let missing: Vec<usize> = (0..self.listening.len())
            .filter(|&index| !self.listening[index])
            .collect();
        let outcomes = join_all(
            missing
                .iter()
                .map(|&index| async move { inner.node(index).await?.listen(id).await }),
        )
        .await;
        let mut first_error = None;
        for (index, outcome) in missing.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => self.listening[index] = true,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let listening = self.listening.iter().filter(|l| **l).count();
        match first_error {
            Some(error) if listening < self.inner.config.quorum() => Err(error),
            _ => Ok(()),
        }
    }

    /// Numbers the next request, which may put this waiter in line on every instance.
    fn next_attempt(&mut self) -> u64 {
        self.attempt += 1;
        self.in_line = vec![true; self.in_line.len()];
        self.attempt
    }

    fn left(&mut self, where_: &[bool]) {
        for (mine, left) in self.in_line.iter_mut().zip(where_) {
            if *left {
                *mine = false;
            }
        }
    }

    /// Sleeps until a wake-up message or `until`, whichever comes first; returns the token
    /// if a release handed the lock over to this waiter in answer to its latest request.
    async fn wait(&mut self, mut until: Instant) -> Option<u64> {
        loop {
            tokio::select! {
                biased;
                wake = self.wakes.recv() => match wake {
                    Some(Wake::Granted { token, attempt }) if attempt == self.attempt => {
                        return Some(token)
                    }
                    Some(Wake::Granted { attempt, .. }) => {
                        // Left over from an earlier request: that grant ran out or was
                        // confirmed before our latest request, which found the lock not ours.
                        tracing::debug!(attempt, latest = self.attempt, "ignoring a stale grant");
                    }
                    Some(Wake::First(Some(ttl))) => {
                        // First in line now: look again when the new holder's lease would
                        // end, unless its release comes first.
                        until = until.min(Instant::now() + ttl + Duration::from_millis(1));
                    }
                    Some(Wake::First(None)) => {}
                    Some(Wake::Released | Wake::Reconnected) | None => return None,
                },
                _ = tokio::time::sleep_until(until) => return None,
            }
        }
    }
}

impl Drop for PlaceInLine {
    fn drop(&mut self) {
        self.inner.waiters.unregister(&self.id);
        if !self.in_line.iter().chain(&self.listening).any(|l| *l) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (inner, names, id) = (Arc::clone(&self.inner), self.names.clone(), self.id.clone());
        let in_line = std::mem::take(&mut self.in_line);
        let listening = std::mem::take(&mut self.listening);
        runtime.spawn(async move {
            join_all((0..in_line.len()).map(|index| {
                let (inner, names, id) = (&inner, &names, &id);
                let (in_line, listening) = (in_line[index], listening[index]);
                async move {
                    if !in_line && !listening {
                        return;
                    }
                    let node = match inner.node(index).await {
                        Ok(node) => node,
                        Err(error) => {
                            // The connection is gone, and with it what listened: our entries
                            // there are dead already.
                            tracing::debug!(%error, "could not leave a waiting line");
                            return;
                        }
                    };
                    if in_line {
                        if let Err(error) = node.leave(names, id, inner.fair()).await {
                            // Stopping to listen below makes the entry dead all the same.
                            tracing::debug!(%error, "could not leave a waiting line");
                        }
                    }
                    if listening {
                        if let Err(error) = node.stop_listening(id).await {
                            tracing::debug!(%error, "could not stop listening for a waiter");
                        }
                    }
                }
            }))
            .await;
        });
    }
}

/// Locks a slot, recovering from poisoning: a slot is replaced whole, never left half-set.
fn lock(slot: &std::sync::Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn acquired(names: LockNames, owner: String, token: u64, valid_until: Instant) -> Acquired {
    Acquired {
        token: FencingToken::new(token),
        valid_until,
        record: Box::new(RedisRecord { names, owner }),
    }
}

fn record(lease: &Lease) -> Result<&RedisRecord> {
    lease
        .record::<RedisRecord>()
        .ok_or_else(|| LockError::protocol("redis", "the lease was not taken by a Redis backend"))
}

fn not_held(lease: &Lease) -> LockError {
    LockError::NotHeld {
        key: lease.key().to_string(),
    }
}

fn first_error<T>(replies: Vec<Result<T>>) -> Option<LockError> {
    replies.into_iter().find_map(Result::err)
}

/// A random delay between half of `max` and `max`, so clients retrying together spread out.
fn jitter(max: Duration) -> Duration {
    Backoff::new(max, max).next_delay()
}
