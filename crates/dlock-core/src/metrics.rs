//! The metrics dlock records, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The core records them once for every backend, in the [`Locker`], the
//! [`LockGuard`] and the keepalive: a backend records nothing of its own.
//! Nothing is recorded until the application installs a recorder (any exporter of the
//! `metrics` ecosystem: Prometheus, StatsD, OpenTelemetry…); without one every call is a
//! no-op. Call [`describe`] after installing it to give each metric its unit and help text.
//!
//! | name | type | labels | what it counts |
//! |---|---|---|---|
//! | `dlock_acquisitions_total` | counter | `backend`, `prefix`? | locks granted, by `acquire` or `try_acquire` |
//! | `dlock_handoffs_total` | counter | `backend`, `prefix`? | contended acquisitions: grants that waited in the server's line behind a holder (backends report it with [`AcquireRequest::queued`]) |
//! | `dlock_acquire_wait_seconds` | histogram | `backend`, `prefix`? | from the `acquire` call to the grant, for granted calls (a lone `try_acquire` is one round trip) |
//! | `dlock_timeouts_total` | counter | `backend`, `prefix`? | `acquire` calls that ended in [`LockError::Timeout`]: the wait limit passed (or, with a zero limit, the lock was held) |
//! | `dlock_busy_total` | counter | `backend`, `prefix`? | `try_acquire` calls that found the lock held (`Ok(None)`) |
//! | `dlock_acquire_errors_total` | counter | `backend`, `prefix`? | `acquire` and `try_acquire` calls that failed otherwise (server unreachable, protocol error…) |
//! | `dlock_held_locks` | gauge | `backend`, `prefix`? | locks this process holds now (granted, neither released nor lost) |
//! | `dlock_hold_seconds` | histogram | `backend`, `prefix`?, `outcome` | from the grant to the confirmed release (`outcome="released"`, also for an abandoned guard) or to the loss (`outcome="lost"`) |
//! | `dlock_renewals_total` | counter | `backend`, `prefix`? | leases the keepalive renewed (one per lease, however many a batch carries) |
//! | `dlock_renewal_failures_total` | counter | `backend`, `prefix`? | lease renewals that got no answer (error, timeout, a reply of the wrong size); the keepalive retries until the lease runs out |
//! | `dlock_losses_total` | counter | `backend`, `prefix`?, `reason` | locks lost, by [`LossReason::as_str`]: `lease_expired`, `not_owner`, `session_ended` |
//!
//! **Labels.** `backend` is the backend's [`Capabilities::name`]
//! (`memory`, `redis`, `redlock`, `zookeeper`, `etcd`…). `prefix` is the lock's
//! [`LockOptions::prefix`], only when the locker was built with
//! [`Locker::with_prefix_label`]: a deployment has a few
//! prefixes, so the label set stays bounded. The key itself is never a label: keys are
//! unbounded (one per invoice, per job…) and would make every time series a new one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use dlock_core::{Locker, MemoryBackend};
//!
//! // Install any `metrics` recorder first (metrics_exporter_prometheus, …), then:
//! dlock_core::metrics::describe();
//! let locker = Locker::new(MemoryBackend::new()).with_prefix_label(true);
//! locker.acquire("reports/daily").await?.release().await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::metrics::{counter, gauge, histogram, Label, Unit};
use tokio::time::Instant;
use tracing::Span;

use crate::error::LockError;
use crate::key::LockKey;
use crate::lease::Status;
use crate::options::LockOptions;
use crate::support::lock;
use crate::token::FencingToken;
#[cfg(doc)]
use crate::{AcquireRequest, Capabilities, LockGuard, Locker, LossReason};

/// Counter: locks granted.
pub const ACQUISITIONS: &str = "dlock_acquisitions_total";
/// Counter: grants that waited in line behind a holder.
pub const HANDOFFS: &str = "dlock_handoffs_total";
/// Histogram, seconds: from the acquire call to the grant.
pub const ACQUIRE_WAIT: &str = "dlock_acquire_wait_seconds";
/// Counter: acquire calls that ran out of their wait limit.
pub const TIMEOUTS: &str = "dlock_timeouts_total";
/// Counter: `try_acquire` calls that found the lock held.
pub const BUSY: &str = "dlock_busy_total";
/// Counter: acquire calls that failed with another error.
pub const ACQUIRE_ERRORS: &str = "dlock_acquire_errors_total";
/// Gauge: locks held by this process now.
pub const HELD: &str = "dlock_held_locks";
/// Histogram, seconds: from the grant to the release or the loss.
pub const HOLD: &str = "dlock_hold_seconds";
/// Counter: leases renewed by the keepalive.
pub const RENEWALS: &str = "dlock_renewals_total";
/// Counter: lease renewals that failed and will be retried.
pub const RENEWAL_FAILURES: &str = "dlock_renewal_failures_total";
/// Counter: locks lost, by reason.
pub const LOSSES: &str = "dlock_losses_total";

/// Label: the backend's name.
pub const LABEL_BACKEND: &str = "backend";
/// Label: the lock options' key prefix, when the locker opted in.
pub const LABEL_PREFIX: &str = "prefix";
/// Label of [`HOLD`]: `released` or `lost`.
pub const LABEL_OUTCOME: &str = "outcome";
/// Label of [`LOSSES`]: the [`LossReason`] as a short name.
pub const LABEL_REASON: &str = "reason";

/// Every metric name above, in the order of the table.
pub const ALL: &[&str] = &[
    ACQUISITIONS,
    HANDOFFS,
    ACQUIRE_WAIT,
    TIMEOUTS,
    BUSY,
    ACQUIRE_ERRORS,
    HELD,
    HOLD,
    RENEWALS,
    RENEWAL_FAILURES,
    LOSSES,
];

/// Gives every dlock metric its unit and help text in the installed recorder. Call it once,
/// after installing the recorder; without one it does nothing.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ACQUISITIONS, Unit::Count, "Locks granted");
    describe_counter!(
        HANDOFFS,
        Unit::Count,
        "Locks granted after waiting in line behind a holder"
    );
    describe_histogram!(
        ACQUIRE_WAIT,
        Unit::Seconds,
        "Time from the acquire call to the grant"
    );
    describe_counter!(
        TIMEOUTS,
        Unit::Count,
        "Acquire calls that ran out of their wait limit"
    );
    describe_counter!(
        BUSY,
        Unit::Count,
        "try_acquire calls that found the lock held"
    );
    describe_counter!(
        ACQUIRE_ERRORS,
        Unit::Count,
        "Acquire calls that failed with an error other than a timeout"
    );
    describe_gauge!(HELD, Unit::Count, "Locks this process holds now");
    describe_histogram!(
        HOLD,
        Unit::Seconds,
        "Time from the grant to the release or the loss"
    );
    describe_counter!(RENEWALS, Unit::Count, "Leases renewed by the keepalive");
    describe_counter!(
        RENEWAL_FAILURES,
        Unit::Count,
        "Lease renewals that failed and are retried"
    );
    describe_counter!(LOSSES, Unit::Count, "Locks lost, by reason");
}

/// The labels every metric of one acquisition carries.
#[derive(Debug, Clone)]
struct Labels {
    backend: &'static str,
    prefix: Option<String>,
}

impl Labels {
    fn to_vec(&self) -> Vec<Label> {
        let mut labels = vec![Label::new(LABEL_BACKEND, self.backend)];
        if let Some(prefix) = &self.prefix {
            labels.push(Label::new(LABEL_PREFIX, prefix.clone()));
        }
        labels
    }

    fn with(&self, name: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.to_vec();
        labels.push(Label::new(name, value));
        labels
    }
}

/// One acquire or try_acquire call, from the call to its outcome: its span and clock.
pub(crate) struct Attempt {
    labels: Labels,
    started: Instant,
    span: Span,
    queued: Arc<AtomicBool>,
}

impl Attempt {
    /// Opens the acquisition's span and starts its clock.
    pub(crate) fn start(
        backend: &'static str,
        key: &LockKey,
        options: &LockOptions,
        prefix_label: bool,
    ) -> Self {
        // Only what identifies the lock: the owner's secret id lives in the backend's record
        // and the URL's password in the backend, neither of which reaches this span.
        let span = tracing::info_span!(
            "dlock.lock",
            key = %key,
            backend,
            prefix = %options.prefix,
            token = tracing::field::Empty,
        );
        Attempt {
            labels: Labels {
                backend,
                prefix: prefix_label.then(|| options.prefix.clone()),
            },
            started: Instant::now(),
            span,
            queued: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The acquisition's span: backend calls made for it run inside.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Set by [`AcquireRequest::queued`] when the request
    /// stood in line: the grant that follows is a handoff.
    pub(crate) fn queued_flag(&self) -> &Arc<AtomicBool> {
        &self.queued
    }

    /// Records the grant and hands the span on to the lease's [`Observation`].
    pub(crate) fn granted(self, token: FencingToken) -> Observation {
        let waited = self.started.elapsed();
        let labels = self.labels.to_vec();
        counter!(ACQUISITIONS, labels.clone()).increment(1);
        histogram!(ACQUIRE_WAIT, labels.clone()).record(waited.as_secs_f64());
        let handoff = self.queued.load(Ordering::Acquire);
        if handoff {
            counter!(HANDOFFS, labels.clone()).increment(1);
        }
        gauge!(HELD, labels).increment(1.0);
        self.span.record("token", token.get());
        self.span
            .in_scope(|| tracing::debug!(?waited, handoff, "lock acquired"));
        Observation {
            labels: self.labels,
            granted_at: Instant::now(),
            span: Mutex::new(Some(self.span)),
            done: AtomicBool::new(false),
        }
    }

    /// Records a `try_acquire` that found the lock held.
    pub(crate) fn busy(self) {
        counter!(BUSY, self.labels.to_vec()).increment(1);
        self.span.in_scope(|| tracing::debug!("lock is held"));
    }

    /// Records an acquire that failed: a timeout or another error.
    pub(crate) fn failed(self, error: &LockError) {
        let waited = self.started.elapsed();
        let name = match error {
            LockError::Timeout { .. } => TIMEOUTS,
            _ => ACQUIRE_ERRORS,
        };
        counter!(name, self.labels.to_vec()).increment(1);
        self.span
            .in_scope(|| tracing::debug!(?waited, %error, "lock not acquired"));
    }
}

/// A granted lock's metrics and span, from the grant to its release or loss.
pub(crate) struct Observation {
    labels: Labels,
    granted_at: Instant,
    /// Taken, and so closed, when the acquisition ends.
    span: Mutex<Option<Span>>,
    done: AtomicBool,
}

impl Observation {
    /// The acquisition's span while it lasts; a disabled span after.
    pub(crate) fn span(&self) -> Span {
        lock(&self.span).clone().unwrap_or_else(Span::none)
    }

    /// Records one renewal of this lease.
    pub(crate) fn renewed(&self) {
        counter!(RENEWALS, self.labels.to_vec()).increment(1);
    }

    /// Records one failed renewal of this lease.
    pub(crate) fn renewal_failed(&self) {
        counter!(RENEWAL_FAILURES, self.labels.to_vec()).increment(1);
    }

    /// How long the lock has been held.
    pub(crate) fn held_for(&self) -> Duration {
        self.granted_at.elapsed()
    }

    /// Records the end of the acquisition (once, whoever calls first) and closes its span.
    pub(crate) fn finished(&self, status: Status) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let held = self.held_for();
        gauge!(HELD, self.labels.to_vec()).decrement(1.0);
        let span = lock(&self.span).take().unwrap_or_else(Span::none);
        match status {
            Status::Lost(reason) => {
                counter!(LOSSES, self.labels.with(LABEL_REASON, reason.as_str())).increment(1);
                histogram!(HOLD, self.labels.with(LABEL_OUTCOME, "lost"))
                    .record(held.as_secs_f64());
                span.in_scope(|| tracing::info!(?held, %reason, "lock lost"));
            }
            _ => {
                histogram!(HOLD, self.labels.with(LABEL_OUTCOME, "released"))
                    .record(held.as_secs_f64());
                span.in_scope(|| tracing::debug!(?held, "lock released"));
            }
        }
    }
}
