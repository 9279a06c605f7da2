//! How a waiter stands in line and is woken: its place in the lines of one lock on every
//! instance, the wake-up messages addressed to it, and the loop that asks, waits and asks
//! again until the lock is handed to it or its wait limit passes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use dlock_core::support::spawn_clean_up;
use dlock_core::{AcquireRequest, Backoff, LockError, LockMode, Result};
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::layout::{mode_suffix, LockNames};
use crate::node::{Node, Wake};
use crate::quorum::Attempt;
use crate::session::{Shared, POLL_FIRST, POLL_MAX};

/// A lock won by [`acquire`]: held under `owner`, with this token, surely until
/// `valid_until`.
pub(crate) struct Grant {
    /// The owner id the lock is held under on the server.
    pub(crate) owner: String,
    /// The fencing token.
    pub(crate) token: u64,
    /// Until when the lock is surely ours, on this process's clock.
    pub(crate) valid_until: Instant,
}

/// Takes the lock `names` for `request`, waiting in line as long as the request allows: one
/// try first (a free lock costs one script call), then listening and standing in line, woken
/// by the release that hands the lock over, or by the timers that guard against holders and
/// waiters that are gone without a word.
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    request: &AcquireRequest<'_>,
    names: &Arc<LockNames>,
) -> Result<Grant> {
    let lease = request.options.lease;
    let mode = request.mode();
    let mut place = PlaceInLine::new(Arc::clone(shared), Arc::clone(names), lease, mode);
    // On a fair line the waiter's id is also the owner id a release hands the lock over
    // under (and a waiter that leaves gives back a lock handed to it meanwhile). Redlock
    // waiters stay in line while they hold the lock, so they own it under another id, a
    // new one for every attempt: a give-back of a failed attempt that reaches an instance
    // late (its connection was being re-established) must not delete what the next
    // attempt was granted there.
    let owner_for_attempt = |place: &mut PlaceInLine| {
        let owner = if shared.fair() {
            place.id.clone()
        } else {
            format!("{}{}", shared.next_id(), mode_suffix(mode))
        };
        place.owner.clone_from(&owner);
        owner
    };
    let mut owner = owner_for_attempt(&mut place);
    // A free lock is taken without joining a line or listening for wake-ups, so the
    // uncontended path costs one script call; a waiter joins the line from its next call
    // on (first come, first served counts from the join).
    place.may_hold = true;
    let tried = shared
        .attempt(names, &owner, request.owner(), lease, None, mode)
        .await;
    // Answered: a grant is returned, a partial one was given back; after a failure the
    // request may still be applied.
    place.may_hold = matches!(tried, Attempt::Failed(_));
    match tried {
        Attempt::Granted {
            token, valid_until, ..
        } => {
            return Ok(Grant {
                owner,
                token,
                valid_until,
            })
        }
        Attempt::Failed(error) if !error.is_transient() => return Err(error),
        Attempt::Busy { .. } | Attempt::Failed(_) => {}
    }
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    // Where the server wakes nobody (the standard layout without keyspace events): how
    // often to look again instead.
    let mut polling = Backoff::new(POLL_FIRST, POLL_MAX);
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
                let attempt = shared
                    .attempt(names, &owner, request.owner(), lease, waiter, mode)
                    .await;
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
                if shared.fair() {
                    // A fair grant took us out of the line; unfair (Redlock) waiters
                    // leave every line when `place` drops.
                    place.left(&granted);
                }
                return Ok(Grant {
                    owner,
                    token,
                    valid_until,
                });
            }
            Attempt::Busy {
                in_line,
                look_again,
                split,
            } => {
                failing_since = None;
                let in_a_line = in_line.iter().any(|l| *l);
                if in_a_line {
                    request.queued();
                }
                if split {
                    deaf = true;
                    jitter(SPLIT_RETRY)
                } else if !in_a_line {
                    jitter(NO_LINE_RETRY)
                } else if let Some(ttl) = look_again {
                    // Look again when the holder's lease runs out, in case it vanished
                    // without releasing, and so did every waiter ahead of us (and
                    // refresh the entry anyway).
                    (ttl + Duration::from_millis(1))
                        .min(shared.nap(jitter(SAFETY_NET), &mut polling))
                } else {
                    shared.nap(jitter(SAFETY_NET), &mut polling)
                }
            }
            Attempt::Failed(error) if error.is_transient() => {
                let since = *failing_since.get_or_insert(now);
                if now.duration_since(since) >= shared.config.retry_limit
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
        if shared.fair() && valid_until > Instant::now() + lease / 2 {
            place.left(&vec![true; shared.instances()]);
            return Ok(Grant {
                owner,
                token,
                valid_until,
            });
        }
    }
}

/// A waiter's place in the lines of one lock: its id, its wake-ups, the number of its latest
/// request, where it listens and where it may stand in line. Dropping it (the acquire returned
/// or was cancelled at any await point) leaves every line it may stand in, handing the turn
/// on if it was first (P7), and stops listening, which makes any entry left behind (a leave
/// that could not reach the server) dead at once.
pub(crate) struct PlaceInLine {
    shared: Arc<Shared>,
    names: Arc<LockNames>,
    id: String,
    /// This waiter's wake-ups, routed to it from its first [`PlaceInLine::listen`] on: a
    /// lock taken at the first try (the uncontended path) never listens, and so neither
    /// registers nor unregisters a route.
    wakes: Option<mpsc::UnboundedReceiver<Wake>>,
    /// The number of the latest request; grants name the request they answer.
    attempt: u64,
    /// Instances that confirmed they route this waiter's wake-ups to us.
    listening: Vec<bool>,
    /// The connection (generation of its slot) each confirmation came from: a new
    /// connection (a reconnect, a Sentinel failover) must be asked again.
    listened_on: Vec<u64>,
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
    pub(crate) fn new(
        shared: Arc<Shared>,
        names: Arc<LockNames>,
        lease: Duration,
        mode: LockMode,
    ) -> Self {
        // `<client>:<seq>[@mode]:<lease ms>`: scripts read the channel, the mode and the
        // lease from it.
        let id = format!(
            "{}{}:{}",
            shared.next_id(),
            mode_suffix(mode),
            lease.as_millis().max(1)
        );
        let count = shared.instances();
        PlaceInLine {
            shared,
            names,
            id,
            wakes: None,
            attempt: 0,
            listening: vec![false; count],
            listened_on: vec![0; count],
            asked_to_listen: vec![false; count],
            in_line: vec![false; count],
            owner: String::new(),
            may_hold: false,
        }
    }

    /// Listens for this waiter's wake-ups on every instance not listened on yet; enough when
    /// a quorum listens (an instance where it does not counts its entry dead, as if it were
    /// down). Like every Redlock call, it goes on with the majority that answers.
    pub(crate) async fn listen(&mut self) -> Result<()> {
        if self.wakes.is_none() {
            // Routed before any instance is asked to listen: no message is missed.
            let events = self.names.events.as_deref();
            self.wakes = Some(self.shared.waiters.register(&self.id, events));
        }
        let quorum = self.shared.config.quorum();
        let generations: Vec<u64> = (0..self.listening.len())
            .map(|index| self.shared.generation(index))
            .collect();
        for ((listening, on), now) in self
            .listening
            .iter_mut()
            .zip(&self.listened_on)
            .zip(&generations)
        {
            *listening &= on == now;
        }
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
        let (id, names) = (self.id.clone(), Arc::clone(&self.names));
        let call = move |node: Node| {
            let (id, names) = (id.clone(), names.clone());
            async move { node.listen(&id, &names).await }
        };
        let replies = self
            .shared
            .on_quorum(Some(&missing), None, call, |replies| {
                already + replies.iter().filter(|r| matches!(r, Some(Ok(())))).count() >= quorum
            })
            .await;
        let mut first_error = None;
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                Some(Ok(())) => {
                    self.listening[index] = true;
                    self.listened_on[index] = generations[index];
                }
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
                self.shared.config.endpoints[0].to_string(),
                "too few instances answered in time",
            )),
            _ => Ok(()),
        }
    }

    /// This waiter's id, which names its wake channel.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The client this waiter belongs to.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Sleeps until any message for this id (a watcher's: the lock changed, or a connection
    /// dropped and messages may have been missed), or until `until`.
    pub(crate) async fn any_wake(&mut self, until: Instant) {
        tokio::select! {
            _ = next_wake(&mut self.wakes) => {}
            _ = tokio::time::sleep_until(until) => {}
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
                wake = next_wake(&mut self.wakes) => match wake {
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
                    Some(Wake::Unsubscribed) => {
                        // Listen again before the next request (see `Node::listen`).
                        self.listening.fill(false);
                        return None;
                    }
                    Some(Wake::Released | Wake::Reconnected | Wake::Changed) | None => {
                        return None
                    }
                },
                _ = tokio::time::sleep_until(until) => return None,
            }
        }
    }
}

impl Drop for PlaceInLine {
    fn drop(&mut self) {
        if self.wakes.is_some() {
            self.shared.waiters.unregister(&self.id);
        }
        let may_hold = self.may_hold;
        if !may_hold && !self.in_line.iter().chain(&self.asked_to_listen).any(|l| *l) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        let (names, id) = (self.names.clone(), self.id.clone());
        let owner = std::mem::take(&mut self.owner);
        let in_line = std::mem::take(&mut self.in_line);
        let listening = std::mem::take(&mut self.asked_to_listen);
        let fair = self.shared.fair();
        // Without a runtime nothing can be sent: the entries die with our listening, and a
        // grant with its lease.
        spawn_clean_up(async move {
            join_all((0..in_line.len()).map(|index| {
                let (shared, names, id, owner) = (&shared, &names, &id, &owner);
                let (in_line, listening) = (in_line[index], listening[index]);
                async move {
                    // Each step goes after the request on the same connection, so it runs
                    // after it on the server.
                    if may_hold && !owner.is_empty() {
                        // The lease bounds a grant we could not give back.
                        until_done(shared, index, "giving back a cancelled grant", |node| {
                            async move { node.release(names, owner, fair).await.map(|_| ()) }
                        })
                        .await;
                    }
                    if in_line {
                        // Stopping to listen below makes the entry dead all the same.
                        until_done(shared, index, "leaving a waiting line", |node| async move {
                            node.leave(names, id, fair).await
                        })
                        .await;
                    }
                    if listening {
                        until_done(
                            shared,
                            index,
                            "stopping to listen for a waiter",
                            |node| async move { node.stop_listening(id, names).await },
                        )
                        .await;
                    }
                }
            }))
            .await;
        });
    }
}

/// The next wake-up of a waiter routed to `wakes`; never, for one that never listened (no
/// message is addressed to it).
async fn next_wake(wakes: &mut Option<mpsc::UnboundedReceiver<Wake>>) -> Option<Wake> {
    match wakes {
        Some(wakes) => wakes.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one clean-up `step` of a waiter that is gone on instance `index`, again after each
/// transient failure (a link reset, an instance restarting) until it is done, the client is
/// dropped, or [`ENTRY_TTL`] has passed (after which no entry of the waiter counts). Giving up
/// at the first error is not enough: a connection re-subscribes, once it reconnects, to every
/// channel whose unsubscribe the server did not confirm, and that would keep the gone
/// waiter's entry alive: a release would hand the lock to nobody.
async fn until_done<F, Fut>(shared: &Weak<Shared>, index: usize, what: &str, step: F)
where
    F: Fn(Node) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let give_up = Instant::now() + ENTRY_TTL;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        // A client that is gone took its connections along, and what they listened to.
        let Some(node) = shared.upgrade().map(|shared| shared.node_now(index)) else {
            return;
        };
        let outcome = match node {
            Ok(node) => step(node).await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => return,
            Err(error) if error.is_transient() && Instant::now() < give_up => {
                tracing::debug!(%error, "{what}: trying again");
                if let Some(shared) = shared.upgrade() {
                    shared.suspect_primary(index);
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                tracing::debug!(%error, "{what}: giving up");
                return;
            }
        }
    }
}

/// How long a waiter sleeps at most before looking again when no message comes (and the
/// holder's lease does not run out sooner): only a safety net for lost messages, since
/// releases and first-in-line changes are pushed by the server.
const SAFETY_NET: Duration = Duration::from_secs(10);
/// How long a waiter that lost a Redlock split vote waits at most before trying again: long
/// enough that its own give-back's wake-up and the winner's next round pass (a handoff takes
/// well under a millisecond on a local network), short enough that the split, about one
/// contended acquisition in a hundred, is not the whole tail of the wait.
const SPLIT_RETRY: Duration = Duration::from_millis(4);
/// How long a waiter that stands in no line (it reached no instance) waits at most before
/// trying again.
const NO_LINE_RETRY: Duration = Duration::from_millis(40);
/// How long a line entry counts without being refreshed. A live waiter refreshes its entry
/// every time it asks again, at least once per `SAFETY_NET`; an entry whose waiter is gone but
/// whose connection Redis still believes open (its host crashed: TCP keepalive takes minutes)
/// holds the line no longer than this.
const ENTRY_TTL: Duration = Duration::from_secs(30);

/// A random delay between half of `max` and `max`, so clients retrying together spread out.
fn jitter(max: Duration) -> Duration {
    Backoff::new(max, max).next_delay()
}
