//! The in-memory reference backend: the whole contract inside one process.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Acquired, Capabilities, LockBackend, LockInfo, Renewal};
use crate::error::{LockError, Result};
use crate::inspect::{Introspection, ListPage, ListRequest, ListedLock, LockReport};
use crate::key::LockKey;
use crate::lease::{lock, Lease, LossNotifier, LossReason};
use crate::mode::{turn, LockMode, Turn};
use crate::options::LockOptions;
use crate::token::FencingToken;

/// A lock backend that lives in this process: real TTL expiry, fencing tokens, a FIFO line of
/// waiters, every [`LockMode`] (mutex, readers and writers, semaphore permits), loss signals
/// and cancellation safety. It reports everything
/// an operator may ask ([`Introspection::all`]): each holder's owner description and
/// acquisition time, and the locks under a prefix.
///
/// Use it for unit tests of code that takes locks, and as the quick-start default. Every
/// [`MemoryBackend`] made from one [`MemoryServer`] is an independent client of the same
/// lock table, as processes sharing one Redis would be.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::{Locker, MemoryServer};
///
/// let server = MemoryServer::new();
/// let alice = Locker::new(server.client());
/// let bob = Locker::new(server.client());
///
/// let guard = alice.acquire("printer").await?;
/// assert!(bob.try_acquire("printer").await?.is_none());
/// guard.release().await?;
/// assert!(bob.try_acquire("printer").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    server: Arc<MemoryServer>,
}

/// The shared lock table behind [`MemoryBackend`] clients.
pub struct MemoryServer {
    table: Mutex<Table>,
    /// Bumped, under the table lock, whenever a holder or owner description changes, for
    /// [`LockBackend::wait_for_change`].
    changes: watch::Sender<u64>,
}

impl MemoryServer {
    /// A new, empty lock table.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryServer {
            table: Mutex::new(Table::default()),
            changes: watch::Sender::new(0),
        })
    }

    /// The table shared by every `memory://` client of this process.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<MemoryServer>> = OnceLock::new();
        Arc::clone(GLOBAL.get_or_init(MemoryServer::new))
    }

    /// A new client of this table.
    pub fn client(self: &Arc<Self>) -> MemoryBackend {
        MemoryBackend {
            server: Arc::clone(self),
        }
    }

    /// Makes the table forget the holders of `key` under `prefix` (all of them, for a key
    /// held shared or by several permits), as if an operator deleted the key: their guards
    /// are signalled lost and the waiters are woken. Returns whether there was a holder.
    pub fn forget(&self, prefix: &str, key: &LockKey) -> bool {
        let mut table = self.table();
        let Some(entry) = table.keys.get_mut(&entry_name(prefix, key)) else {
            return false;
        };
        if entry.holders.is_empty() {
            return false;
        }
        for holder in entry.holders.drain(..) {
            holder.loss.notify_lost(LossReason::NotOwner);
        }
        entry.wake_waiters();
        self.changed();
        true
    }

    /// Takes the server down (every call fails with [`LockError::Connection`] and waiters
    /// give up) or brings it back. Locks survive, as they would on a server that was only
    /// unreachable.
    pub fn set_reachable(&self, reachable: bool) {
        let mut table = self.table();
        table.down = !reachable;
        for entry in table.keys.values() {
            for waiter in &entry.waiters {
                waiter.wake.notify_one();
            }
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Tells [`LockBackend::wait_for_change`] callers to look again; called with the table
    /// locked, so a caller that subscribed under the lock misses nothing.
    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }
}

impl MemoryBackend {
    /// A client of a new table of its own.
    pub fn new() -> Self {
        MemoryServer::new().client()
    }

    /// The table this client talks to.
    pub fn server(&self) -> &Arc<MemoryServer> {
        &self.server
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "memory",
            fifo: true,
            session_lease: false,
            server_wakeup: true,
            min_lease: crate::options::MIN_LEASE,
            crash_release_bound: Duration::from_millis(50),
        }
    }

    async fn try_acquire(&self, request: AcquireRequest<'_>) -> Result<Option<Acquired>> {
        cooperate().await;
        let name = entry_name(&request.options.prefix, request.key);
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        let entry = table.entry(&name, &request);
        entry.expire_holders(now, &self.server);
        let turn = entry.turn(&request, None);
        if !matches!(turn, Ok(Turn::Granted)) {
            table.drop_if_idle(&name);
            return turn.map(|_| None);
        }
        Ok(Some(table.grant(&name, &request, now, &self.server)))
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired> {
        cooperate().await;
        let name = entry_name(&request.options.prefix, request.key);
        let mut place: Option<PlaceInLine> = None;
        loop {
            let wake_at = {
                let mut table = self.server.table();
                table.check_reachable()?;
                let now = Instant::now();
                let entry = table.entry(&name, &request);
                entry.expire_holders(now, &self.server);
                match entry.turn(&request, place.as_ref().map(|place| place.id)) {
                    Ok(Turn::Granted) => {
                        if let Some(place) = place.take() {
                            place.leave_line(entry);
                        }
                        return Ok(table.grant(&name, &request, now, &self.server));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // `place` drops after the table lock is released and leaves the line.
                        drop(table);
                        return Err(error);
                    }
                }
                if request.deadline.is_some_and(|deadline| now >= deadline) {
                    // `place` drops after the table lock is released and leaves the line.
                    drop(table);
                    return Err(request.timeout());
                }
                let place = match &mut place {
                    Some(place) => place,
                    None => {
                        table.next_waiter += 1;
                        let id = table.next_waiter;
                        let wake = Arc::new(Notify::new());
                        let entry = table.keys.get_mut(&name).expect("entry exists");
                        entry.waiters.push_back(Waiter {
                            id,
                            mode: request.mode(),
                            wake: Arc::clone(&wake),
                        });
                        request.queued();
                        place.insert(PlaceInLine {
                            server: Arc::clone(&self.server),
                            name: name.clone(),
                            id,
                            wake,
                            left: false,
                        })
                    }
                };
                let entry = &table.keys[&name];
                // A holder's expiry may be this waiter's turn: wake then at the latest.
                let holder_expiry = entry.holders.iter().map(|h| h.expires_at).min();
                (
                    place.wake.clone(),
                    min_instant(holder_expiry, request.deadline),
                )
            };
            let (wake, at) = wake_at;
            match at {
                Some(at) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant> {
        let record = record(lease)?;
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        match table.owned_holder(record, now, &self.server) {
            Some(holder) => {
                holder.expires_at = now + ttl;
                Ok(now + ttl)
            }
            None => Err(lease.not_held()),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let record = record(lease)?;
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        if table.owned_holder(record, now, &self.server).is_none() {
            return Err(lease.not_held());
        }
        let entry = table.keys.get_mut(&record.name).expect("holder's entry");
        entry.holders.retain(|holder| holder.owner != record.owner);
        entry.wake_waiters();
        table.drop_if_idle(&record.name);
        self.server.changed();
        Ok(())
    }

    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        leases
            .iter()
            .map(|lease| {
                let record = record(lease)?;
                Ok(match table.owned_holder(record, now, &self.server) {
                    Some(holder) => {
                        holder.expires_at = now + lease.ttl();
                        Renewal::Renewed {
                            valid_until: holder.expires_at,
                        }
                    }
                    None => Renewal::Lost(LossReason::NotOwner),
                })
            })
            .collect()
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo> {
        self.report(key, options).await.map(|report| report.info)
    }

    fn introspection(&self) -> Introspection {
        Introspection::all()
    }

    async fn report(&self, key: &LockKey, options: &LockOptions) -> Result<LockReport> {
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        Ok(
            match table.keys.get_mut(&entry_name(&options.prefix, key)) {
                Some(entry) => entry.report(now, &self.server),
                None => LockReport::from(LockInfo {
                    waiters: Some(0),
                    ..LockInfo::default()
                }),
            },
        )
    }

    /// Sorts the matching entries of the whole table: O(n log n) in the locks held or waited
    /// for in this process, which is what a test or a tool holds.
    async fn list(&self, options: &LockOptions, request: &ListRequest) -> Result<ListPage> {
        let server = Arc::clone(&self.server);
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        let mut matching: Vec<&mut Entry> = table
            .keys
            .values_mut()
            .filter(|entry| {
                entry.prefix == options.prefix
                    && entry.key.as_str().starts_with(&request.key_prefix)
                    && request
                        .after
                        .as_deref()
                        .is_none_or(|after| entry.key.as_str() > after)
            })
            .collect();
        matching.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let more = matching.len() > request.limit;
        let locks: Vec<ListedLock> = matching
            .into_iter()
            .take(request.limit)
            .map(|entry| ListedLock::new(entry.key.clone(), entry.report(now, &server)))
            .collect();
        let next = more
            .then(|| locks.last().map(|lock| lock.key.as_str().to_owned()))
            .flatten();
        Ok(ListPage::new(locks, next))
    }

    fn supports(&self, _mode: LockMode) -> bool {
        true
    }

    async fn update_owner(&self, lease: &Lease, owner: &str) -> Result<()> {
        let record = record(lease)?;
        let mut table = self.server.table();
        table.check_reachable()?;
        let now = Instant::now();
        match table.owned_holder(record, now, &self.server) {
            Some(holder) => {
                holder.description = owner.to_owned();
                self.server.changed();
                Ok(())
            }
            None => Err(lease.not_held()),
        }
    }

    async fn wait_for_change(
        &self,
        key: &LockKey,
        options: &LockOptions,
        seen: &LockReport,
    ) -> Result<()> {
        let (mut changes, expiry) = {
            let mut table = self.server.table();
            table.check_reachable()?;
            let now = Instant::now();
            let current = match table.keys.get_mut(&entry_name(&options.prefix, key)) {
                Some(entry) => entry.report(now, &self.server),
                None => LockReport::default(),
            };
            if !current.same_holder(seen) {
                return Ok(());
            }
            // Subscribed under the table lock: every later change bumps the version.
            let changes = self.server.changes.subscribe();
            (changes, current.info.remaining_lease.map(|left| now + left))
        };
        // Expiry is noticed lazily, by whoever looks next: be the one who looks.
        match expiry {
            Some(at) => {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => {
                let _ = changes.changed().await;
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        self.server.table().check_reachable()?;
        Ok(started.elapsed())
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl fmt::Debug for MemoryServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.table();
        f.debug_struct("MemoryServer")
            .field("keys", &table.keys.len())
            .field("down", &table.down)
            .finish()
    }
}

#[derive(Default)]
struct Table {
    keys: HashMap<String, Entry>,
    /// One counter for all keys, like etcd's revision: strictly growing per key too.
    last_token: u64,
    next_waiter: u64,
    next_owner: u64,
    down: bool,
}

struct Entry {
    /// The lock's key and prefix as the client gave them, for `list`.
    key: LockKey,
    prefix: String,
    /// Oldest first: one for an exclusive lock, any number of readers or permit holders.
    holders: Vec<Holder>,
    waiters: VecDeque<Waiter>,
}

struct Holder {
    owner: u64,
    mode: LockMode,
    token: FencingToken,
    expires_at: Instant,
    loss: LossNotifier,
    /// The holder's owner description, as a server would store it beside the lock.
    description: String,
    acquired_at: SystemTime,
}

struct Waiter {
    id: u64,
    mode: LockMode,
    wake: Arc<Notify>,
}

/// The backend's record in a [`Lease`].
struct MemoryRecord {
    name: String,
    owner: u64,
}

/// A waiter's entry in a key's line; dropping it (the acquire returned or was cancelled)
/// leaves the line and hands the turn on if it was first.
struct PlaceInLine {
    server: Arc<MemoryServer>,
    name: String,
    id: u64,
    wake: Arc<Notify>,
    left: bool,
}

impl PlaceInLine {
    /// Leaves the line while the caller holds the table lock.
    fn leave_line(mut self, entry: &mut Entry) {
        entry.remove_waiter(self.id);
        self.left = true;
    }
}

impl Drop for PlaceInLine {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let mut table = self.server.table();
        if let Some(entry) = table.keys.get_mut(&self.name) {
            entry.remove_waiter(self.id);
        }
        table.drop_if_idle(&self.name);
    }
}

impl Table {
    fn check_reachable(&self) -> Result<()> {
        if self.down {
            return Err(LockError::connection(
                "memory://",
                "the in-memory server is set unreachable",
            ));
        }
        Ok(())
    }

    /// The entry of `name`, made for `request`'s key if the lock is new.
    fn entry(&mut self, name: &str, request: &AcquireRequest<'_>) -> &mut Entry {
        self.keys.entry(name.to_owned()).or_insert_with(|| Entry {
            key: request.key.clone(),
            prefix: request.options.prefix.clone(),
            holders: Vec::new(),
            waiters: VecDeque::new(),
        })
    }

    fn grant(
        &mut self,
        name: &str,
        request: &AcquireRequest<'_>,
        now: Instant,
        server: &MemoryServer,
    ) -> Acquired {
        self.last_token += 1;
        self.next_owner += 1;
        let token = FencingToken::new(self.last_token);
        let owner = self.next_owner;
        let expires_at = now + request.options.lease;
        let entry = self.keys.get_mut(name).expect("entry exists");
        entry.holders.push(Holder {
            owner,
            mode: request.mode(),
            token,
            expires_at,
            loss: request.loss.clone(),
            description: request.owner().to_owned(),
            acquired_at: SystemTime::now(),
        });
        // Those in line now wait for a new holder too: let them arm their expiry timers.
        entry.wake_waiters();
        server.changed();
        Acquired {
            token,
            valid_until: expires_at,
            record: Box::new(MemoryRecord {
                name: name.to_owned(),
                owner,
            }),
        }
    }

    fn owned_holder(
        &mut self,
        record: &MemoryRecord,
        now: Instant,
        server: &MemoryServer,
    ) -> Option<&mut Holder> {
        let entry = self.keys.get_mut(&record.name)?;
        entry.expire_holders(now, server);
        entry
            .holders
            .iter_mut()
            .find(|holder| holder.owner == record.owner)
    }

    fn drop_if_idle(&mut self, name: &str) {
        if self
            .keys
            .get(name)
            .is_some_and(|e| e.holders.is_empty() && e.waiters.is_empty())
        {
            self.keys.remove(name);
        }
    }
}

impl Entry {
    fn report(&mut self, now: Instant, server: &MemoryServer) -> LockReport {
        self.expire_holders(now, server);
        let holder = self.holders.first();
        LockReport {
            info: LockInfo {
                held: holder.is_some(),
                fencing_token: holder.map(|h| h.token),
                remaining_lease: holder.map(|h| h.expires_at - now),
                waiters: Some(self.waiters.len()),
            },
            owner: holder.map(|h| h.description.clone()),
            acquired_at: holder.map(|h| h.acquired_at),
        }
    }

    /// Whether `request`, standing in line as waiter `place` (or about to join at the end),
    /// holds the key now: [`turn`] over the holders and the waiters ahead of it.
    fn turn(&self, request: &AcquireRequest<'_>, place: Option<u64>) -> Result<Turn> {
        let waiters_ahead = self
            .waiters
            .iter()
            .take_while(|waiter| Some(waiter.id) != place)
            .map(|waiter| waiter.mode);
        let ahead: Vec<LockMode> = self
            .holders
            .iter()
            .map(|holder| holder.mode)
            .chain(waiters_ahead)
            .collect();
        turn(request.key.as_str(), request.mode(), &ahead)
    }

    fn expire_holders(&mut self, now: Instant, server: &MemoryServer) {
        let before = self.holders.len();
        self.holders.retain(|holder| {
            let live = now < holder.expires_at;
            if !live {
                holder.loss.notify_lost(LossReason::NotOwner);
            }
            live
        });
        if self.holders.len() != before {
            self.wake_waiters();
            server.changed();
        }
    }

    /// Every waiter looks at the line again: in memory a herd costs nothing, and a release
    /// may admit several readers at once.
    fn wake_waiters(&self) {
        for waiter in &self.waiters {
            waiter.wake.notify_one();
        }
    }

    fn remove_waiter(&mut self, id: u64) {
        self.waiters.retain(|w| w.id != id);
        self.wake_waiters();
    }
}

/// Counts against the task's cooperative budget: a task that takes and gives back free locks
/// in a loop never waits on the table, and would otherwise keep its worker thread from the
/// tasks that want to join the line (a network backend yields at every round trip).
async fn cooperate() {
    tokio::task::consume_budget().await;
}

fn entry_name(prefix: &str, key: &LockKey) -> String {
    format!("{prefix}/{}", key.path_segment())
}

fn record(lease: &Lease) -> Result<&MemoryRecord> {
    lease.record_of::<MemoryRecord>("memory")
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
