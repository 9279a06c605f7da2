//! The one background task per client that renews held leases in batches and signals the
//! ones that ran out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{LockBackend, Renewal};
use crate::lease::{lock, Lease, LossReason, Status};

/// Every lease a client holds, and the task that keeps them alive.
///
/// One task serves all of a client's locks, so renewal costs one `renew` call per interval
/// however many locks are held (P4): leases that fall due within half an interval of each
/// other are renewed together, and after one renewal they stay in step. The task also signals
/// a lease lost on this process's clock when its deadline passes unrenewed (P5), and ends
/// when the client holds nothing.
pub(crate) struct Keepalive {
    backend: Arc<dyn LockBackend>,
    /// The backend's lease is its session ([`Capabilities::session_lease`]): every lock is
    /// checked against the session whatever its keepalive option, since the session, not
    /// the option, decides how long it lives.
    ///
    /// [`Capabilities::session_lease`]: crate::Capabilities::session_lease
    session_lease: bool,
    state: Mutex<Registry>,
    wake: Notify,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<u64, Entry>,
    running: bool,
    /// When the running task looks next at the latest, as it decided at the end of its last
    /// tick (it may look earlier). A lease registered with nothing to do before then needs
    /// no wake-up: waking the task for every acquisition cost a task switch, often a thread
    /// wake-up, on the path of every uncontended acquire (issue 14).
    looks_at: Option<Instant>,
}

struct Entry {
    lease: Arc<Lease>,
    next_renewal: Instant,
    /// The time between renewals, as last computed by [`renewal_period`].
    period: Duration,
    /// Whether this lease is renewed at all (else only its deadline is watched).
    renewed: bool,
}

impl Keepalive {
    pub(crate) fn new(backend: Arc<dyn LockBackend>) -> Arc<Self> {
        Arc::new(Keepalive {
            session_lease: backend.capabilities().session_lease,
            backend,
            state: Mutex::new(Registry::default()),
            wake: Notify::new(),
        })
    }

    pub(crate) fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.backend
    }

    /// Starts watching `lease`; renews it if its options ask for keepalive or the backend's
    /// lease is its session.
    pub(crate) fn register(self: &Arc<Self>, lease: Arc<Lease>) {
        let now = Instant::now();
        let period = renewal_period(&lease, now);
        let renewed = lease.options().keepalive || self.session_lease;
        let mut registry = lock(&self.state);
        // Join the next batch if it comes within one period: a little early is harmless,
        // and a client taking locks one after another then still renews them in one call.
        let next_batch = registry
            .entries
            .values()
            .map(|entry| entry.next_renewal)
            .filter(|at| *at <= now + period)
            .min();
        let entry = Entry {
            next_renewal: next_batch.unwrap_or(now + period),
            lease,
            period,
            renewed,
        };
        let needed_at = entry.looks_needed_at();
        registry.entries.insert(entry.lease.id(), entry);
        if !registry.running {
            // A new task ticks at once, and sees this entry.
            registry.running = true;
            registry.looks_at = None;
            tokio::spawn(Arc::clone(self).run());
            return;
        }
        // The task takes the entry into account whenever it next looks: if that is soon
        // enough, leave it asleep. (A tick under way sees the entry when it computes its next
        // look, under the lock held here.)
        let early_enough = registry.looks_at.is_some_and(|at| at <= needed_at);
        drop(registry);
        if !early_enough {
            self.wake.notify_one();
        }
    }

    /// Schedules `lease` again from its current deadline, which an `extend` just moved (maybe
    /// closer than the renewal planned for the old one).
    pub(crate) fn rearm(&self, lease: &Lease) {
        let now = Instant::now();
        if let Some(entry) = lock(&self.state).entries.get_mut(&lease.id()) {
            entry.period = renewal_period(lease, now);
            entry.next_renewal = now + entry.period;
        }
        self.wake.notify_one();
    }

    /// Stops watching a lease (it was released or abandoned).
    pub(crate) fn unregister(&self, lease: &Lease) {
        lock(&self.state).entries.remove(&lease.id());
    }

    /// How many leases are watched.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).entries.len()
    }

    async fn run(self: Arc<Self>) {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let Some(next_tick) = self.tick().await else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_tick) => {}
                _ = wake => {}
            }
        }
    }

    /// Expires, renews and schedules. Returns when to look again, or `None` when nothing is
    /// held any more (and the task must end).
    async fn tick(&self) -> Option<Instant> {
        let due = {
            let mut registry = lock(&self.state);
            let now = Instant::now();
            registry.entries.retain(|_, entry| {
                let lease = &entry.lease;
                match lease.state().status() {
                    Status::Held if now >= lease.valid_until() => {
                        // Taken before the loss closes it: the clean-up belongs to the lock.
                        let span = lease.observation().map(|o| o.span());
                        if lease.state().mark_lost(LossReason::LeaseExpired) {
                            self.clean_up(Arc::clone(lease), span);
                        }
                        false
                    }
                    Status::Held | Status::Releasing => true,
                    Status::Released | Status::Lost(_) => false,
                }
            });
            if registry.entries.is_empty() {
                registry.running = false;
                return None;
            }
            let due: Vec<Arc<Lease>> = registry
                .entries
                .values()
                .filter(|entry| is_due(entry, now))
                .map(|entry| Arc::clone(&entry.lease))
                .collect();
            due
        };
        if !due.is_empty() {
            self.renew(&due).await;
        }
        let mut registry = lock(&self.state);
        let next = registry.entries.values().map(Entry::looks_needed_at).min();
        registry.looks_at = next;
        if next.is_none() {
            // Everything was released while the renewal was under way: the task ends, so the
            // next registration must start another (it would otherwise find `running` set
            // and only notify a task that is gone, and nothing would be renewed again).
            registry.running = false;
        }
        next
    }

    /// Removes from the server what it may still hold for a lease that ran out on this
    /// process's clock: a session or lease the server still counts as alive (a holder paused
    /// past its lease, renewals cut off) would otherwise keep the lock taken by nobody, with
    /// every waiter behind it. The release is owner-checked, so it touches nothing of a new
    /// holder's.
    fn clean_up(&self, lease: Arc<Lease>, span: Option<tracing::Span>) {
        let backend = Arc::clone(&self.backend);
        let span = span.unwrap_or_else(tracing::Span::none);
        let cleaning = async move {
            match backend.release(&lease).await {
                Ok(()) => {
                    tracing::debug!(key = %lease.key(), "removed a lost lock from the server")
                }
                Err(crate::LockError::NotHeld { .. }) => {}
                Err(error) => {
                    tracing::debug!(key = %lease.key(), %error, "could not remove a lost lock from the server")
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(cleaning, span));
    }

    async fn renew(&self, due: &[Arc<Lease>]) {
        let sent = Instant::now();
        let extensions: Vec<u64> = due.iter().map(|lease| lease.extensions()).collect();
        let earliest_deadline = due.iter().map(|lease| lease.valid_until()).min();
        let leases: Vec<&Lease> = due.iter().map(Arc::as_ref).collect();
        let outcome = match earliest_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.backend.renew(&leases))
                .await
                .unwrap_or_else(|_| {
                    Err(crate::LockError::protocol(
                        "keepalive",
                        "no renewal reply before the lease ran out",
                    ))
                }),
            None => return,
        };
        let mut registry = lock(&self.state);
        match outcome {
            Ok(renewals) if renewals.len() == due.len() => {
                for ((lease, renewal), extensions) in due.iter().zip(renewals).zip(extensions) {
                    match renewal {
                        Renewal::Renewed { valid_until } => {
                            if let Some(observation) = lease.observation() {
                                observation.renewed();
                            }
                            lease.renewed_until(valid_until, extensions);
                            if let Some(entry) = registry.entries.get_mut(&lease.id()) {
                                entry.period = renewal_period(lease, sent);
                                entry.next_renewal = sent + entry.period;
                            }
                        }
                        Renewal::Lost(reason) => {
                            lease.state().mark_lost(reason);
                        }
                    }
                }
            }
            other => {
                match other {
                    Err(error) => {
                        tracing::warn!(%error, locks = due.len(), "lock renewal failed; retrying")
                    }
                    Ok(renewals) => tracing::warn!(
                        asked = due.len(),
                        answered = renewals.len(),
                        "backend answered a renewal for the wrong number of locks; retrying"
                    ),
                }
                for lease in due {
                    if let Some(observation) = lease.observation() {
                        observation.renewal_failed();
                    }
                    if let Some(entry) = registry.entries.get_mut(&lease.id()) {
                        entry.next_renewal = Instant::now() + retry_delay(entry);
                    }
                }
            }
        }
    }
}

impl Entry {
    /// When the task must look at this entry next: its renewal if it is renewed, and its
    /// deadline in any case (to signal it lost on this process's clock).
    fn looks_needed_at(&self) -> Instant {
        let deadline = self.lease.valid_until();
        if self.renewed {
            deadline.min(self.next_renewal)
        } else {
            deadline
        }
    }
}

/// How long after `confirmed` to renew: the keepalive interval, or a third of the validity
/// the backend granted, whichever is shorter. The second matters for session backends, whose
/// validity is the session's and not the lease option's.
fn renewal_period(lease: &Lease, confirmed: Instant) -> Duration {
    let interval = lease.options().effective_keepalive_interval();
    let validity = lease.valid_until().saturating_duration_since(confirmed);
    interval.min(validity / 3).max(MIN_PERIOD)
}

/// Renewing more often than this helps no lease and would load the server.
const MIN_PERIOD: Duration = Duration::from_millis(5);

/// Due now, or within half a period: renewing a little early lets leases share one call.
fn is_due(entry: &Entry, now: Instant) -> bool {
    entry.renewed
        && matches!(entry.lease.state().status(), Status::Held)
        && entry.next_renewal <= now + entry.period / 2
}

/// After a failed renewal, try again soon: several tries fit in what is left of the lease.
fn retry_delay(entry: &Entry) -> Duration {
    (entry.period / 4).clamp(MIN_PERIOD, Duration::from_secs(1))
}
