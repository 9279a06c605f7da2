//! Waiting for a lock to change (`wait_for_change`, which `Election::observe` waits in): a
//! watcher listens on its own wake channel, as a waiter does, and lists its id in the lock's
//! watchers set; every script that grants the lock, releases it or replaces its owner
//! description tells each listed watcher. A holder's expiry is announced by nobody, so the
//! watcher also sets a timer at the holder's remaining lease.

use std::sync::Arc;
use std::time::Duration;

use dlock_core::{Backoff, LockMode, LockReport, Result};
use tokio::time::Instant;

use crate::error::BACKEND;
use crate::layout::LockNames;
use crate::node::Node;
use crate::quorum::first_error;
use crate::session::{Shared, POLL_MAX};
use crate::waiter::PlaceInLine;

/// How long a watcher's id stays in the watchers set at least: a watcher waits at most
/// [`SAFETY_NET`] after listing itself (and lists itself anew at its next call), so this
/// covers its wait with room for a slow report read; a set whose watchers are gone and which
/// no change visited since is gone this long after the last one listed itself.
const WATCH_TTL: Duration = Duration::from_secs(15);

/// How long a watcher waits at most without a message when no holder's lease ends sooner:
/// only a safety net for lost messages.
const SAFETY_NET: Duration = Duration::from_secs(10);

/// A watcher listed in the watchers set of one lock on a majority of instances. Dropping it
/// stops its listening; the scripts then drop its id at the next change.
pub(crate) struct Watcher {
    place: PlaceInLine,
}

impl Watcher {
    /// Listens for changes of the lock `names`; from when this returns, no change is missed.
    pub(crate) async fn start(shared: &Arc<Shared>, names: &LockNames) -> Result<Watcher> {
        // A place in no line: only its id and wake channel are used.
        let mut place = PlaceInLine::new(
            Arc::clone(shared),
            Arc::new(names.clone()),
            Duration::from_millis(1),
            LockMode::Exclusive,
        );
        place.listen().await?;
        let quorum = shared.config.quorum();
        let call = {
            let (names, id) = (names.clone(), place.id().to_owned());
            move |node: Node| {
                let (names, id) = (names.clone(), id.clone());
                async move { node.watch(&names, &id, WATCH_TTL).await }
            }
        };
        let replies = shared
            .on_quorum(None, None, call, |replies| {
                replies.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= quorum
            })
            .await;
        let replies = shared.answers(replies);
        if replies.iter().filter(|r| r.is_ok()).count() >= quorum {
            return Ok(Watcher { place });
        }
        Err(first_error(replies).unwrap_or_else(|| {
            dlock_core::LockError::protocol(BACKEND, "too few instances answered the watch")
        }))
    }

    /// Waits until the lock changes, or, at the latest, until the holder of `now` (the lock
    /// as read after [`Watcher::start`]) may have expired.
    pub(crate) async fn changed(mut self, now: &LockReport) {
        // One wait per call: poll at the longest period from the start.
        let mut polling = Backoff::new(POLL_MAX, POLL_MAX);
        let limit = self.place.shared().nap(SAFETY_NET, &mut polling);
        let wait = match now.info.remaining_lease {
            Some(left) if now.info.held => (left + Duration::from_millis(1)).min(limit),
            _ => limit,
        };
        self.place.any_wake(Instant::now() + wait).await;
    }
}
