//! The Redis lock backend: one instance, or a Redlock quorum of independent instances.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::support::{lock, spawn_clean_up};
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

/// How long a waiter sleeps at most before looking again when no message comes (and the
/// holder's lease does not run out sooner): only a safety net for lost messages, since
/// releases and first-in-line changes are pushed by the server.
const SAFETY_NET: Duration = Duration::from_secs(10);
/// How long a waiter that stands in no line (it reached no instance) or lost a Redlock split
/// vote waits at most before trying again.
const SPLIT_RETRY: Duration = Duration::from_millis(40);
/// The least time the last instances of a Redlock call get to answer after a majority did
/// (otherwise as long as the majority took): enough for a healthy instance on a busy machine,
/// short enough that a frozen one costs the caller nothing it would notice.
const STRAGGLER_GRACE: Duration = Duration::from_millis(20);
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
///   was long ago). Every waiter in line also sets its own timer at the holder's expiry,
///   for a holder that vanished: the waiters ahead of it may have vanished too (killed), and
///   nothing tells Redis's line that a subscriber left, so the first one to learn that it is
///   now first must be the live one. One release wakes one waiter; a holder's expiry wakes
///   every waiter once (one script call each).
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
        let count = config.endpoints.len();
        let quorum = config.quorum();
        let inner = Arc::new_cyclic(|this| Inner {
            nodes: (0..count)
                .map(|_| std::sync::Mutex::new(Slot::Connecting))
                .collect(),
            config,
            client_id,
            waiters: Arc::new(Waiters::default()),
            sequence: AtomicU64::new(0),
            this: this.clone(),
        });
        // Each instance connects in its own task and a majority is enough: a frozen instance
        // accepts TCP connections but never answers, and must not hold up the others. The
        // rest get as long again as the majority took to join now (a client's first calls
        // should find every healthy instance), and join later otherwise.
        let started = Instant::now();
        let (report, mut reports) = mpsc::unbounded_channel();
        for index in 0..count {
            inner.spawn_connect(index, Some(report.clone()));
        }
        drop(report);
        let (mut up, mut down, mut first_error) = (0, 0, None);
        let mut grace_until: Option<Instant> = None;
        loop {
            let next = match grace_until {
                // Out of time: the rest join later.
                Some(until) => tokio::time::timeout_at(until, reports.recv())
                    .await
                    .unwrap_or_default(),
                None => reports.recv().await,
            };
            let Some(outcome) = next else { break };
            match outcome {
                Ok(()) => up += 1,
                Err(error) => {
                    down += 1;
                    first_error.get_or_insert(error);
                }
            }
            if up >= quorum && grace_until.is_none() {
                let now = Instant::now();
                grace_until = Some(now + now.duration_since(started).max(STRAGGLER_GRACE));
            }
            if down > count - quorum {
                break;
            }
        }
        if up >= quorum {
            return Ok(RedisBackend { inner });
        }
        Err(first_error.unwrap_or_else(|| {
            LockError::connection(
                inner.config.endpoints[0].to_string(),
                "no instance answered",
            )
        }))
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
    /// This client itself, for the tasks it starts (they must not keep it alive).
    this: Weak<Inner>,
}

/// An instance this client is connected to, or one it could not reach yet.
enum Slot {
    Up(Node),
    /// A connection attempt runs in the background.
    Connecting,
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
        /// When to look again at the latest: the holder's lease runs out (or a head that has
        /// not taken the free lock runs out of entry time), on the first instance to say so.
        look_again: Option<Duration>,
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

    /// The connected instance `index`. One that is not connected is an error at once (a
    /// connection attempt then starts in the background, at most once per
    /// [`RECONNECT_PAUSE`]): a call never waits for a connection, which an instance that is
    /// frozen would never complete.
    async fn node(&self, index: usize) -> Result<Node> {
        self.node_now(index)
    }

    fn node_now(&self, index: usize) -> Result<Node> {
        let endpoint = &self.config.endpoints[index];
        let mut slot = lock(&self.nodes[index]);
        let why = match &*slot {
            Slot::Up(node) => return Ok(node.clone()),
            Slot::Connecting => "not connected yet",
            Slot::Down { retry_at } if Instant::now() < *retry_at => {
                "the instance was unreachable a moment ago"
            }
            Slot::Down { .. } => {
                *slot = Slot::Connecting;
                drop(slot);
                self.spawn_connect(index, None);
                "reconnecting"
            }
        };
        Err(LockError::connection(endpoint.to_string(), why))
    }

    /// Connects to instance `index` in a task of its own and fills its slot; says how it went
    /// on `report`.
    fn spawn_connect(&self, index: usize, report: Option<mpsc::UnboundedSender<Result<()>>>) {
        let this = self.this.clone();
        let (config, client_id) = (self.config.clone(), self.client_id.clone());
        let waiters = Arc::clone(&self.waiters);
        tokio::spawn(async move {
            let endpoint = &config.endpoints[index];
            let connected = Node::connect(&config, endpoint, &client_id, waiters).await;
            let outcome = match connected {
                Ok(node) => {
                    if let Some(inner) = this.upgrade() {
                        *lock(&inner.nodes[index]) = Slot::Up(node);
                    }
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(%endpoint, %error, "Redis instance unreachable");
                    if let Some(inner) = this.upgrade() {
                        *lock(&inner.nodes[index]) = Slot::Down {
                            retry_at: Instant::now() + RECONNECT_PAUSE,
                        };
                    }
                    Err(error)
                }
            };
            if let Some(report) = report {
                let _ = report.send(outcome);
            }
        });
    }

    /// Runs `call` on the instances in `which` (all if `None`), each in a task of its own, and
    /// returns the replies (`None`: no answer yet) as soon as one of these holds:
    /// * `settled` says the outcome can no longer change,
    /// * every instance asked has answered,
    /// * a majority has answered (not with an error) and the others had as long again (at least
    ///   [`STRAGGLER_GRACE`]) to follow: an instance that is frozen or far slower than the
    ///   rest must not hold up the quorum,
    /// * `deadline` passed.
    ///
    /// Calls still running go on in the background (bounded by the connection's response
    /// timeout), so a command sent to a slow instance still reaches it, in order with the
    /// commands sent there before and after.
    async fn on_quorum<T, F, Fut>(
        &self,
        which: Option<&[bool]>,
        deadline: Option<Instant>,
        call: F,
        settled: impl Fn(&[Option<Result<T>>]) -> bool,
    ) -> Vec<Option<Result<T>>>
    where
        F: Fn(Node) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let count = self.nodes.len();
        let asked: Vec<bool> = (0..count)
            .map(|index| which.is_none_or(|w| w[index]))
            .collect();
        let mut replies: Vec<Option<Result<T>>> = (0..count).map(|_| None).collect();
        if count == 1 {
            // One instance: nothing to wait for in parallel, and no task to pay for.
            if asked[0] {
                replies[0] = Some(match self.node_now(0) {
                    Ok(node) => call(node).await,
                    Err(error) => Err(error),
                });
            }
            return replies;
        }
        let started = Instant::now();
        let bound = self.config.connect_timeout * 2 + self.config.response_timeout;
        let (sender, mut receiver) = mpsc::unbounded_channel();
        for index in (0..count).filter(|i| asked[*i]) {
            match self.node_now(index) {
                Ok(node) => {
                    let endpoint = self.config.endpoints[index].to_string();
                    let no_answer = move |_| Err(LockError::connection(endpoint, "no answer"));
                    let mut call = Box::pin(tokio::time::timeout(bound, call(node)));
                    // Polled once here, the command is on the instance's connection before
                    // this returns: what is sent to one instance reaches it in the order it
                    // was issued (a give-back behind its acquire), however tasks are run.
                    match futures::poll!(call.as_mut()) {
                        Poll::Ready(reply) => {
                            replies[index] = Some(reply.unwrap_or_else(no_answer))
                        }
                        Poll::Pending => {
                            let sender = sender.clone();
                            tokio::spawn(async move {
                                let _ = sender.send((index, call.await.unwrap_or_else(no_answer)));
                            });
                        }
                    }
                }
                Err(error) => replies[index] = Some(Err(error)),
            }
        }
        drop(sender);
        let quorum = self.config.quorum();
        let mut grace_until: Option<Instant> = None;
        loop {
            let answered = replies.iter().filter(|r| r.is_some()).count();
            let outstanding = asked.iter().filter(|a| **a).count() - answered;
            if outstanding == 0 || settled(&replies) {
                return replies;
            }
            // Errors come at once from instances that are not connected: only real answers
            // say how long the healthy instances take.
            let ok = replies.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
            if ok >= quorum && grace_until.is_none() {
                let now = Instant::now();
                grace_until = Some(now + now.duration_since(started).max(STRAGGLER_GRACE));
            }
            let until = match (grace_until, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next = match until {
                Some(until) => match tokio::time::timeout_at(until, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => return replies,
                },
                None => receiver.recv().await,
            };
            match next {
                Some((index, reply)) => replies[index] = Some(reply),
                None => return replies,
            }
        }
    }

    /// The replies of [`Inner::on_quorum`], an instance that did not answer in time as a
    /// connection error.
    fn answers<T>(&self, replies: Vec<Option<Result<T>>>) -> Vec<Result<T>> {
        replies
            .into_iter()
            .zip(&self.config.endpoints)
            .map(|(reply, endpoint)| {
                reply.unwrap_or_else(|| {
                    Err(LockError::connection(
                        endpoint.to_string(),
                        "no answer in time",
                    ))
                })
            })
            .collect()
    }

    async fn attempt(
        &self,
        names: &LockNames,
        owner: &str,
        lease: Duration,
        waiter: Option<(&str, Duration, u64)>,
    ) -> Attempt {
        let started = Instant::now();
        // Only the time until a majority answered counts against the lease, and no answer
        // after the lease (less drift) could still make a valid grant.
        let valid_until = started + lease.saturating_sub(self.drift(lease));
        let fair = self.fair();
        let quorum = self.config.quorum();
        let count = self.nodes.len();
        let call = {
            let (names, owner) = (names.clone(), owner.to_owned());
            let waiter = waiter.map(|(id, wait, number)| (id.to_owned(), wait, number));
            move |node: Node| {
                let (names, owner, waiter) = (names.clone(), owner.clone(), waiter.clone());
                async move {
                    let waiter = waiter
                        .as_ref()
                        .map(|(id, wait, number)| (id.as_str(), *wait, *number));
                    node.acquire(&names, &owner, lease, waiter, fair).await
                }
            }
        };
        let replies = self
            .on_quorum(None, Some(valid_until), call, |replies| {
                let granted = replies
                    .iter()
                    .filter(|r| matches!(r, Some(Ok(AcquireReply::Granted(_)))))
                    .count();
                let answered = replies.iter().filter(|r| r.is_some()).count();
                let ok = replies.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
                // Out of reach of a majority: settled once a majority has really answered
                // (else the instances still to answer decide between busy and failed).
                granted >= quorum || (ok >= quorum && count - (answered - granted) < quorum)
            })
            .await;
        let mut tokens = vec![None; replies.len()];
        let mut in_line = vec![false; replies.len()];
        // Instances that have not answered: they may still grant the lock or put the waiter
        // in line when they do.
        let pending: Vec<bool> = replies.iter().map(Option::is_none).collect();
        let mut look_again: Option<Duration> = None;
        let mut failures = Vec::new();
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                Some(Ok(AcquireReply::Granted(token))) => tokens[index] = Some(token),
                Some(Ok(AcquireReply::Waiting {
                    holder_ttl,
                    look_again: timer,
                })) => {
                    in_line[index] = waiter.is_some();
                    // A lock without expiry (not ours, or tampered with) is freed only by a
                    // release, which wakes us: no timer for it.
                    if let (true, Some(ttl)) = (timer, holder_ttl) {
                        look_again = Some(look_again.map_or(ttl, |f| f.min(ttl)));
                    }
                }
                Some(Err(error)) => failures.push(error),
                None => in_line[index] = waiter.is_some(),
            }
        }
        let granted: Vec<bool> = tokens.iter().map(Option::is_some).collect();
        let granted_count = granted.iter().filter(|g| **g).count();
        if granted_count >= quorum {
            // A late grant on an instance still pending is ours too: renewal and release
            // treat it like the others, and its lease bounds it.
            let settled =
                tokio::time::timeout_at(valid_until, self.settle_token(names, &tokens)).await;
            match settled {
                Ok(Ok(token)) if Instant::now() < valid_until => {
                    return Attempt::Granted {
                        token,
                        valid_until,
                        granted,
                    }
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(error)) => failures.push(error),
            }
        }
        let unanswered = pending.iter().filter(|p| **p).count();
        if granted_count > 0 || unanswered > 0 {
            // Not enough instances (or too late): give back what we got, and what an instance
            // that has not answered yet may grant us when it does (the release is queued
            // behind the acquire on the same connection).
            let give_back: Vec<bool> = granted
                .iter()
                .zip(&pending)
                .map(|(g, p)| *g || *p)
                .collect();
            self.release_where(names, owner, &give_back, &granted).await;
        }
        if failures.len() + unanswered > count - quorum
            || (granted_count >= quorum && !failures.is_empty())
        {
            let error = failures.into_iter().next().unwrap_or_else(|| {
                LockError::connection(
                    self.config.endpoints[pending.iter().position(|p| *p).unwrap_or(0)].to_string(),
                    "no answer in time",
                )
            });
            return Attempt::Failed(error);
        }
        Attempt::Busy {
            in_line,
            look_again,
            split: granted_count > 0,
        }
    }

    /// The token of a quorum acquisition: the highest counter among the instances that
    /// granted it, after raising the others to it, so the next majority (which shares at least
    /// one instance with this one) issues a greater token.
    async fn settle_token(&self, names: &LockNames, tokens: &[Option<u64>]) -> Result<u64> {
        let highest = tokens.iter().flatten().copied().max().unwrap_or(0);
        let behind: Vec<bool> = tokens
            .iter()
            .map(|t| t.is_some_and(|t| t < highest))
            .collect();
        if !behind.contains(&true) {
            return Ok(highest);
        }
        let already = tokens.iter().flatten().filter(|t| **t == highest).count();
        let quorum = self.config.quorum();
        let names = names.clone();
        let call = move |node: Node| {
            let names = names.clone();
            async move { node.raise_fence(&names, highest).await }
        };
        // Done once a majority is at the highest value; the other raises go on in the
        // background (an instance that froze since it granted must not hold the lock up).
        let raised = self
            .on_quorum(Some(&behind), None, call, |replies| {
                already + replies.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= quorum
            })
            .await;
        let at_highest = already + raised.iter().filter(|r| matches!(r, Some(Ok(())))).count();
        if at_highest >= quorum {
            return Ok(highest);
        }
        Err(raised
            .into_iter()
            .flatten()
            .find_map(Result::err)
            .unwrap_or_else(|| LockError::protocol("redis", "could not raise the fence counters")))
    }

    /// Releases the lock on the instances in `which`, waiting only for those in `wait_for`
    /// (the others may be slow or frozen: their release goes on in the background).
    async fn release_where(
        &self,
        names: &LockNames,
        owner: &str,
        which: &[bool],
        wait_for: &[bool],
    ) {
        let fair = self.fair();
        let (names, owner) = (names.clone(), owner.to_owned());
        let call = move |node: Node| {
            let (names, owner) = (names.clone(), owner.clone());
            async move { node.release(&names, &owner, fair).await }
        };
        let deadline = Instant::now() + self.config.response_timeout;
        let replies = self
            .on_quorum(Some(which), Some(deadline), call, |replies| {
                replies
                    .iter()
                    .zip(wait_for)
                    .all(|(r, w)| !*w || r.is_some())
            })
            .await;
        for error in replies.into_iter().flatten().filter_map(Result::err) {
            tracing::warn!(%error, "could not give back a partial Redlock grant");
        }
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
        // waiters stay in line while they hold the lock, so they own it under another id, a
        // new one for every attempt: a give-back of a failed attempt that reaches an instance
        // late (its connection was being re-established) must not delete what the next
        // attempt was granted there.
        let owner_for_attempt = |place: &mut PlaceInLine| {
            let owner = if inner.fair() {
                place.id.clone()
            } else {
                inner.next_id()
            };
            place.owner.clone_from(&owner);
            owner
        };
        let mut owner = owner_for_attempt(&mut place);
        // A free lock is taken without joining a line or listening for wake-ups, so the
        // uncontended path costs one script call; a waiter joins the line from its next call
        // on (first come, first served counts from the join).
        place.may_hold = true;
        let tried = inner.attempt(&names, &owner, lease, None).await;
        // Answered: a grant is returned, a partial one was given back; after a failure the
        // request may still be applied.
        place.may_hold = matches!(tried, Attempt::Failed(_));
        match tried {
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
                return Err(request.timeout());
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
                    owner = owner_for_attempt(&mut place);
                    let sent = Instant::now();
                    let waiter = Some((place.id.as_str(), entry_ttl, number));
                    let attempt = inner.attempt(&names, &owner, lease, waiter).await;
                    place.may_hold = matches!(attempt, Attempt::Failed(_));
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
                    look_again,
                    split,
                } => {
                    failing_since = None;
                    if in_line.iter().any(|l| *l) {
                        request.queued();
                    }
                    if split || !in_line.iter().any(|l| *l) {
                        deaf = split;
                        jitter(SPLIT_RETRY)
                    } else if let Some(ttl) = look_again {
                        // Look again when the holder's lease runs out, in case it vanished
                        // without releasing, and so did every waiter ahead of us (and
                        // refresh the entry anyway).
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
        let (quorum, count) = (inner.config.quorum(), inner.nodes.len());
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
        let replies = inner
            .on_quorum(None, deadline, call, |replies| {
                let extended = replies
                    .iter()
                    .filter(|r| matches!(r, Some(Ok(true))))
                    .count();
                let refused = replies
                    .iter()
                    .filter(|r| matches!(r, Some(Ok(false))))
                    .count();
                extended >= quorum || refused > count - quorum
            })
            .await;
        let replies = inner.answers(replies);
        let extended = replies.iter().filter(|r| matches!(r, Ok(true))).count();
        let refused = replies.iter().filter(|r| matches!(r, Ok(false))).count();
        if extended >= inner.config.quorum() {
            return Ok(started + ttl.saturating_sub(inner.drift(ttl)));
        }
        // Never give anything back here: a failed extend leaves the lock as it was.
        if refused > inner.nodes.len() - inner.config.quorum() {
            return Err(lease.not_held());
        }
        Err(first_error(replies).unwrap_or_else(|| lease.not_held()))
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
        if refused > inner.nodes.len() - inner.config.quorum() {
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
                    .map(|(names, owner, ttl)| (names, owner.as_str(), *ttl))
                    .collect();
                node.renew(&locks).await
            }
        };
        let (quorum, count) = (inner.config.quorum(), inner.nodes.len());
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
        let call = move |node: Node| {
            let names = names.clone();
            async move { node.inspect(&names).await }
        };
        let replies = inner.on_quorum(None, None, call, |_| false).await;
        let replies = inner.answers(replies);
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
            // The holder's token is the value a majority was raised to; an instance that
            // granted after the majority settled may have issued a higher one of its own
            // (tokens follow each instance's clock), so the quorum-th highest is the token.
            fencing_token: held
                .then(|| {
                    let mut fences: Vec<u64> = holding.iter().map(|i| i.fence).collect();
                    fences.sort_unstable_by(|a, b| b.cmp(a));
                    fences.get(inner.config.quorum() - 1).copied()
                })
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
    /// Instances that confirmed they route this waiter's wake-ups to us.
    listening: Vec<bool>,
    /// Instances asked to (the answer may still come): where `Drop` stops listening.
    asked_to_listen: Vec<bool>,
    in_line: Vec<bool>,
    /// The owner id requests take the lock under.
    owner: String,
    /// A request is on its way: it may still grant the lock under `owner` (on any instance)
    /// after this waiter is gone, so `Drop` gives it back.
    may_hold: bool,
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
            asked_to_listen: vec![false; count],
            in_line: vec![false; count],
            owner: String::new(),
            may_hold: false,
        }
    }

    /// Listens for this waiter's wake-ups on every instance not listened on yet; enough when
    /// a quorum listens (an instance where it does not counts its entry dead, as if it were
    /// down). Like every Redlock call, it goes on with the majority that answers.
    async fn listen(&mut self) -> Result<()> {
        let quorum = self.inner.config.quorum();
        let already = self.listening.iter().filter(|l| **l).count();
        if already >= quorum {
            // Enough: an instance that did not answer (down, frozen) is not asked again, so
            // it cannot hold up every request.
            return Ok(());
        }
        let missing: Vec<bool> = self.listening.iter().map(|l| !l).collect();
        for (asked, missing) in self.asked_to_listen.iter_mut().zip(&missing) {
            *asked |= *missing;
        }
        let id = self.id.clone();
        let call = move |node: Node| {
            let id = id.clone();
            async move { node.listen(&id).await }
        };
        let replies = self
            .inner
            .on_quorum(Some(&missing), None, call, |replies| {
                already + replies.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= quorum
            })
            .await;
        let mut first_error = None;
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                Some(Ok(())) => self.listening[index] = true,
                Some(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                // Still on its way: asked again at the next request.
                None => {}
            }
        }
        let listening = self.listening.iter().filter(|l| **l).count();
        match first_error {
            Some(error) if listening < quorum => Err(error),
            None if listening < quorum => Err(LockError::connection(
                self.inner.config.endpoints[0].to_string(),
                "too few instances answered in time",
            )),
            _ => Ok(()),
        }
    }

    /// Numbers the next request, which may put this waiter in line on every instance, or
    /// grant it the lock there.
    fn next_attempt(&mut self) -> u64 {
        self.attempt += 1;
        self.in_line = vec![true; self.in_line.len()];
        self.may_hold = true;
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
        let may_hold = self.may_hold;
        if !may_hold && !self.in_line.iter().chain(&self.asked_to_listen).any(|l| *l) {
            return;
        }
        let (inner, names, id) = (Arc::clone(&self.inner), self.names.clone(), self.id.clone());
        let owner = std::mem::take(&mut self.owner);
        let in_line = std::mem::take(&mut self.in_line);
        let listening = std::mem::take(&mut self.asked_to_listen);
        // Without a runtime nothing can be sent: the entries die with our listening, and a
        // grant with its lease.
        spawn_clean_up(async move {
            join_all((0..in_line.len()).map(|index| {
                let (inner, names, id, owner) = (&inner, &names, &id, &owner);
                let (in_line, listening) = (in_line[index], listening[index]);
                async move {
                    if !may_hold && !in_line && !listening {
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
                    // Sent after the request on the same connection, so it runs after it
                    // on the server.
                    if may_hold && !owner.is_empty() {
                        if let Err(error) = node.release(names, owner, inner.fair()).await {
                            // The lease bounds a grant we could not give back.
                            tracing::debug!(%error, "could not give back a cancelled grant");
                        }
                    }
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

fn acquired(names: LockNames, owner: String, token: u64, valid_until: Instant) -> Acquired {
    Acquired {
        token: FencingToken::new(token),
        valid_until,
        record: Box::new(RedisRecord { names, owner }),
    }
}

fn record(lease: &Lease) -> Result<&RedisRecord> {
    lease.record_of::<RedisRecord>("redis")
}

fn first_error<T>(replies: Vec<Result<T>>) -> Option<LockError> {
    replies.into_iter().find_map(Result::err)
}

/// A random delay between half of `max` and `max`, so clients retrying together spread out.
fn jitter(max: Duration) -> Duration {
    Backoff::new(max, max).next_delay()
}
