//! The client's connections to its Redis instances: one slot per instance, filled by a
//! connection made in the background and made again (at most once per [`RECONNECT_PAUSE`])
//! when it is lost; and the ids the client gives owners and waiters.
//!
//! Unlike ZooKeeper's and etcd's, this session is not the lease: each lock's lease is its own
//! key's expiry, renewed by the batched renewal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dlock_core::support::lock;
use dlock_core::{LockError, Result};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::node::{Node, Waiters};

/// The least time the last instances of a Redlock call get to answer after a majority did
/// (otherwise as long as the majority took): enough for a healthy instance on a busy machine,
/// short enough that a frozen one costs the caller nothing it would notice.
pub(crate) const STRAGGLER_GRACE: Duration = Duration::from_millis(20);

/// What every clone of a [`RedisBackend`](crate::RedisBackend) shares: the configuration, a
/// connection per instance, and the routing of wake-up messages to this client's waiters.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    nodes: Vec<Mutex<Slot>>,
    pub(crate) client_id: String,
    pub(crate) waiters: Arc<Waiters>,
    sequence: AtomicU64,
    /// How many times each slot was filled: a waiter that listened on an earlier connection
    /// of the slot must listen again on the new one.
    generations: Vec<AtomicU64>,
    /// When the sentinels were last asked for the primary because it failed a call.
    last_suspicion: Mutex<Option<Instant>>,
    /// An instance connected that does not wake waiters (the standard layout on a server
    /// without keyspace events): this client's waiters and watchers poll.
    polls: AtomicBool,
    /// This client itself, for the tasks it starts (they must not keep it alive).
    this: Weak<Shared>,
}

impl Shared {
    /// Connects to the instance(s) of `config`.
    ///
    /// A single instance must answer now. Redlock needs a majority now; the other
    /// instances are connected to when they come up.
    pub(crate) async fn connect(config: RedisConfig) -> Result<Arc<Shared>> {
        config.validate()?;
        let client_id = format!("{:016x}", rand::rng().random::<u64>());
        let count = config.instances();
        let quorum = config.quorum();
        let shared = Arc::new_cyclic(|this| Shared {
            nodes: (0..count).map(|_| Mutex::new(Slot::Connecting)).collect(),
            generations: (0..count).map(|_| AtomicU64::new(0)).collect(),
            last_suspicion: Mutex::new(None),
            polls: AtomicBool::new(false),
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
            shared.spawn_connect(index, Some(report.clone()));
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
            if shared.config.sentinel_master.is_some() {
                shared.watch_sentinels();
            }
            return Ok(shared);
        }
        Err(first_error.unwrap_or_else(|| {
            LockError::connection(
                shared.config.endpoints[0].to_string(),
                "no instance answered",
            )
        }))
    }

    /// How many instances this client talks to.
    pub(crate) fn instances(&self) -> usize {
        self.nodes.len()
    }

    /// Whether lines are first come, first served: on a single instance, where a release
    /// hands the lock to the first live waiter (Redlock has no order among waiters, the
    /// standard layout no line at all).
    pub(crate) fn fair(&self) -> bool {
        !self.config.redlock && self.config.layout.has_line()
    }

    /// Whether the server wakes this client's waiters and watchers (a release, an expiry, an
    /// owner update), so that their timers are only safety nets: always in dlock's layout;
    /// in the standard layout while every instance connected so far publishes keyspace
    /// events (read when each connects), else they poll ([`Shared::nap`]).
    pub(crate) fn server_wakeup(&self) -> bool {
        !self.polls.load(Ordering::Acquire)
    }

    /// How long a waiter or watcher sleeps at most before looking again when no message
    /// comes: `safety_net` where the server wakes it, the next delay of its `polling` (the
    /// core's backoff, from [`POLL_FIRST`] up to [`POLL_MAX`]) where it does not.
    pub(crate) fn nap(&self, safety_net: Duration, polling: &mut dlock_core::Backoff) -> Duration {
        if self.server_wakeup() {
            safety_net
        } else {
            polling.next_delay()
        }
    }

    /// How many connections slot `index` has had; changes when it is connected anew.
    pub(crate) fn generation(&self, index: usize) -> u64 {
        self.generations[index].load(Ordering::Acquire)
    }

    /// Behind Sentinel: the primary failed a call (no connection, or `READONLY`: demoted).
    /// Asks the sentinels (at most once per [`SUSPICION_PAUSE`]) and, if they name another
    /// instance, connects to it; the waiters are told to look again and listen anew there.
    /// Until the failover is complete the sentinels still name the old primary, so calls
    /// keep failing (transiently) and asking.
    pub(crate) fn suspect_primary(&self, index: usize) {
        let Some(master) = self.config.sentinel_master.clone() else {
            return;
        };
        {
            let mut last = lock(&self.last_suspicion);
            if last.is_some_and(|at| at.elapsed() < SUSPICION_PAUSE) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = self.this.clone();
        tokio::spawn(async move {
            let Some(shared) = this.upgrade() else { return };
            let current = match &*lock(&shared.nodes[index]) {
                Slot::Up(node) => node.endpoint().to_owned(),
                // Being connected, or down: the next connection asks the sentinels anyway.
                _ => return,
            };
            match crate::sentinel::primary(&shared.config, &master).await {
                Ok(primary) if primary.to_string() != current => {
                    tracing::info!(from = %current, to = %primary, "following the new Redis primary");
                    *lock(&shared.nodes[index]) = Slot::Connecting;
                    shared.spawn_connect(index, None);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "asking the sentinels for the primary"),
            }
        });
    }

    /// Behind Sentinel: asks the sentinels every [`SENTINEL_POLL`] whether the primary
    /// changed, for as long as the client lives. A forced failover (`SENTINEL FAILOVER`, or
    /// one after a partition) promotes the replica while the old primary still takes writes
    /// until the sentinels demote it; without asking, the client would write there (writes the
    /// demotion discards) for as long as that takes (about 10 s in the tests).
    fn watch_sentinels(&self) {
        let this = self.this.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SENTINEL_POLL).await;
                let Some(shared) = this.upgrade() else { return };
                shared.suspect_primary(0);
            }
        });
    }

    /// A new id, unique to this client: owner ids and waiter ids are made of it.
    pub(crate) fn next_id(&self) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}:{sequence}", self.client_id)
    }

    /// Redlock's allowance for clock drift between client and instances.
    pub(crate) fn drift(&self, lease: Duration) -> Duration {
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
    pub(crate) fn node_now(&self, index: usize) -> Result<Node> {
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
        let config = self.config.clone();
        let waiters = Arc::clone(&self.waiters);
        tokio::spawn(async move {
            let mut endpoint = config.endpoints[index].clone();
            let connected = async {
                if let Some(master) = &config.sentinel_master {
                    endpoint = crate::sentinel::primary(&config, master).await?;
                }
                Node::connect(&config, &endpoint, Arc::clone(&waiters)).await
            }
            .await;
            let outcome = match connected {
                Ok(node) => {
                    if let Some(shared) = this.upgrade() {
                        if !node.wakes() {
                            shared.polls.store(true, Ordering::Release);
                        }
                        *lock(&shared.nodes[index]) = Slot::Up(node);
                        // The new connection listens for no waiter yet: they must listen
                        // again, and messages may have been missed meanwhile.
                        if shared.generations[index].fetch_add(1, Ordering::AcqRel) > 0 {
                            waiters.reconnected();
                        }
                    }
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(%endpoint, %error, "Redis instance unreachable");
                    if let Some(shared) = this.upgrade() {
                        *lock(&shared.nodes[index]) = Slot::Down {
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
}

/// The first polling period of a waiter or watcher the server does not wake (the standard
/// layout without keyspace events); it doubles up to [`POLL_MAX`].
pub(crate) const POLL_FIRST: Duration = Duration::from_millis(20);
/// The longest polling period: about what redis-py (100 ms), redsync (50–250 ms) and
/// node-redlock (200–400 ms) wait between their own tries, so a dlock waiter is not the
/// slowest of a mixed crowd, at one script call per period.
pub(crate) const POLL_MAX: Duration = Duration::from_millis(200);

/// How often a client behind Sentinel asks the sentinels which instance is the primary.
const SENTINEL_POLL: Duration = Duration::from_secs(1);

/// How often at most a client asks the sentinels whether its failing primary was replaced.
const SUSPICION_PAUSE: Duration = Duration::from_millis(250);

/// How long a Redlock instance that could not be connected to is left alone.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// An instance this client is connected to, or one it could not reach yet.
enum Slot {
    /// Connected.
    Up(Node),
    /// A connection attempt runs in the background.
    Connecting,
    /// Not connected; the next attempt is not made before `retry_at`, so an instance that is
    /// down does not slow every call by a connection timeout.
    Down { retry_at: Instant },
}
