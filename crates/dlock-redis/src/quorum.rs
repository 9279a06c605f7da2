//! Redlock plumbing: every call runs on all instances, each in a task of its own, and is
//! decided by the majority that answers; on a single instance that is the one answer. Also
//! the acquire attempt built on it: its fencing token, settled on a majority, and the
//! give-back of a grant that did not reach one.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use dlock_core::{LockError, LockMode, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::BACKEND;
use crate::layout::LockNames;
use crate::node::{AcquireReply, Node};
use crate::session::{Shared, STRAGGLER_GRACE};

/// What one attempt at all instances came to.
pub(crate) enum Attempt {
    /// A majority granted the lock.
    Granted {
        /// The fencing token, settled on a majority.
        token: u64,
        /// Until when the lock is surely ours: the lease less the time the majority took
        /// and the drift.
        valid_until: Instant,
        /// Instances where the lock was granted.
        granted: Vec<bool>,
    },
    /// Held by someone else, or another waiter's turn.
    Busy {
        /// Instances where this waiter now stands in line.
        in_line: Vec<bool>,
        /// When to look again at the latest: the holder's lease runs out (or a head that has
        /// not taken the free lock runs out of entry time), on the first instance to say so.
        look_again: Option<Duration>,
        /// Some instances granted it but not a majority (Redlock): retry soon.
        split: bool,
    },
    /// Too many instances failed or did not answer to decide.
    Failed(LockError),
}

impl Shared {
    ///   [`STRAGGLER_GRACE`]) to follow: an instance that is frozen or far slower than the
    ///   rest must not hold up the quorum,
    /// * `deadline` passed.
    ///
    /// Calls still running go on in the background (bounded by the connection's response
    /// timeout), so a command sent to a slow instance still reaches it, in order with the
    /// commands sent there before and after.
    pub(crate) async fn on_quorum<T, F, Fut>(
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
        let count = self.instances();
        let asked: Vec<bool> = (0..count)
            .map(|index| which.is_none_or(|w| w[index]))
            .collect();
        let mut replies: Vec<Option<Result<T>>> = (0..count).map(|_| None).collect();
        if count == 1 {
            // One instance: nothing to wait for in parallel, and no task to pay for.
            if asked[0] {
                let reply = match self.node_now(0) {
                    Ok(node) => call(node).await,
                    Err(error) => Err(error),
                };
                if matches!(&reply, Err(error) if error.is_transient()) {
                    // Behind Sentinel, the primary may have been replaced.
                    self.suspect_primary(0);
                }
                replies[0] = Some(reply);
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

    /// An owner-checked change (`call` answers whether the lock was still ours there) asked
    /// of every instance, decided as soon as a majority made it or more than a minority
    /// refused it, and never later than `deadline`. `Ok` when a majority made it; `not_held`
    /// when too many refused, or when nothing was learnt but refusals; otherwise the first
    /// instance's error.
    pub(crate) async fn owner_checked<F, Fut>(
        &self,
        deadline: Option<Instant>,
        call: F,
        not_held: impl Fn() -> LockError,
    ) -> Result<()>
    where
        F: Fn(Node) -> Fut,
        Fut: std::future::Future<Output = Result<bool>> + Send + 'static,
    {
        let (quorum, count) = (self.config.quorum(), self.instances());
        let tally = |made: bool, replies: &[Option<Result<bool>>]| {
            replies
                .iter()
                .filter(|reply| matches!(reply, Some(Ok(answer)) if *answer == made))
                .count()
        };
        let replies = self
            .on_quorum(None, deadline, call, |replies| {
                tally(true, replies) >= quorum || tally(false, replies) > count - quorum
            })
            .await;
        if tally(true, &replies) >= quorum {
            return Ok(());
        }
        if tally(false, &replies) > count - quorum {
            return Err(not_held());
        }
        Err(first_error(self.answers(replies)).unwrap_or_else(not_held))
    }

    /// The replies of [`Shared::on_quorum`], an instance that did not answer in time as a
    /// connection error.
    pub(crate) fn answers<T>(&self, replies: Vec<Option<Result<T>>>) -> Vec<Result<T>> {
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

    /// One try at the lock on every instance, under `owner`, stored with the owner
    /// `description`. With `waiter` (its id, how long
    /// its entry counts, the number of this request) it joins the line where the lock is
    /// busy; without, it only tries. A grant short of a majority is given back. `mode` is
    /// the one `owner` and the waiter id carry.
    pub(crate) async fn attempt(
        &self,
        names: &Arc<LockNames>,
        owner: &str,
        description: &str,
        lease: Duration,
        waiter: Option<(&str, Duration, u64)>,
        mode: LockMode,
    ) -> Attempt {
        let started = Instant::now();
        // Only the time until a majority answered counts against the lease, and no answer
        // after the lease (less drift) could still make a valid grant.
        let valid_until = started + lease.saturating_sub(self.drift(lease));
        let fair = self.fair();
        let quorum = self.config.quorum();
        let count = self.instances();
        let call = {
            // Shared, not copied, by each instance's call.
            let (names, owner) = (Arc::clone(names), Arc::<str>::from(owner));
            let description = Arc::<str>::from(description);
            let waiter = waiter.map(|(id, wait, number)| (Arc::<str>::from(id), wait, number));
            move |node: Node| {
                let (names, owner, waiter) = (names.clone(), owner.clone(), waiter.clone());
                let description = description.clone();
                async move {
                    let waiter = waiter
                        .as_ref()
                        .map(|(id, wait, number)| (&**id, *wait, *number));
                    node.acquire(&names, &owner, &description, lease, waiter, fair, mode)
                        .await
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
                    if !fair {
                        self.notify_watchers(names, &granted).await;
                    }
                    return Attempt::Granted {
                        token,
                        valid_until,
                        granted,
                    };
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

    /// Tells the watchers of a Redlock grant, on the instances that granted it, once its
    /// token is settled: sent after the raises on the same connections, so it runs after
    /// them, and not awaited (the grant costs no round trip more). A watcher woken earlier
    /// could read a term lower than the holder's (the quorum-th highest counter before the
    /// raises).
    async fn notify_watchers(&self, names: &LockNames, granted: &[bool]) {
        for (index, _) in granted.iter().enumerate().filter(|(_, g)| **g) {
            let Ok(node) = self.node_now(index) else {
                continue;
            };
            let names = names.clone();
            let mut call = Box::pin(async move { node.notify(&names).await });
            // Polled once here, the command is on the connection behind the raises.
            if futures::poll!(call.as_mut()).is_pending() {
                tokio::spawn(async move {
                    if let Err(error) = call.await {
                        tracing::debug!(%error, "telling watchers of a Redlock grant");
                    }
                });
            }
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
            .unwrap_or_else(|| LockError::protocol(BACKEND, "could not raise the fence counters")))
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

/// The first error among the replies of a quorum call, to report when no majority agreed.
pub(crate) fn first_error<T>(replies: Vec<Result<T>>) -> Option<LockError> {
    replies.into_iter().find_map(Result::err)
}
