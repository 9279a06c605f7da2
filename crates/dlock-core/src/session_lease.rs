//! A server session used as the lease of every lock a client holds (ZooKeeper's session,
//! etcd's lease): until when it surely lives on this process's clock, and its end, told once
//! to every lock taken in it.
//!
//! The session's backend keeps it alive (a heartbeat, a keepalive stream) and books each
//! answer with [`SessionLease::renewed`]; everything else, which is the same for every
//! backend whose locks live and die with one session, is here: the validity only ever moves
//! forward, the session ends once and for one reason, it ends on this process's clock when
//! its validity runs out (after a pause, say, before any heartbeat could notice), and every
//! lock registered in it hears of the end. An ended session never comes back: a backend
//! opens a new one, so nothing new ever queues in a session whose locks were declared lost.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::lease::{LossNotifier, LossReason};
use crate::support::lock;

/// The validity and the end of one server session, shared by every lock taken in it.
///
/// ```
/// use std::time::Duration;
/// use dlock_core::support::{SessionCheck, SessionLease};
/// use dlock_core::LossReason;
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let session = SessionLease::new(Instant::now() + Duration::from_secs(10));
/// // A heartbeat sent now was answered: the server keeps the session 10 s from the send.
/// session.renewed(Instant::now() + Duration::from_secs(10));
/// assert_eq!(session.end_if_overdue(), SessionCheck::Live);
///
/// tokio::time::sleep(Duration::from_secs(11)).await;
/// // No answer for a whole timeout: the session is over on this process's clock.
/// assert_eq!(session.end_if_overdue(), SessionCheck::EndedNow);
/// assert_eq!(session.ended(), Some(LossReason::LeaseExpired));
/// # }
/// ```
#[derive(Debug)]
pub struct SessionLease {
    state: watch::Sender<Validity>,
    holders: Mutex<Holders>,
}

/// What [`SessionLease::end_if_overdue`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// The session still surely lives on the server.
    Live,
    /// The session had already ended.
    Ended,
    /// The session's validity ran out and this call ended it: the caller gives it up on the
    /// server too (revokes or closes it), since the server may still keep it.
    EndedNow,
}

impl SessionLease {
    /// A live session the server surely keeps until `valid_until`.
    pub fn new(valid_until: Instant) -> SessionLease {
        SessionLease {
            state: watch::Sender::new(Validity {
                valid_until,
                ended: None,
            }),
            holders: Mutex::new(Holders::default()),
        }
    }

    /// Until when the server surely keeps the session, on this process's clock.
    pub fn valid_until(&self) -> Instant {
        self.state.borrow().valid_until
    }

    /// Books an answer proving the session alive until `valid_until` (the answered
    /// request's send time plus the session's timeout). Answers may arrive out of order: the
    /// validity only moves forward.
    pub fn renewed(&self, valid_until: Instant) {
        self.state.send_if_modified(|state| {
            let later = valid_until > state.valid_until;
            if later {
                state.valid_until = valid_until;
            }
            later
        });
    }

    /// Why the session ended, if it did.
    pub fn ended(&self) -> Option<LossReason> {
        self.state.borrow().ended
    }

    /// Ends the session for `reason` and tells every registered lock; true if this call
    /// ended it (a session ends once, for its first reason).
    pub fn end(&self, reason: LossReason) -> bool {
        let ended_now = self.state.send_if_modified(|state| {
            let first = state.ended.is_none();
            if first {
                state.ended = Some(reason);
            }
            first
        });
        if ended_now {
            for notifier in std::mem::take(&mut lock(&self.holders).notifiers) {
                notifier.notify_lost(reason);
            }
        }
        ended_now
    }

    /// Ends the session with [`LossReason::LeaseExpired`] if its validity has run out on this
    /// process's clock. Its locks are lost by then, and nothing new may be queued in it: call
    /// this before using the session for a new request.
    pub fn end_if_overdue(&self) -> SessionCheck {
        if self.ended().is_some() {
            return SessionCheck::Ended;
        }
        if Instant::now() < self.valid_until() {
            return SessionCheck::Live;
        }
        if self.end(LossReason::LeaseExpired) {
            SessionCheck::EndedNow
        } else {
            SessionCheck::Ended
        }
    }

    /// Resolves, with the reason, once the session ends. A session dropped without ending
    /// counts as ended ([`LossReason::SessionEnded`]): no lock outlives its session.
    pub fn until_ended(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let mut state = self.state.subscribe();
        async move {
            match state.wait_for(|state| state.ended.is_some()).await {
                Ok(state) => state.ended.unwrap_or(LossReason::SessionEnded),
                Err(_) => LossReason::SessionEnded,
            }
        }
    }

    /// Tells `notifier` when the session ends (at once if it already has).
    pub fn register(&self, notifier: LossNotifier) {
        let mut holders = lock(&self.holders);
        if let Some(reason) = self.ended() {
            drop(holders);
            notifier.notify_lost(reason);
            return;
        }
        holders.notifiers.push(notifier);
        // Finished notifiers (released locks) are pruned whenever the list doubles, so a
        // long-lived session's list stays as long as its held locks, give or take.
        if holders.notifiers.len() >= 2 * holders.pruned_len.max(64) {
            holders.notifiers.retain(|n| !n.is_finished());
            holders.pruned_len = holders.notifiers.len();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Validity {
    valid_until: Instant,
    ended: Option<LossReason>,
}

/// The loss notifiers of the locks held in the session.
#[derive(Debug, Default)]
struct Holders {
    notifiers: Vec<LossNotifier>,
    pruned_len: usize,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::{LeaseState, Status};

    #[tokio::test(start_paused = true)]
    async fn ends_once_and_tells_every_lock() {
        let session = SessionLease::new(Instant::now() + Duration::from_secs(1));
        let held = LeaseState::new();
        session.register(held.notifier());
        let ended = session.until_ended();
        assert!(session.end(LossReason::SessionEnded));
        assert!(
            !session.end(LossReason::LeaseExpired),
            "a session ends once"
        );
        assert_eq!(ended.await, LossReason::SessionEnded);
        assert_eq!(held.status(), Status::Lost(LossReason::SessionEnded));
        let late = LeaseState::new();
        session.register(late.notifier());
        assert_eq!(
            late.status(),
            Status::Lost(LossReason::SessionEnded),
            "told at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn validity_only_moves_forward() {
        let start = Instant::now();
        let session = SessionLease::new(start + Duration::from_secs(2));
        session.renewed(start + Duration::from_secs(1));
        assert_eq!(session.valid_until(), start + Duration::from_secs(2));
        session.renewed(start + Duration::from_secs(3));
        assert_eq!(session.valid_until(), start + Duration::from_secs(3));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(session.end_if_overdue(), SessionCheck::EndedNow);
        assert_eq!(session.end_if_overdue(), SessionCheck::Ended);
    }
}
