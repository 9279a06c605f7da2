//! One acquisition as the backend and the keepalive see it, and how its loss is signalled.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::key::LockKey;
use crate::metrics::Observation;
use crate::options::LockOptions;
pub(crate) use crate::support::lock;
use crate::token::FencingToken;

/// Why a guard stopped holding its lock without being released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// The lease ran out on the holder's own clock: renewals failed or were turned off.
    LeaseExpired,
    /// The server no longer records this holder as the owner (the key was deleted, overwritten
    /// or expired on the server).
    NotOwner,
    /// The client's session or lease on the server ended (expired or revoked).
    SessionEnded,
}

impl LossReason {
    /// A short, stable name: the `reason` label of
    /// [`dlock_losses_total`](crate::metrics::LOSSES).
    pub fn as_str(&self) -> &'static str {
        match self {
            LossReason::LeaseExpired => "lease_expired",
            LossReason::NotOwner => "not_owner",
            LossReason::SessionEnded => "session_ended",
        }
    }
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::LeaseExpired => "the lease expired before it could be renewed",
            LossReason::NotOwner => "the server no longer records this holder as the owner",
            LossReason::SessionEnded => "the client's session on the server ended",
        })
    }
}

/// The handle a backend keeps to tell a guard, at any time, that its lock is gone.
///
/// Backends that learn of losses from the server (a session that expired, a watched key that
/// was deleted) call [`LossNotifier::notify_lost`]; the guard's `lost()` future then resolves.
/// Only a held lock can be lost: notifying a released one does nothing.
#[derive(Clone)]
pub struct LossNotifier {
    state: Arc<LeaseState>,
}

impl LossNotifier {
    /// A notifier for a request made outside a [`Locker`](crate::Locker): calling a backend
    /// directly, as conformance tests and tools do. Losses it is told of reach nobody.
    pub fn detached() -> Self {
        LeaseState::new().notifier()
    }

    /// Marks the lock lost for `reason`, unless it was already released or lost.
    pub fn notify_lost(&self, reason: LossReason) {
        self.state.mark_lost(reason);
    }

    /// True once the lock was lost, released or dropped: the backend can forget this handle.
    pub fn is_finished(&self) -> bool {
        !matches!(
            *self.state.status.borrow(),
            Status::Held | Status::Releasing
        )
    }
}

impl fmt::Debug for LossNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossNotifier")
            .field("status", &*self.state.status.borrow())
            .finish()
    }
}

/// One acquisition: its key, fencing token, the options it was taken with, its lease deadline
/// and the backend's own record of it (owner id, node path, lease id…).
///
/// Backends receive a `Lease` in `extend`, `release` and `renew` and find their record with
/// [`Lease::record`].
pub struct Lease {
    id: u64,
    key: LockKey,
    token: FencingToken,
    options: LockOptions,
    record: Box<dyn Any + Send + Sync>,
    state: Arc<LeaseState>,
}

impl Lease {
    /// The key of the lock.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The fencing token issued with this acquisition.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// The options the lock was taken with (lease, prefix…).
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// The lease length asked for.
    pub fn ttl(&self) -> Duration {
        self.options.lease
    }

    /// The backend's record of this acquisition, if it has type `T`.
    pub fn record<T: Any>(&self) -> Option<&T> {
        self.record.downcast_ref()
    }

    /// Until when the lock is known to be held, on this process's clock.
    pub fn valid_until(&self) -> Instant {
        lock(&self.state.validity).until
    }

    /// True while the lock is held and its lease has not run out on this process's clock.
    pub fn is_held(&self) -> bool {
        matches!(*self.state.status.borrow(), Status::Held) && Instant::now() < self.valid_until()
    }

    pub(crate) fn new(
        key: LockKey,
        options: LockOptions,
        acquired: crate::backend::Acquired,
        state: Arc<LeaseState>,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        lock(&state.validity).until = acquired.valid_until;
        Lease {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key,
            token: acquired.token,
            options,
            record: acquired.record,
            state,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn state(&self) -> &LeaseState {
        &self.state
    }

    /// The metrics and span of this acquisition; `None` for a lease no guard was made for.
    pub(crate) fn observation(&self) -> Option<&Observation> {
        self.state.observation.get()
    }

    /// How many times [`Lease::extended_until`] set the deadline: a renewal compares it before
    /// and after its round trip to know whether an `extend` crossed it.
    pub(crate) fn extensions(&self) -> u64 {
        lock(&self.state.validity).extensions
    }

    /// Moves the deadline forward after a renewal sent when [`Lease::extensions`] was
    /// `extensions`. Never backward, so a slow renewal reply cannot shorten it; and not at all
    /// if an `extend` was answered meanwhile, since the server may have applied the two in
    /// either order and only the earlier deadline is sure.
    pub(crate) fn renewed_until(&self, valid_until: Instant, extensions: u64) {
        let mut validity = lock(&self.state.validity);
        if validity.extensions == extensions && valid_until > validity.until {
            validity.until = valid_until;
        }
    }

    /// Sets the deadline an `extend` obtained, earlier or later than the current one: the
    /// server now counts from it, so the guard must too.
    pub(crate) fn extended_until(&self, valid_until: Instant) {
        let mut validity = lock(&self.state.validity);
        validity.until = valid_until;
        validity.extensions += 1;
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("status", &*self.state.status.borrow())
            .finish_non_exhaustive()
    }
}

/// Where an acquisition is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Held,
    /// A release was sent; the keepalive leaves the lease alone and losses are ignored.
    Releasing,
    Released,
    Lost(LossReason),
}

impl Status {
    /// Released or lost: the acquisition is over.
    pub(crate) fn is_final(self) -> bool {
        matches!(self, Status::Released | Status::Lost(_))
    }
}

/// The state shared by a guard, its keepalive entry and the backend's [`LossNotifier`].
pub(crate) struct LeaseState {
    pub(crate) status: watch::Sender<Status>,
    validity: Mutex<Validity>,
    /// Set once the lock is handed out in a guard; every status change after that is
    /// recorded through it, whoever makes it (guard, keepalive, backend).
    observation: OnceLock<Observation>,
}

/// The lease's deadline and how many `extend`s set it.
struct Validity {
    until: Instant,
    extensions: u64,
}

impl LeaseState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(LeaseState {
            status: watch::Sender::new(Status::Held),
            validity: Mutex::new(Validity {
                until: Instant::now(),
                extensions: 0,
            }),
            observation: OnceLock::new(),
        })
    }

    /// Starts recording this lease's life in `observation`. A lease that ended before (a
    /// loss signalled between the grant and the guard) is recorded as ended at once.
    pub(crate) fn observe(&self, observation: Observation) {
        let observation = self.observation.get_or_init(|| observation);
        let status = self.status();
        if status.is_final() {
            observation.finished(status);
        }
    }

    pub(crate) fn notifier(self: &Arc<Self>) -> LossNotifier {
        LossNotifier {
            state: Arc::clone(self),
        }
    }

    pub(crate) fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Held → Lost. Returns whether this call made the change.
    pub(crate) fn mark_lost(&self, reason: LossReason) -> bool {
        self.transition(|s| matches!(s, Status::Held), Status::Lost(reason))
    }

    /// Held → Releasing. Returns whether this call made the change.
    pub(crate) fn begin_release(&self) -> bool {
        self.transition(|s| matches!(s, Status::Held), Status::Releasing)
    }

    /// Any → `to`, when `from` accepts the current status.
    pub(crate) fn transition(&self, from: impl Fn(Status) -> bool, to: Status) -> bool {
        let changed = self.status.send_if_modified(|status| {
            if from(*status) {
                *status = to;
                true
            } else {
                false
            }
        });
        if changed && to.is_final() {
            if let Some(observation) = self.observation.get() {
                observation.finished(to);
            }
        }
        changed
    }
}
