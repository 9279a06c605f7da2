//! The example backend of the guide "Writing a backend" (`crates/dlock-conformance/GUIDE.md`):
//! a lock table in this process, reached through a client type, with one lease per lock.
//! It is deliberately small, and it passes the whole conformance suite, which this file
//! runs against it.
//!
//! A real backend has the same shape; only `TableServer` is replaced by requests to a
//! server: one request to take, one to extend, one owner-checked request to release, one
//! request to renew every lease, and a server notification to wake a waiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::support::lock;
use dlock_core::{
    AcquireRequest, Acquired, Capabilities, FencingToken, Lease, LockBackend, LockError, LockGuard,
    LockInfo, LockKey, LockOptions, LossReason, Renewal,
};
use tokio::sync::Notify;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// The "server": what a real backend talks to over the network.
// ---------------------------------------------------------------------------------------

/// A table of locks, each with its holder's owner id, fencing token and expiry, and one
/// notification per lock that a release or an expiry fires.
#[derive(Default)]
struct TableServer {
    locks: Mutex<HashMap<String, Slot>>,
    next_token: AtomicU64,
    requests: AtomicU64,
    reachable: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Slot {
    holder: Option<Holder>,
    /// Wakes one waiter when the lock is released.
    released: Arc<Notify>,
}

struct Holder {
    owner: u64,
    token: u64,
    expires: Instant,
}

impl TableServer {
    fn new() -> Arc<Self> {
        let server = TableServer::default();
        server.reachable.store(true, Ordering::SeqCst);
        Arc::new(server)
    }

    /// Every request passes here: counted, and refused when the server is "down".
    fn request(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Slot>>, LockError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !self.reachable.load(Ordering::SeqCst) {
            return Err(LockError::Connection {
                endpoint: "table://".into(),
                source: "the table server is down".into(),
            });
        }
        Ok(lock(&self.locks))
    }
}

// ---------------------------------------------------------------------------------------
// The backend: one client of the server.
// ---------------------------------------------------------------------------------------

/// One client of a [`TableServer`].
#[derive(Clone)]
struct TableBackend {
    server: Arc<TableServer>,
}

/// What the backend keeps about each acquisition: handed back in every `Lease`.
struct TableRecord {
    name: String,
    owner: u64,
}

impl std::fmt::Debug for TableBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableBackend")
    }
}

#[async_trait]
impl LockBackend for TableBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "table",
            // Waiters race for a released lock: no order is promised (the suite then checks
            // only that nobody starves within the test).
            fifo: false,
            session_lease: false,
            server_wakeup: true,
            min_lease: Duration::from_millis(10),
            // A crashed holder's lock is taken as soon as its lease ends: a waiter sleeps
            // until the holder's expiry at the latest.
            crash_release_bound: Duration::from_millis(50),
        }
    }

    async fn try_acquire(
        &self,
        request: AcquireRequest<'_>,
    ) -> Result<Option<Acquired>, LockError> {
        let sent = Instant::now();
        Ok(self.take(&request, sent)?.ok())
    }

    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<Acquired, LockError> {
        let released = self.release_signal(&request)?;
        loop {
            // Ask for the wake-up before looking, so that a release in between is not missed.
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let holder_expires = match self.take(&request, Instant::now())? {
                Ok(acquired) => return Ok(acquired),
                Err(expires) => expires,
            };
            // Duty: say once that this request stands in line (tests order waiters by it).
            request.queued();
            // Woken by the server; the holder's expiry is only the safety net (P8).
            let wake_at = request
                .deadline
                .map_or(holder_expires, |d| d.min(holder_expires));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            // Duty (P9): honour the deadline and return Timeout yourself; the Locker's timer
            // is only a safety net.
            if request
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                return Err(request.timeout());
            }
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Instant, LockError> {
        let record = lease.record_of::<TableRecord>("table")?;
        let sent = Instant::now();
        let mut locks = self.server.request()?;
        match owned(&mut locks, record, sent) {
            Some(holder) => {
                holder.expires = sent + ttl;
                Ok(sent + ttl)
            }
            None => Err(lease.not_held()),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let record = lease.record_of::<TableRecord>("table")?;
        let mut locks = self.server.request()?;
        if owned(&mut locks, record, Instant::now()).is_none() {
            return Err(lease.not_held());
        }
        let slot = locks.get_mut(&record.name).expect("owned() found it");
        slot.holder = None;
        // Duty (P8): wake one waiter, not all of them.
        slot.released.notify_one();
        Ok(())
    }

    /// One request renews every lease (P4).
    async fn renew(&self, leases: &[&Lease]) -> Result<Vec<Renewal>, LockError> {
        let sent = Instant::now();
        let mut locks = self.server.request()?;
        leases
            .iter()
            .map(|lease| {
                let record = lease.record_of::<TableRecord>("table")?;
                Ok(match owned(&mut locks, record, sent) {
                    Some(holder) => {
                        holder.expires = sent + lease.ttl();
                        Renewal::Renewed {
                            valid_until: holder.expires,
                        }
                    }
                    None => Renewal::Lost(LossReason::NotOwner),
                })
            })
            .collect()
    }

    async fn inspect(&self, key: &LockKey, options: &LockOptions) -> Result<LockInfo, LockError> {
        let now = Instant::now();
        let locks = self.server.request()?;
        let holder = locks
            .get(&name(&options.prefix, key))
            .and_then(|slot| slot.holder.as_ref())
            .filter(|holder| holder.expires > now);
        Ok(LockInfo {
            held: holder.is_some(),
            fencing_token: holder.map(|holder| FencingToken::new(holder.token)),
            remaining_lease: holder.map(|holder| holder.expires - now),
            waiters: None,
        })
    }

    async fn ping(&self) -> Result<Duration, LockError> {
        let started = Instant::now();
        drop(self.server.request()?);
        Ok(started.elapsed())
    }
}

impl TableBackend {
    /// The notification a release of `request`'s lock fires (a subscription, on a server).
    fn release_signal(&self, request: &AcquireRequest<'_>) -> Result<Arc<Notify>, LockError> {
        let mut locks = self.server.request()?;
        let slot = locks
            .entry(name(&request.options.prefix, request.key))
            .or_default();
        Ok(Arc::clone(&slot.released))
    }

    /// Takes the lock if it is free or its holder's lease ended; otherwise returns when the
    /// holder's lease ends.
    fn take(
        &self,
        request: &AcquireRequest<'_>,
        sent: Instant,
    ) -> Result<Result<Acquired, Instant>, LockError> {
        static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);
        let name = name(&request.options.prefix, request.key);
        let mut locks = self.server.request()?;
        let slot = locks.entry(name.clone()).or_default();
        if let Some(holder) = slot.holder.as_ref().filter(|h| h.expires > sent) {
            return Ok(Err(holder.expires));
        }
        let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        // Duty (P2): tokens only grow, and are never 0.
        let token = self.server.next_token.fetch_add(1, Ordering::SeqCst) + 1;
        slot.holder = Some(Holder {
            owner,
            token,
            expires: sent + request.options.lease,
        });
        Ok(Ok(Acquired {
            token: FencingToken::new(token),
            // Duty (P5): the deadline counts from when the request was sent, never later.
            valid_until: sent + request.options.lease,
            record: Box::new(TableRecord { name, owner }),
        }))
    }
}

/// The holder of `record`'s lock, if it is still `record`'s and its lease has not ended.
fn owned<'a>(
    locks: &'a mut HashMap<String, Slot>,
    record: &TableRecord,
    now: Instant,
) -> Option<&'a mut Holder> {
    locks
        .get_mut(&record.name)?
        .holder
        .as_mut()
        .filter(|holder| holder.owner == record.owner && holder.expires > now)
}

/// The server's name for a lock. Duty (P12): one-to-one, so two (prefix, key) pairs never
/// meet; `path_segment` escapes the key so the `/` between them is unambiguous.
fn name(prefix: &str, key: &LockKey) -> String {
    let prefix = LockKey::new(prefix).map_or_else(|_| String::new(), |p| p.path_segment());
    format!("{prefix}/{}", key.path_segment())
}

// ---------------------------------------------------------------------------------------
// The conformance hook: how the suite reaches the server.
// ---------------------------------------------------------------------------------------

struct TableTarget {
    server: Arc<TableServer>,
}

#[async_trait]
impl ConformanceTarget for TableTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(Arc::new(TableBackend {
            server: Arc::clone(&self.server),
        }))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let server = TableServer::new();
        server.reachable.store(false, Ordering::SeqCst);
        Ok(Arc::new(TableBackend { server }))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        let record = guard.lease().record_of::<TableRecord>("table")?;
        let mut locks = lock(&self.server.locks);
        if let Some(slot) = locks.get_mut(&record.name) {
            slot.holder = None;
            slot.released.notify_one();
        }
        Ok(())
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.server.requests.load(Ordering::Relaxed))
    }
}

dlock_conformance::conformance_tests!(async {
    TableTarget {
        server: TableServer::new(),
    }
});
