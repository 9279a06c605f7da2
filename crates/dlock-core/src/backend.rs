//! The trait every backend implements, and what passes between it and the core.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Result;
use crate::inspect::{Introspection, ListPage, ListRequest, LockReport};
use crate::key::LockKey;
use crate::lease::{lock, Lease, LossNotifier, LossReason};
use crate::mode::LockMode;
use crate::options::LockOptions;
use crate::token::FencingToken;

/// A lock service: Redis, ZooKeeper, etcd, the in-memory reference, or your own.
///
/// A backend value is one client: its own connection or session, shared by every lock it
/// takes. Applications do not call it directly; they wrap it in a [`Locker`](crate::Locker),
/// which adds the guard, the background keepalive and the wait limit on top. The
/// `dlock-conformance` crate checks that an implementation keeps the contract.
///
/// Every method must be cancellation safe: a dropped future leaves nothing behind on the
/// server that outlives the lease (and ideally nothing at all).
#[async_trait]
pub trait LockBackend: Any + Send + Sync + fmt::Debug {
    /// What this backend guarantees; the conformance suite reads it.
    fn capabilities(&self) -> Capabilities;

    /// Takes the lock if it is free and nobody waits for it; `Ok(None)` if someone holds it.
    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>>;

    /// Takes the lock, waiting in line until `request.deadline` if it has one.
    ///
    /// Returns [`LockError::Timeout`](crate::LockError::Timeout) when the deadline passes,
    /// after removing this waiter from the line. Waiting must be woken by the server, with a
    /// timer only as a safety net, and call [`AcquireRequest::queued`] once in line.
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired>;

    /// Sets the lease's remaining time to `ttl` if it is still ours, returning the new
    /// deadline; [`LockError::NotHeld`](crate::LockError::NotHeld) if it is not.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant>;

    /// Deletes the lock if it is still ours (checked on the server, atomically);
    /// [`LockError::NotHeld`](crate::LockError::NotHeld) otherwise, changing nothing.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Renews every lease in `leases` for its own lease length, in as few round trips as the
    /// backend allows, returning one [`Renewal`] per lease, in order.
    ///
    /// An `Err` means nothing is known (the server could not be asked); the keepalive retries
    /// and, if the lease runs out first, signals the loss on its own clock. The default renews
    /// one lease at a time with [`LockBackend::extend`].
    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        let mut renewals = Vec::with_capacity(leases.len());
        for lease in leases {
            renewals.push(match self.extend(lease, lease.ttl()).await {
                Ok(valid_until) => Renewal::Renewed { valid_until },
                Err(crate::LockError::NotHeld { .. }) => Renewal::Lost(LossReason::NotOwner),
                Err(other) => return Err(other),
            });
        }
        Ok(renewals)
    }

    /// Reads, without taking it, whether the lock on `key` (under `options.prefix`) is held,
    /// and what the server knows of it. Used by `dlock status`.
    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        let _ = (key, options);
        Err(crate::LockError::Unsupported {
            backend: self.capabilities().name,
            operation: "inspecting a lock",
        })
    }

    /// What [`LockBackend::report`] and [`LockBackend::list`] can tell beyond [`LockInfo`];
    /// the conformance suite checks what is promised. The default promises nothing.
    fn introspection(&self) -> Introspection {
        Introspection::default()
    }

    /// Like [`LockBackend::inspect`], plus what the server stores of the holder: its owner
    /// description ([`AcquireRequest::owner`]) and when it took the lock. Used by
    /// [`Locker::inspect`](crate::Locker::inspect) and `dlock status`.
    ///
    /// The default reads [`LockBackend::inspect`] and knows nothing of the holder. (It is a
    /// method of its own so that backends which build `LockInfo` by struct literal keep
    /// compiling; once they all implement it, `inspect` can go.)
    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        self.inspect(key, options).await.map(LockReport::from)
    }

    /// The locks under `options.prefix` whose key starts with `request.key_prefix`, held or
    /// waited for, in key order, one page of at most `request.limit` (already checked by the
    /// caller). Each costs what the backend says in its documentation; it must be bounded by
    /// the page, not by every lock on the server. Used by
    /// [`Locker::list`](crate::Locker::list) and `dlock list`.
    ///
    /// The default is [`LockError::Unsupported`](crate::LockError::Unsupported).
    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        let _ = (options, request);
        Err(crate::LockError::Unsupported {
            backend: self.capabilities().name,
            operation: "listing locks",
        })
    }

    /// Whether the backend can take locks in `mode` ([`LockOptions::mode`]): shared readers
    /// and semaphore permits need a line that grants several contenders at once. The
    /// [`Locker`](crate::Locker) refuses a mode the backend does not declare with
    /// [`LockError::Unsupported`](crate::LockError::Unsupported), so a backend that ignores
    /// the mode can never grant a semaphore's permit as if it were the only one. The
    /// default supports only [`LockMode::Exclusive`].
    fn supports(&self, mode: LockMode) -> bool {
        mode == LockMode::Exclusive
    }

    /// Replaces the owner description stored with a held lock ([`AcquireRequest::owner`]),
    /// if the lock is still ours (checked on the server, atomically), without touching its
    /// lease, token or place; [`LockError::NotHeld`](crate::LockError::NotHeld) otherwise.
    /// An [`Election`](crate::Election)'s leader publishes its value this way
    /// ([`Leadership::proclaim`](crate::Leadership::proclaim)). `owner` is already checked.
    ///
    /// The default is [`LockError::Unsupported`](crate::LockError::Unsupported).
    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        let _ = (lease, owner);
        Err(crate::LockError::Unsupported {
            backend: self.capabilities().name,
            operation: "updating a held lock's owner",
        })
    }

    /// Resolves when the lock on `key` may have changed since `seen` was read (a new
    /// holder, a release, an expiry, a new owner description): the caller then reads
    /// [`LockBackend::report`] again. Spurious wake-ups are allowed; missed changes are not.
    /// [`Election::observe`](crate::Election::observe) waits here.
    ///
    /// Backends that can be told by the server (a watch, a notification) override it; the
    /// default sleeps [`CHANGE_POLL_INTERVAL`], or less if the holder's lease ends sooner.
    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        let _ = (key, options);
        let poll = seen
            .info
            .remaining_lease
            .map_or(CHANGE_POLL_INTERVAL, |left| left.min(CHANGE_POLL_INTERVAL));
        tokio::time::sleep(poll).await;
        Ok(())
    }

    /// One round trip to the server, the cheapest the backend's lock operations make, timed.
    /// Benchmarks report lock latencies as multiples of it.
    async fn ping(&self) -> Result<Duration> {
        Err(crate::LockError::Unsupported {
            backend: self.capabilities().name,
            operation: "measuring a round trip",
        })
    }
}

/// How often [`LockBackend::wait_for_change`]'s default reads the lock again.
pub const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What the server knows of one lock, as [`LockBackend::inspect`] reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// Somebody holds the lock.
    pub held: bool,
    /// The holder's fencing token, if the backend knows it.
    pub fencing_token: Option<FencingToken>,
    /// How long the holder's lease still runs, if the backend knows it.
    pub remaining_lease: Option<Duration>,
    /// How many contenders wait in line, if the backend knows it.
    pub waiters: Option<usize>,
}

/// What a backend guarantees and how it works; the conformance suite checks the promise each
/// flag makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's name, as in its URL scheme.
    pub name: &'static str,
    /// Contended keys are granted first-come first-served (P10).
    pub fifo: bool,
    /// The lease is the client's session, fixed when it connects: every lock of the client
    /// lives as long as the session, the per-lock `lease` option is not used, and renewal is
    /// the session's heartbeat.
    pub session_lease: bool,
    /// Waiters are woken by the server, not by polling (P8).
    pub server_wakeup: bool,
    /// The shortest lease the backend supports.
    pub min_lease: Duration,
    /// How long after a crashed holder's lease ends the lock may stay taken (P3).
    pub crash_release_bound: Duration,
}

/// One request to take a lock.
pub struct AcquireRequest<'a> {
    /// The lock's key.
    pub key: &'a LockKey,
    /// The options to take it with (lease, prefix…).
    pub options: &'a LockOptions,
    /// When to give up waiting; `None` waits forever. Ignored by `try_acquire`.
    pub deadline: Option<Instant>,
    /// Keep this to tell the guard if the server takes the lock away later.
    pub loss: LossNotifier,
    queued: QueuedSignal,
}

impl<'a> AcquireRequest<'a> {
    /// A request, with a `queued` signal that fires when the backend reports being in line.
    pub fn new(
        key: &'a LockKey,
        options: &'a LockOptions,
        deadline: Option<Instant>,
        loss: LossNotifier,
        queued: Option<oneshot::Sender<()>>,
    ) -> Self {
        AcquireRequest {
            key,
            options,
            deadline,
            loss,
            queued: QueuedSignal {
                sender: Mutex::new(queued),
                flag: None,
            },
        }
    }

    /// The owner description to store with the lock, for operators to read back in
    /// [`LockReport::owner`]: [`LockOptions::effective_owner`], checked (at most
    /// [`MAX_OWNER_LEN`](crate::MAX_OWNER_LEN) bytes, printable). Not a secret and not an
    /// identity: the owner check on release must keep using the backend's own unguessable id.
    pub fn owner(&self) -> &str {
        self.options.effective_owner()
    }

    /// How the lock is to be shared ([`LockOptions::mode`]); a backend only sees modes it
    /// [`supports`](LockBackend::supports).
    pub fn mode(&self) -> LockMode {
        self.options.mode
    }

    /// Also sets `flag` when the request stands in line, so the locker can count handoffs.
    pub(crate) fn with_queued_flag(mut self, flag: &Arc<AtomicBool>) -> Self {
        self.queued.flag = Some(Arc::clone(flag));
        self
    }

    /// Reports that this request now stands in the server's line for the lock, behind the
    /// holder: from here on, requests that arrive later are served after it. Backends call it
    /// once; later calls do nothing.
    pub fn queued(&self) {
        if let Some(flag) = &self.queued.flag {
            flag.store(true, Ordering::Release);
        }
        if let Some(sender) = lock(&self.queued.sender).take() {
            let _ = sender.send(());
        }
    }
}

impl fmt::Debug for AcquireRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireRequest")
            .field("key", self.key)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

struct QueuedSignal {
    sender: Mutex<Option<oneshot::Sender<()>>>,
    flag: Option<Arc<AtomicBool>>,
}

/// What a backend returns when it took a lock.
pub struct Acquired {
    /// The fencing token of this acquisition.
    pub token: FencingToken,
    /// Until when the lock is surely held, on this process's clock: the moment the successful
    /// request was sent plus the lease (minus drift, for Redlock).
    pub valid_until: Instant,
    /// The backend's own record (owner id, node path…), handed back in [`Lease::record`].
    pub record: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Acquired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquired")
            .field("token", &self.token)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// The outcome of renewing one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, now until this instant.
    Renewed {
        /// The new deadline on this process's clock.
        valid_until: Instant,
    },
    /// The server says it is no longer ours.
    Lost(LossReason),
}
