//! One Redis instance (or one Redis Cluster) as the backend sees it: a self-reconnecting
//! multiplexed connection (RESP3, so wake-up messages arrive on the same connection) and
//! typed calls of the scripts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dlock_core::support::{lock, TlsFiles};
use dlock_core::{LockError, LockMode, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{ConnectionInfo, PushInfo, PushKind, TlsCertificates, Value};
use tokio::sync::mpsc;

use crate::config::{Endpoint, RedisConfig};
use crate::error::{to_lock_error, unexpected, wrong_type, BACKEND};
use crate::layout::{cluster_wake_waiter, keyspace_events_cover, LockNames};
use crate::link::{cluster_slot, Link};
use crate::scripts::{scripts, Scripts};

/// Why a waiter was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The holder released the lock and handed it to this waiter, with this token, in answer
    /// to the waiter's request with this number.
    Granted {
        /// The fencing token.
        token: u64,
        /// The number of the waiter's request the hand-over found in the line.
        attempt: u64,
    },
    /// The holder released the lock and this waiter is first in line.
    Released,
    /// This waiter is now first in line; the holder's lease runs this much longer (`None`:
    /// the lock key has no expiry, so only a release frees it).
    First(Option<Duration>),
    /// A connection dropped: messages may have been missed, look again.
    Reconnected,
    /// The server stopped this waiter's listening: on a Redis Cluster, the lock's slot
    /// moved to another node (resharding, failover), which drops the sharded subscriptions
    /// of the slot. Listen again (the cluster client sends it to the slot's new owner), then
    /// look again.
    Unsubscribed,
    /// The lock this watcher watches changed (a grant, a release, a new owner description),
    /// or, in the standard layout, its key had a keyspace event (deleted, expired, set…).
    Changed,
}

/// What the acquire script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireReply {
    /// Ours, with this fence counter value.
    Granted(u64),
    /// Held by someone else (or another waiter's turn).
    Waiting {
        /// The holder's remaining lease, if the key has one; with `look_again`, when to look
        /// again at the latest.
        holder_ttl: Option<Duration>,
        /// The waiter stands in line and should look again after `holder_ttl` (the holder's
        /// lease, or, the lock being free, the time left of the entry of a head that has not
        /// taken it yet), in case those ahead of it are gone without a word by then.
        look_again: bool,
    },
}

/// The waiters of one client, shared by the wake dispatchers of all its instances.
#[derive(Default)]
pub(crate) struct Waiters {
    senders: Mutex<HashMap<String, Route>>,
}

/// Where the wake-ups of one waiter go, and the keyspace channel it also hears (the standard
/// layout's: every waiter and watcher of the key hears each of its events).
struct Route {
    sender: mpsc::UnboundedSender<Wake>,
    events: Option<String>,
}

/// What every keyspace channel's name starts with.
const KEYSPACE_PREFIX: &str = "__keyspace@";

impl Waiters {
    /// Starts routing wake-ups for `waiter` to the returned receiver, and the events of the
    /// keyspace channel `events` (if any) as [`Wake::Changed`].
    pub(crate) fn register(
        &self,
        waiter: &str,
        events: Option<&str>,
    ) -> mpsc::UnboundedReceiver<Wake> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let route = Route {
            sender,
            events: events.map(str::to_owned),
        };
        self.lock().insert(waiter.to_owned(), route);
        receiver
    }

    /// Stops routing wake-ups for `waiter`.
    pub(crate) fn unregister(&self, waiter: &str) {
        self.lock().remove(waiter);
    }

    /// Tells every waiter that messages may have been missed (the client now talks to
    /// another instance: a Sentinel failover), so it looks again and listens anew.
    pub(crate) fn reconnected(&self) {
        for route in self.lock().values() {
            let _ = route.sender.send(Wake::Reconnected);
        }
    }

    fn dispatch(&self, push: PushInfo) {
        match push.kind {
            // A sharded channel's message (Redis Cluster) reads as a plain one's.
            PushKind::Message | PushKind::SMessage => {
                if let Some(Value::BulkString(channel)) = push.data.first() {
                    if channel.starts_with(KEYSPACE_PREFIX.as_bytes()) {
                        // A keyspace event: the payload is only the command's name.
                        for route in self.lock().values() {
                            if route.events.as_deref().map(str::as_bytes)
                                == Some(channel.as_slice())
                            {
                                let _ = route.sender.send(Wake::Changed);
                            }
                        }
                        return;
                    }
                }
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                let Some(wake) = parse_wake(payload) else {
                    tracing::debug!("ignoring an unexpected wake-up message");
                    return;
                };
                if let Some(route) = self.lock().get(wake.0) {
                    let _ = route.sender.send(wake.1);
                }
            }
            PushKind::Disconnection => {
                for route in self.lock().values() {
                    let _ = route.sender.send(Wake::Reconnected);
                }
            }
            PushKind::SUnsubscribe => {
                // The server drops a sharded channel's listeners when its slot moves to
                // another node (resharding, failover), and the cluster client forgets the
                // subscription too. (Also the answer to a waiter's own unsubscribe, when it
                // no longer listens for wake-ups.)
                let waiter = match push.data.first() {
                    Some(Value::BulkString(channel)) => std::str::from_utf8(channel)
                        .ok()
                        .and_then(cluster_wake_waiter),
                    _ => None,
                };
                if let Some(route) =
                    waiter.and_then(|waiter| self.lock().get(waiter).map(|r| r.sender.clone()))
                {
                    let _ = route.send(Wake::Unsubscribed);
                }
            }
            _ => {}
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Route>> {
        lock(&self.senders)
    }
}

/// `<waiter> g <token> <attempt>`, `<waiter> r 0`, `<waiter> h <ms or -1>`, `<watcher> c 0`
/// → (waiter or watcher, wake).
fn parse_wake(payload: &[u8]) -> Option<(&str, Wake)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(' ');
    let (waiter, kind, value) = (parts.next()?, parts.next()?, parts.next()?);
    let wake = match kind {
        "g" => Wake::Granted {
            token: value.parse().ok()?,
            attempt: parts.next()?.parse().ok()?,
        },
        "r" => Wake::Released,
        "c" => Wake::Changed,
        "h" => match value.parse::<i64>().ok()? {
            -1 => Wake::First(None),
            ms => Wake::First(Some(Duration::from_millis(u64::try_from(ms).ok()?))),
        },
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((waiter, wake))
}

/// One instance: its connection and where it is (for error messages, without credentials).
#[derive(Clone)]
pub(crate) struct Node {
    connection: Link,
    endpoint: String,
    /// The scripts of the client's layout.
    scripts: &'static Scripts,
    /// Whether waiters and watchers are woken by the server here: always in dlock's layout
    /// (its scripts tell them); in the standard layout, when the instance publishes the
    /// keyspace events of lock keys (read with `CONFIG GET` when connecting).
    wakes: bool,
    /// Who listens on which channel of this connection: channels are shared by the waiters
    /// and watchers of one key in the standard layout, so the connection subscribes for the
    /// first and unsubscribes after the last.
    subscriptions: Arc<Mutex<HashMap<String, Subscribers>>>,
}

/// The waiters and watchers (ids) listening on one channel of one connection; the lock is
/// held across a `SUBSCRIBE` or `UNSUBSCRIBE`, so those are sent in the order the set changes.
type Subscribers = Arc<tokio::sync::Mutex<HashSet<String>>>;

impl Node {
    /// Connects and routes the wake-up messages that arrive on the connection to `waiters`.
    /// The connection reconnects by itself and then listens again on every channel it
    /// listened on (each waiter's, see [`Node::listen`]). On a Redis Cluster
    /// ([`RedisConfig::cluster`]) `endpoint` is ignored: the client finds the cluster from
    /// every seed node of the configuration.
    pub(crate) async fn connect(
        config: &RedisConfig,
        endpoint: &Endpoint,
        waiters: Arc<Waiters>,
    ) -> Result<Node> {
        let name = if config.cluster {
            seed_names(config)
        } else {
            endpoint.to_string()
        };
        let dispatch = move |push: PushInfo| -> std::result::Result<(), ()> {
            waiters.dispatch(push);
            Ok(())
        };
        let scripts = scripts(config.layout, config.cluster);
        let connect = async {
            let connection = if config.cluster {
                Link::Cluster(connect_cluster(config, dispatch).await?)
            } else {
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500))
                    .set_push_sender(dispatch)
                    .set_automatic_resubscription();
                let client = client_for(config, endpoint, false)?;
                Link::Instance(ConnectionManager::new_with_config(client, manager_config).await?)
            };
            load_scripts(&connection, scripts).await?;
            // A cluster's keyspace events are each node's own, for its own keys; the
            // standard layout's waiters poll there rather than follow them.
            let wakes = config.layout.has_line()
                || (!config.cluster && publishes_keyspace_events(&connection).await);
            Ok::<_, redis::RedisError>((connection, wakes))
        };
        let (connection, wakes) = tokio::time::timeout(config.connect_timeout * 2, connect)
            .await
            .map_err(|_| LockError::connection(&name, "timed out connecting"))?
            .map_err(|e| LockError::connection(&name, e))?;
        Ok(Node {
            connection,
            endpoint: name,
            scripts,
            wakes,
            subscriptions: Arc::default(),
        })
    }

    /// Whether the server wakes this client's waiters and watchers on this instance (see
    /// [`Node::listen`]); where it does not, they poll.
    pub(crate) fn wakes(&self) -> bool {
        self.wakes
    }

    /// The instance's address, `host:port`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs the acquire script. `waiter` is `(id, how long its entry counts, the number of
    /// this request)`; `None` only tries. `description` is the owner description stored
    /// with the lock (and with the waiter's entry, for a hand-over). `mode` is the mode the
    /// ids carry, for the error when the key is used in another.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn acquire(
        &self,
        names: &LockNames,
        owner: &str,
        description: &str,
        lease: Duration,
        waiter: Option<(&str, Duration, u64)>,
        fair: bool,
        mode: LockMode,
    ) -> Result<AcquireReply> {
        let (waiter_id, wait, attempt) = waiter.unwrap_or(("", Duration::ZERO, 0));
        let reply: Vec<i64> = self
            .scripts
            .acquire
            .key(&names.lock)
            .key(&names.fence)
            .key(&names.queue)
            .key(&names.deadlines)
            .key(&names.index)
            .key(&names.holders)
            .key(&names.watchers)
            .arg(owner)
            .arg(millis(lease))
            .arg(waiter_id)
            .arg(millis(wait).max(1))
            .arg(if fair { 1 } else { 0 })
            .arg(&names.wake_prefix)
            .arg(attempt)
            .arg(description)
            .arg(&names.member)
            .arg(&names.holder_prefix)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        match reply.as_slice() {
            [1, token] if *token > 0 => Ok(AcquireReply::Granted(*token as u64)),
            [0, ttl, look_again] => Ok(AcquireReply::Waiting {
                holder_ttl: (*ttl >= 0).then(|| Duration::from_millis(*ttl as u64)),
                look_again: *look_again == 1,
            }),
            [-1] => Err(wrong_type(names)),
            [-2, found] => Err(LockError::IncompatibleMode {
                key: names.member.clone(),
                requested: mode,
                found: match *found {
                    0 => LockMode::Exclusive,
                    -1 => LockMode::Shared,
                    permits => LockMode::Permit(u32::try_from(permits).unwrap_or(u32::MAX)),
                },
            }),
            other => Err(unexpected("acquire", other)),
        }
    }

    /// Runs the release script: `Ok(true)` released, `Ok(false)` not ours. With a `fair`
    /// line the lock goes straight to the first live waiter.
    pub(crate) async fn release(&self, names: &LockNames, owner: &str, fair: bool) -> Result<bool> {
        let reply = self
            .hand_on(&self.scripts.release, names, owner, fair)
            .await?;
        owned(reply, names, "release")
    }

    /// Runs the extend script: `Ok(true)` extended to `ttl`, `Ok(false)` not ours.
    pub(crate) async fn extend(
        &self,
        names: &LockNames,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let reply: i64 = self
            .scripts
            .extend
            .key(names.key_of(owner))
            .key(&names.fence)
            .key(&names.index)
            .key(&names.holders)
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        owned(reply, names, "extend")
    }

    /// Renews every `(names, owner, ttl)`: in one script call, or on a Redis Cluster in one
    /// per slot (a script may touch one slot only), all sent at once; one flag per lock.
    pub(crate) async fn renew(&self, locks: &[(&LockNames, &str, Duration)]) -> Result<Vec<bool>> {
        if !self.connection.is_cluster() {
            return self.renew_together(locks).await;
        }
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (at, (names, ..)) in locks.iter().enumerate() {
            by_slot
                .entry(cluster_slot(&names.lock))
                .or_default()
                .push(at);
        }
        let calls = by_slot.values().map(|group| {
            let group: Vec<_> = group.iter().map(|&at| locks[at]).collect();
            async move { self.renew_together(&group).await }
        });
        let replies = futures::future::try_join_all(calls).await?;
        let mut flags = vec![false; locks.len()];
        for (group, reply) in by_slot.values().zip(replies) {
            for (&at, flag) in group.iter().zip(reply) {
                flags[at] = flag;
            }
        }
        Ok(flags)
    }

    /// Renews every `(names, owner, ttl)` in one script call; one flag per lock.
    async fn renew_together(&self, locks: &[(&LockNames, &str, Duration)]) -> Result<Vec<bool>> {
        let script = &self.scripts.renew;
        let mut invocation = script.prepare_invoke();
        for (names, owner, ttl) in locks {
            invocation
                .key(names.key_of(owner))
                .key(&names.fence)
                .key(&names.index)
                .key(&names.holders)
                .arg(*owner)
                .arg(millis(*ttl));
        }
        let reply: Vec<i64> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        if reply.len() != locks.len() {
            return Err(LockError::protocol(
                BACKEND,
                format!(
                    "renewal of {} locks answered {} flags",
                    locks.len(),
                    reply.len()
                ),
            ));
        }
        Ok(reply.into_iter().map(|flag| flag == 1).collect())
    }

    /// Takes `waiter` out of the line, handing its turn on if it was first, and gives back
    /// the lock if it was handed to `waiter` meanwhile.
    /// Nothing to do where the layout keeps no line.
    pub(crate) async fn leave(&self, names: &LockNames, waiter: &str, fair: bool) -> Result<()> {
        if let Some(leave) = &self.scripts.leave {
            self.hand_on(leave, names, waiter, fair).await?;
        }
        Ok(())
    }

    /// Starts listening for the wake-ups of `waiter` on the lock `names`: in dlock's layout
    /// on the waiter's own channel (scripts count a waiter in line as alive only while its
    /// channel has a listener, so this must answer before the waiter joins a line); in the
    /// standard layout on the lock key's keyspace channel, where the instance publishes its
    /// events (so this must answer before the waiter looks at the key), and nowhere where it
    /// does not (the waiter polls). The connection listens again by itself after a reconnect.
    pub(crate) async fn listen(&self, waiter: &str, names: &LockNames) -> Result<()> {
        let Some(channel) = self.channel(waiter, names) else {
            return Ok(());
        };
        let subscribers = self.subscribers(&channel);
        let mut listening = subscribers.lock().await;
        // A waiter asking again for a channel it listens on was told the server dropped it.
        if listening.is_empty() || listening.contains(waiter) {
            let subscribed = self.connection.subscribe(&channel).await;
            if let Err(error) = subscribed {
                drop(listening);
                self.forget_if_unused(&channel, subscribers);
                return Err(to_lock_error(&self.endpoint, error));
            }
        }
        listening.insert(waiter.to_owned());
        Ok(())
    }

    /// Stops listening for `waiter` on the lock `names`: in dlock's layout, from now on its
    /// entries, wherever they still are, are dead. The connection unsubscribes once nobody
    /// listens on the channel any more (also when `waiter`'s own subscription was never
    /// confirmed: its request may have reached the server).
    pub(crate) async fn stop_listening(&self, waiter: &str, names: &LockNames) -> Result<()> {
        let Some(channel) = self.channel(waiter, names) else {
            return Ok(());
        };
        let subscribers = self.subscribers(&channel);
        let mut listening = subscribers.lock().await;
        listening.remove(waiter);
        if listening.is_empty() {
            self.connection
                .unsubscribe(&channel)
                .await
                .map_err(|e| to_lock_error(&self.endpoint, e))?;
        }
        drop(listening);
        self.forget_if_unused(&channel, subscribers);
        Ok(())
    }

    /// The channel `waiter` listens on for news of the lock `names` on this instance:
    /// its own, or the lock key's keyspace channel; `None` where nothing is published.
    fn channel(&self, waiter: &str, names: &LockNames) -> Option<String> {
        match &names.events {
            None => Some(format!("{}{waiter}", names.wake_prefix)),
            Some(events) => self.wakes.then(|| events.clone()),
        }
    }

    /// Who listens on `channel` here (an empty set for a channel nobody listens on).
    fn subscribers(&self, channel: &str) -> Subscribers {
        let mut all = lock(&self.subscriptions);
        Arc::clone(all.entry(channel.to_owned()).or_default())
    }

    /// Drops the set of `channel` once it is empty and nobody else holds it (sets are only
    /// handed out under the map's lock, so nobody can take it meanwhile).
    fn forget_if_unused(&self, channel: &str, subscribers: Subscribers) {
        let mut all = lock(&self.subscriptions);
        let unused = Arc::strong_count(&subscribers) == 2
            && subscribers
                .try_lock()
                .is_ok_and(|listening| listening.is_empty());
        if unused {
            all.remove(channel);
        }
    }

    /// Runs a script that takes `member` out of the lock (release) or the line (leave) and
    /// hands the turn to the next live waiter: both see every key of the lock.
    async fn hand_on(
        &self,
        script: &redis::Script,
        names: &LockNames,
        member: &str,
        fair: bool,
    ) -> Result<i64> {
        script
            .key(&names.lock)
            .key(&names.fence)
            .key(&names.queue)
            .key(&names.deadlines)
            .key(&names.index)
            .key(&names.holders)
            .key(&names.watchers)
            .arg(member)
            .arg(&names.wake_prefix)
            .arg(if fair { 1 } else { 0 })
            .arg(&names.member)
            .arg(&names.holder_prefix)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))
    }

    /// Replaces the owner description stored with the lock held by `owner`, if it still
    /// holds it: `Ok(true)` replaced, `Ok(false)` not ours. Watchers hear of it.
    pub(crate) async fn update_owner(
        &self,
        names: &LockNames,
        owner: &str,
        description: &str,
    ) -> Result<bool> {
        let reply: i64 = self
            .scripts
            .update_owner
            .key(names.key_of(owner))
            .key(&names.watchers)
            .arg(owner)
            .arg(description)
            .arg(&names.wake_prefix)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        owned(reply, names, "update_owner")
    }

    /// Lists `watcher` (which already listens on its wake channel) among those told when
    /// the lock changes, for `ttl` at least. Nothing to do where the layout keeps no
    /// watchers set (the key's keyspace events, or polling, tell the watcher instead).
    pub(crate) async fn watch(
        &self,
        names: &LockNames,
        watcher: &str,
        ttl: Duration,
    ) -> Result<()> {
        let Some(watch) = &self.scripts.watch else {
            return Ok(());
        };
        let _: i64 = watch
            .key(&names.watchers)
            .arg(watcher)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        Ok(())
    }

    /// Tells the lock's watchers that it changed (nothing to do where the layout keeps no
    /// watchers set).
    pub(crate) async fn notify(&self, names: &LockNames) -> Result<()> {
        let Some(notify) = &self.scripts.notify else {
            return Ok(());
        };
        let _: i64 = notify
            .key(&names.watchers)
            .arg(&names.wake_prefix)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        Ok(())
    }

    /// Raises the fence counter to at least `token`.
    pub(crate) async fn raise_fence(&self, names: &LockNames, token: u64) -> Result<()> {
        let _: i64 = self
            .scripts
            .raise_fence
            .key(&names.fence)
            .key(&names.lock)
            .arg(token)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        Ok(())
    }
}

/// What [`Node::inspect`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inspection {
    /// The holder's remaining lease; `None` when the lock is free.
    pub(crate) holder_ttl: Option<Duration>,
    /// The fence counter: the holder's token while the lock is held.
    pub(crate) fence: u64,
    /// How many entries the waiting line has (dead ones included until skipped); `None`
    /// where no line is kept (the standard layout).
    pub(crate) waiters: Option<usize>,
    /// What the lock's value says of its holder, if it says it.
    pub(crate) holder: Option<Holder>,
}

/// The holder as the lock's value names it: `<owner id>\n<acquired at ms>\n<description>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The owner id (decides ownership).
    pub(crate) id: String,
    /// When it took the lock, server milliseconds since the Unix epoch.
    pub(crate) acquired_ms: u64,
    /// Its owner description.
    pub(crate) description: String,
}

impl Holder {
    /// Reads a lock's value; `None` for a bare owner id (an older version's, or set by hand).
    pub(crate) fn parse(value: &str) -> Option<Holder> {
        let mut parts = value.splitn(3, '\n');
        let (id, ms, description) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Holder {
            id: id.to_owned(),
            acquired_ms: ms.parse().ok()?,
            description: description.to_owned(),
        })
    }
}

impl Node {
    /// Reads the lock's state. With `listing`, a lock found free also leaves the index
    /// (its holder expired without a release); otherwise nothing changes.
    pub(crate) async fn inspect(&self, names: &LockNames, listing: bool) -> Result<Inspection> {
        let script = &self.scripts.inspect;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&names.lock)
            .key(&names.fence)
            .key(&names.queue)
            .key(&names.holders)
            .arg(&names.holder_prefix);
        if listing {
            invocation.key(&names.index).arg(&names.member);
        }
        let (ttl, fence, waiters, value): (i64, i64, i64, String) = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        Ok(Inspection {
            // -1: a key without expiry (not one of ours, or tampered with): held, lease unknown.
            holder_ttl: (ttl != -2).then(|| Duration::from_millis(ttl.max(0) as u64)),
            fence: fence.max(0) as u64,
            waiters: usize::try_from(waiters).ok(),
            holder: Holder::parse(&value),
        })
    }

    /// Up to `limit` keys of the index `index` that start with `key_prefix` and come after
    /// `after`, in byte order: one `ZRANGEBYLEX`, O(log n + limit).
    pub(crate) async fn index_page(
        &self,
        index: &str,
        key_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut from = format!("[{key_prefix}").into_bytes();
        if let Some(after) = after.filter(|a| *a >= key_prefix) {
            from = format!("({after}").into_bytes();
        }
        // Keys are UTF-8, which has no 0xFF byte: every key starting with the prefix sorts
        // before the prefix followed by 0xFF.
        let mut to = format!("[{key_prefix}").into_bytes();
        to.push(0xFF);
        let to: &[u8] = if key_prefix.is_empty() { b"+" } else { &to };
        redis::cmd("ZRANGEBYLEX")
            .arg(index)
            .arg(from)
            .arg(to)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))
    }

    /// One `PING`, timed.
    pub(crate) async fn ping(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| to_lock_error(&self.endpoint, e))?;
        Ok(started.elapsed())
    }
}

/// Loads every script now, so that the first calls do not each learn with `NOSCRIPT` that
/// they must load it and send it again: such a resend would overtake commands sent after it
/// (a Redlock instance that was frozen must run a give-back after the acquire it undoes).
async fn load_scripts(connection: &Link, all: &Scripts) -> redis::RedisResult<()> {
    let loads = all.all().into_iter().map(|script| {
        let mut connection = connection.clone();
        async move { script.load_async(&mut connection).await }
    });
    futures::future::try_join_all(loads).await?;
    Ok(())
}

/// Whether the instance publishes the keyspace events of every change of a key that the
/// standard layout's waiters and watchers need (`notify-keyspace-events`, see
/// [`keyspace_events_cover`]). Read, never changed: a server that refuses `CONFIG GET`
/// (renamed or denied, as managed services do) counts as one that does not publish them.
async fn publishes_keyspace_events(connection: &Link) -> bool {
    // A map in RESP3 (a flat array of pairs in RESP2): read as one either way.
    let reply: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut connection.clone())
        .await;
    match reply {
        Ok(config) => config
            .get("notify-keyspace-events")
            .is_some_and(|flags| keyspace_events_cover(flags)),
        Err(error) => {
            tracing::debug!(%error, "CONFIG GET notify-keyspace-events refused: polling");
            false
        }
    }
}

/// A client for `endpoint`: an instance, with the configured credentials and database, or a
/// sentinel (`sentinel`), without them (sentinels are assumed to need no password).
pub(crate) fn client_for(
    config: &RedisConfig,
    endpoint: &Endpoint,
    sentinel: bool,
) -> redis::RedisResult<redis::Client> {
    let info = connection_info(config, endpoint, sentinel)?;
    if config.tls {
        return redis::Client::build_with_tls(info, tls_certificates(config)?);
    }
    redis::Client::open(info)
}

/// Connects to the Redis Cluster that the configuration's seed nodes belong to, sending the
/// messages pushed on any node's connection to `dispatch`.
async fn connect_cluster(
    config: &RedisConfig,
    dispatch: impl redis::aio::AsyncPushSender,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    let seeds = config
        .endpoints
        .iter()
        .map(|endpoint| connection_info(config, endpoint, false))
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let mut builder = ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        // Few and short: a call that fails (a primary down until its replica is promoted)
        // goes back to the caller, whose keepalive or wait retries it with its own budget.
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .push_sender(dispatch);
    if config.tls {
        builder = builder.certs(tls_certificates(config)?);
    }
    builder.build()?.get_async_connection().await
}

/// How to reach `endpoint`: plain or TLS, RESP3, and for an instance (not a sentinel) the
/// configured credentials and database.
fn connection_info(
    config: &RedisConfig,
    endpoint: &Endpoint,
    sentinel: bool,
) -> redis::RedisResult<ConnectionInfo> {
    let mut settings =
        redis::RedisConnectionInfo::default().set_protocol(redis::ProtocolVersion::RESP3);
    if !sentinel {
        settings = settings.set_db(config.db);
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
    }
    let addr = if config.tls {
        redis::ConnectionAddr::TcpTls {
            host: endpoint.host.clone(),
            port: endpoint.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(endpoint.host.clone(), endpoint.port)
    };
    Ok(redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(settings))
}

/// The CA and client certificate of a TLS configuration, read from their files.
fn tls_certificates(config: &RedisConfig) -> redis::RedisResult<TlsCertificates> {
    crate::tls::install_crypto_provider();
    let files = &config.tls_files;
    let read = |path: &std::path::Path, what: &str| {
        TlsFiles::read(path, what).map_err(|error| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a TLS file",
                error.to_string(),
            ))
        })
    };
    let root_cert = match &files.ca {
        Some(ca) => Some(read(ca, "CA certificate")?),
        None => None,
    };
    let client_tls = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "client certificate")?,
            client_key: read(key, "client key")?,
        }),
        _ => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The seed nodes of a cluster configuration, `host:port,host:port`, for error messages.
fn seed_names(config: &RedisConfig) -> String {
    let names: Vec<String> = config.endpoints.iter().map(ToString::to_string).collect();
    names.join(",")
}

fn owned(reply: i64, names: &LockNames, what: &str) -> Result<bool> {
    match reply {
        1 => Ok(true),
        0 => Ok(false),
        -1 => Err(wrong_type(names)),
        other => Err(unexpected(what, &[other])),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wake_up_messages() {
        assert_eq!(
            parse_wake(b"ab:1:500 g 1795726321896001 7"),
            Some((
                "ab:1:500",
                Wake::Granted {
                    token: 1_795_726_321_896_001,
                    attempt: 7
                }
            ))
        );
        assert_eq!(
            parse_wake(b"ab:2:500 r 0"),
            Some(("ab:2:500", Wake::Released))
        );
        assert_eq!(
            parse_wake(b"ab:4@permit/3:1 c 0"),
            Some(("ab:4@permit/3:1", Wake::Changed))
        );
        assert_eq!(
            parse_wake(b"ab:3:500 h 250"),
            Some(("ab:3:500", Wake::First(Some(Duration::from_millis(250)))))
        );
        assert_eq!(
            parse_wake(b"ab:3:500 h -1"),
            Some(("ab:3:500", Wake::First(None)))
        );
        for odd in [
            &b""[..],
            b"x",
            b"a q 1",
            b"a g -1",
            b"a h 1.5e3",
            b"a h -2",
            b"a g 5",
            b"a g 5 1 x",
            b"\xff r 0",
        ] {
            assert_eq!(parse_wake(odd), None, "{odd:?}");
        }
    }
}
