//! How a waiter stands in line and is woken: one attempt to take a lock, its ephemeral
//! sequential node (created so that a lost reply cannot leak it), a watch on the one node
//! ahead of it whose leaving can change its turn (or, for a semaphore's permit, on the line
//! itself), and the node removed in the background if the attempt is dropped before it wins.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dlock_core::support::spawn_clean_up;
use dlock_core::{turn, AcquireRequest, Backoff, LockMode, Result, Turn};
use tokio::time::Instant;
use zookeeper_client::{Client, CreateMode, Error, EventType, OneshotWatcher, Stat};

use crate::config::Layout;
use crate::error::{is_connection, zk_error};
use crate::layout;
use crate::session::{Session, Shared};

/// Where an attempt stands after [`Attempt::wait_for_turn`].
pub(crate) enum Line {
    /// First in line: the lock is ours.
    Holder(Attempt),
    /// Not first, and the caller does not wait (`try_acquire`): the node was withdrawn.
    Busy,
    /// Our node is gone (the session ended, or someone deleted it): queue again.
    Dropped,
}

/// A contender's node in a key's line.
///
/// Until [`Attempt::keep`] hands the node over to a held lock, dropping the attempt (the
/// acquire returned an error or its future was dropped) deletes the node in the background,
/// so a cancelled waiter never delays the ones behind it.
pub(crate) struct Attempt {
    session: Arc<Session>,
    dir: String,
    /// `_c_{attempt id}-lock-`, then the full name once the server numbered it.
    name: String,
    /// The node's path once known.
    node: Option<String>,
    /// What the node holds: the owner description, so that `report` and foreign clients
    /// (kazoo's `contenders()`) can name the holder without another write.
    data: Vec<u8>,
    /// Whose nodes these are: names, order, and how parents are made.
    layout: Layout,
    /// How this attempt shares the key; its node's name says so too.
    mode: LockMode,
    kept: bool,
}

impl Attempt {
    /// A new attempt in `session` on the key node `dir` of `layout`, for `owner`, in `mode`.
    pub(crate) fn new(
        session: Arc<Session>,
        layout: Layout,
        dir: &str,
        owner: &str,
        mode: LockMode,
    ) -> Self {
        Attempt {
            session,
            dir: dir.to_owned(),
            name: layout::attempt_name(layout, mode),
            node: None,
            data: owner.as_bytes().to_vec(),
            layout,
            mode,
            kept: false,
        }
    }

    /// Creates the node, and the key's parents as container nodes if they are missing.
    ///
    /// The key's children are read in the same round trip: the `getChildren` is sent right
    /// behind the create, before its answer, and the server handles a session's requests in
    /// the order they were sent, so the list it returns already holds the new node. That
    /// list comes back with the node's `Stat` (`None` when the node was found again after a
    /// lost answer, or the list failed: the caller then reads the line itself).
    ///
    /// If the connection drops before the reply, the create may or may not have happened:
    /// the node is then looked for by the attempt's unique id rather than created twice.
    pub(crate) async fn create(&mut self) -> Result<(Stat, Option<Vec<String>>)> {
        let protected = format!("{}/{}", self.dir, self.name);
        let mut backoff = retry_backoff();
        loop {
            let client = self.session.client()?;
            let options = CreateMode::EphemeralSequential.with_acls(self.session.acls());
            let sent = Instant::now();
            // Both requests leave when called (the client sends on call, not on poll), in
            // this order.
            let created = client.create(&protected, &self.data, &options);
            let listed = client.list_children(&self.dir);
            match tokio::join!(created, listed) {
                (Ok((stat, sequence)), listed) => {
                    self.session.answered(sent);
                    self.name = format!("{}{sequence}", self.name);
                    self.node = Some(format!("{protected}{sequence}"));
                    return Ok((stat, listed.ok()));
                }
                (Err(error), _) => match error {
                    Error::NoNode => {
                        // kazoo's `ensure_path` makes persistent parents and then trusts they
                        // stay: a container the server removed once empty would fail kazoo's
                        // next create on that lock with `NoNodeError`.
                        let mode = match self.layout {
                            Layout::Kazoo => CreateMode::Persistent,
                            _ => CreateMode::Container,
                        };
                        let parents = mode.with_acls(self.session.acls());
                        match client.mkdir(&self.dir, &parents).await {
                            Ok(()) => {}
                            Err(error) if is_connection(&error) => {
                                tokio::time::sleep(backoff.next_delay()).await
                            }
                            Err(error) => return Err(zk_error(self.session.endpoint(), error)),
                        }
                    }
                    error if is_connection(&error) => {
                        if let Some(stat) = self.find().await? {
                            return Ok((stat, None));
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    error => return Err(zk_error(self.session.endpoint(), error)),
                },
            }
        }
    }

    /// Waits until [`turn`] grants this attempt's node the key, reading the line again each
    /// time something it waits for happens: `children` is the first read of the line, sent
    /// at `sent`. Without `wait`, a node that is not granted at once is withdrawn. When
    /// `request`'s deadline passes, the node is withdrawn and the error is `Timeout`; when
    /// the line holds a contender this one cannot share it with, the node is withdrawn and
    /// the error is [`IncompatibleMode`](dlock_core::LockError::IncompatibleMode).
    ///
    /// - [`Turn::WaitFor`]: an exists-watch on that one node (the predecessor, for a mutex),
    ///   so a release wakes only the contenders it concerns.
    /// - [`Turn::WaitForAny`] (a semaphore's permit): a children watch on the key node, set
    ///   by the read of the line itself, so no departure between read and watch is missed.
    pub(crate) async fn wait_for_turn(
        self,
        client: &Client,
        children: std::result::Result<Vec<String>, Error>,
        mut sent: Instant,
        request: &AcquireRequest<'_>,
        wait: bool,
        counters: &Shared,
    ) -> Result<Line> {
        let session = Arc::clone(&self.session);
        let dir = self.dir.clone();
        let mut queued = false;
        let mut backoff = retry_backoff();
        // The line as last read, and the children watch that read set, if it set one.
        let mut children = children.map(|names| (names, None::<OneshotWatcher>));
        loop {
            let (names, line_watch) = match children {
                Ok(read) => {
                    session.answered(sent);
                    read
                }
                Err(error) if is_connection(&error) => {
                    if session.retired_reason().is_some() {
                        return Ok(Line::Dropped);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = sleep_until(request.deadline) => return Err(request.timeout()),
                    }
                    sent = Instant::now();
                    children = client.list_children(&dir).await.map(|names| (names, None));
                    continue;
                }
                // The key node is gone, so our node in it is too: queue again.
                Err(Error::NoNode) => return Ok(Line::Dropped),
                Err(error) => return Err(zk_error(session.endpoint(), error)),
            };
            let line = layout::line(self.layout, &names);
            let Some(position) = line.iter().position(|c| c.name == self.name()) else {
                // Our node is gone (deleted from outside): queue again.
                return Ok(Line::Dropped);
            };
            let ahead: Vec<LockMode> = line[..position].iter().map(|c| c.mode).collect();
            // `Some(i)`: wait for the contender at `i` to go; `None`: for any to go.
            let awaited = match turn(request.key.as_str(), self.mode, &ahead) {
                Ok(Turn::Granted) => break,
                Ok(Turn::WaitFor(index)) => Some(index),
                Ok(Turn::WaitForAny) => None,
                Err(error) => {
                    self.withdraw().await;
                    return Err(error);
                }
            };
            if !wait {
                self.withdraw().await;
                return Ok(Line::Busy);
            }
            if !queued {
                request.queued();
                queued = true;
            }
            let woken = match awaited {
                None => match line_watch {
                    Some(watcher) => Some((watcher, None)),
                    // Read the line again, this time with a watch: what it shows is what
                    // the watch reports changes of.
                    None => {
                        sent = Instant::now();
                        children = client
                            .list_and_watch_children(&dir)
                            .await
                            .map(|(names, watcher)| (names, Some(watcher)));
                        continue;
                    }
                },
                Some(index) => {
                    let node = format!("{dir}/{}", line[index].name);
                    // Next in line: the awaited node's deletion alone gives us the turn,
                    // since every node made later is numbered behind ours. Our own node is
                    // watched in the same round trip, so that its deletion (which the server
                    // reports before any later one) is known when the turn comes, without
                    // reading the line again.
                    let next_in_line = self.next_in_line(request, &ahead, index);
                    let own = next_in_line.then_some(self.node.as_deref()).flatten();
                    let (awaited, own) = match own {
                        Some(own) => {
                            let (awaited, own) = tokio::join!(
                                client.check_and_watch_stat(&node),
                                client.check_and_watch_stat(own)
                            );
                            (awaited, Some(own))
                        }
                        None => (client.check_and_watch_stat(&node).await, None),
                    };
                    let own = match own {
                        Some(Ok((None, _))) => return Ok(Line::Dropped),
                        Some(Ok((Some(_), watcher))) => Some(watcher),
                        // Not known to be there: the line is read again after the wake-up.
                        Some(Err(_)) | None => None,
                    };
                    match awaited {
                        // Gone already, and ours still there: our turn.
                        Ok((None, _)) if own.is_some() => break,
                        Ok((None, _)) => None,
                        Ok((Some(_), watcher)) => Some((watcher, own)),
                        Err(error) if is_connection(&error) => {
                            if session.retired_reason().is_some() {
                                return Ok(Line::Dropped);
                            }
                            tokio::time::sleep(backoff.next_delay()).await;
                            None
                        }
                        Err(error) => return Err(zk_error(session.endpoint(), error)),
                    }
                }
            };
            if let Some((watcher, own)) = woken {
                let own_watched = own.is_some();
                let own_changed = async move {
                    match own {
                        Some(own) => own.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // Polled first: an event about our own node came before the awaited one.
                    biased;
                    _ = own_changed => {}
                    event = watcher.changed() => {
                        counters.wakeups.fetch_add(1, Ordering::Relaxed);
                        if own_watched && event.event_type == EventType::NodeDeleted {
                            break;
                        }
                    }
                    _ = sleep_until(request.deadline) => {
                        self.withdraw().await;
                        return Err(request.timeout());
                    }
                    _ = session.retired() => return Ok(Line::Dropped),
                }
            }
            counters.rechecks.fetch_add(1, Ordering::Relaxed);
            sent = Instant::now();
            children = match awaited {
                Some(_) => client.list_children(&dir).await.map(|names| (names, None)),
                // A permit waiter most likely waits again: watch the line with the same read.
                None => client
                    .list_and_watch_children(&dir)
                    .await
                    .map(|(names, watcher)| (names, Some(watcher))),
            };
        }
        Ok(Line::Holder(self))
    }

    /// Whether the contender at `index` of `ahead` is the last one our turn waits for: once
    /// it leaves, `turn` grants ours.
    fn next_in_line(&self, request: &AcquireRequest<'_>, ahead: &[LockMode], index: usize) -> bool {
        let mut rest = ahead.to_vec();
        rest.remove(index);
        matches!(
            turn(request.key.as_str(), self.mode, &rest),
            Ok(Turn::Granted)
        )
    }

    /// The node's name within the key node.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The attempt won: the node now belongs to the held lock.
    pub(crate) fn keep(mut self) -> String {
        self.kept = true;
        self.node.take().unwrap_or_default()
    }

    /// Leaves the line now, waiting for the server (bounded), so whoever comes next does not
    /// see this node.
    ///
    /// The removal runs as a task of its own: if this future is dropped before it is done (the
    /// core cuts an acquire off at its wait limit plus a grace, which a server restart can
    /// outlast), the removal goes on in the background instead of leaving the node in line
    /// until the session ends.
    pub(crate) async fn withdraw(mut self) {
        self.kept = true;
        let (session, dir, name, node) = (
            Arc::clone(&self.session),
            std::mem::take(&mut self.dir),
            std::mem::take(&mut self.name),
            self.node.take(),
        );
        let _ = tokio::spawn(remove(session, dir, name, node)).await;
    }

    /// Looks for this attempt's node by its unique id, retrying while the connection is down.
    async fn find(&mut self) -> Result<Option<Stat>> {
        let mut backoff = retry_backoff();
        loop {
            let client = self.session.client()?;
            if let Err(error) = catch_up(&client, &self.dir).await {
                tokio::time::sleep(backoff.next_delay()).await;
                if is_connection(&error) {
                    continue;
                }
                return Err(zk_error(self.session.endpoint(), error));
            }
            match client.list_children(&self.dir).await {
                Ok(children) => {
                    let Some(name) = children.into_iter().find(|c| c.starts_with(&self.name))
                    else {
                        return Ok(None);
                    };
                    let node = format!("{}/{name}", self.dir);
                    match client.check_stat(&node).await {
                        Ok(Some(stat)) => {
                            self.name = name;
                            self.node = Some(node);
                            return Ok(Some(stat));
                        }
                        Ok(None) => return Ok(None),
                        Err(error) if is_connection(&error) => {}
                        Err(error) => return Err(zk_error(self.session.endpoint(), error)),
                    }
                }
                Err(Error::NoNode) => return Ok(None),
                Err(error) if is_connection(&error) => {}
                Err(error) => return Err(zk_error(self.session.endpoint(), error)),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let (session, dir, name, node) = (
            Arc::clone(&self.session),
            std::mem::take(&mut self.dir),
            std::mem::take(&mut self.name),
            self.node.take(),
        );
        // Without a runtime the node stays until the session ends.
        spawn_clean_up(remove(session, dir, name, node));
    }
}

/// Deletes an attempt's node (found by its id if its path is unknown), retrying connection
/// losses while the session lives and for at most one session timeout: past that the node
/// goes with the session anyway.
async fn remove(session: Arc<Session>, dir: String, name: String, node: Option<String>) {
    let give_up = Instant::now() + session.timeout().max(Duration::from_secs(1));
    let mut backoff = retry_backoff();
    let mut node = node;
    while Instant::now() < give_up {
        let Ok(client) = session.client() else {
            return;
        };
        let path = match &node {
            Some(path) => path.clone(),
            None => match listed(&client, &dir).await {
                Ok(children) => match children.into_iter().find(|c| c.starts_with(&name)) {
                    Some(found) => {
                        let path = format!("{dir}/{found}");
                        node = Some(path.clone());
                        path
                    }
                    None => return,
                },
                Err(error) if is_connection(&error) => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(_) => return,
            },
        };
        match client.delete(&path, None).await {
            Ok(()) | Err(Error::NoNode) => return,
            Err(error) if is_connection(&error) => tokio::time::sleep(backoff.next_delay()).await,
            Err(error) => {
                tracing::warn!(node = %path, %error, "cannot remove an abandoned lock attempt; it goes when the session ends");
                return;
            }
        }
    }
}

/// Brings the connected server up to date with the leader before its children of `dir` are
/// read, when looking for a node whose create may have been lost with its answer: the client
/// may have reconnected to a follower that has not applied that create yet, and a node not
/// found there would be created again behind the first, which would then block its own
/// session's attempt until the session ends. One round trip, only on that rare path. A
/// missing `dir` is no error: nothing was created in it.
async fn catch_up(client: &zookeeper_client::Client, dir: &str) -> std::result::Result<(), Error> {
    match client.sync(dir).await {
        Ok(()) | Err(Error::NoNode) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The children of `dir`, read after [`catch_up`].
async fn listed(
    client: &zookeeper_client::Client,
    dir: &str,
) -> std::result::Result<Vec<String>, Error> {
    catch_up(client, dir).await?;
    client.list_children(dir).await
}

/// Retries after a connection loss: quick at first, at most a second apart.
pub(crate) fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
}

/// Sleeps until `deadline`, or for ever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
