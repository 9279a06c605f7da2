//! How a waiter stands in line and is woken: its key in a lock's queue, put with one
//! transaction, a watch on the one key ahead of it whose leaving can give it its turn (on
//! every key ahead of it for a semaphore permit), and the key taken out again when the wait
//! is given up.

use std::sync::Arc;
use std::time::Duration;

use dlock_core::{AcquireRequest, Backoff, LockError, LockMode, Result};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};

use crate::error::{request, BACKEND};
use crate::line::{self, Next};
use crate::pending::{self, PendingKey};
use crate::session::{revision_of, Name, Session, Shared};
use crate::watch::{Answer, Watch};

/// Where a contender stands after waiting.
pub(crate) enum Line {
    /// Its turn came: the lock is ours.
    Holder(Box<Contender>),
    /// Our key is gone (the session ended, or someone deleted it): queue again.
    Dropped,
}

/// A key in a lock's queue. Until [`Contender::keep`] is called, dropping it deletes the key
/// in the background, so a cancelled `acquire` leaves nothing that delays others (P7).
pub(crate) struct Contender {
    shared: Arc<Shared>,
    dir: String,
    /// The lock's key, for errors.
    lock: String,
    mode: LockMode,
    key: PendingKey,
    /// The create revision of our key.
    revision: i64,
    /// Where we stand, as last read.
    next: Next,
    /// Whether we stood behind another key (then the grant time is written after the grant).
    waited: bool,
}

impl Contender {
    /// Puts `key` into the queue `dir` under the session's lease and reads what its turn in
    /// `mode` depends on, in one transaction (one round trip). If someone ahead uses the
    /// lock `lock` in a mode that cannot share a line with ours, our key is taken out again
    /// and the error is [`LockError::IncompatibleMode`].
    pub(crate) async fn enqueue(
        shared: &Arc<Shared>,
        session: &Session,
        (dir, lock): (&str, &str),
        (name, mode): (Name, LockMode),
        value: String,
    ) -> Result<Contender> {
        let key = name.key().to_owned();
        let mut ops = vec![TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(session.id())),
        )];
        ops.extend(line::enqueue_reads(dir, mode));
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then(ops);
        // Armed before the request goes out: if this future is dropped mid-flight, the key
        // may exist on the server and must not be left behind.
        let mut contender = Contender {
            shared: Arc::clone(shared),
            dir: dir.to_owned(),
            lock: lock.to_owned(),
            mode,
            key: PendingKey::put(shared, name, txn),
            revision: 0,
            next: Next::Granted,
            waited: false,
        };
        let response = contender.key.settled().await?;
        if !response.succeeded() {
            contender.key.retire();
            return Err(LockError::protocol(
                BACKEND,
                format!("contender key {} already existed", contender.key.key()),
            ));
        }
        contender.revision = revision_of(&response)?;
        let layout = shared.config.layout;
        match line::decide(layout, lock, dir, mode, contender.revision, &response, 1) {
            Ok(next) => contender.next = next,
            Err(error) => {
                contender.leave().await;
                return Err(error);
            }
        }
        Ok(contender)
    }

    /// Whether the lock is ours as last read.
    pub(crate) fn granted(&self) -> bool {
        self.next == Next::Granted
    }

    /// Takes our key out of the line now (a `try_acquire` that found no free turn); on
    /// failure, the drop retries in the background.
    pub(crate) async fn withdraw(mut self) {
        self.leave().await;
    }

    /// Waits until our turn comes, the session ends, or the request's deadline passes
    /// (then our key is deleted and the error is `Timeout`).
    pub(crate) async fn wait_for_turn(
        mut self,
        session: &Session,
        request: &AcquireRequest<'_>,
    ) -> Result<Line> {
        self.waited = !self.granted();
        if self.waited {
            request.queued();
        }
        let outcome = match request.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.turn(session))
                .await
                .ok(),
            None => Some(self.turn(session).await),
        };
        match outcome {
            Some(Ok(true)) => Ok(Line::Holder(Box::new(self))),
            Some(Ok(false)) => Ok(Line::Dropped),
            // Someone ahead uses the key another way: leave nothing behind.
            Some(Err(error @ LockError::IncompatibleMode { .. })) => {
                self.leave().await;
                Err(error)
            }
            Some(Err(error)) => Err(error),
            None => {
                self.leave().await;
                Err(request.timeout())
            }
        }
    }

    /// Gives up the key's automatic deletion: the lock is held now.
    pub(crate) fn keep(self) -> (Name, i64) {
        (self.key.keep(), self.revision)
    }

    /// Whether the key waited behind another before it got the lock.
    pub(crate) fn waited(&self) -> bool {
        self.waited
    }

    /// Waits for our turn: `true` when it came, `false` when our key is gone.
    async fn turn(&mut self, session: &Session) -> Result<bool> {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let woken = match self.next.clone() {
                Next::Granted => return Ok(true),
                Next::WaitFor {
                    key,
                    read_at,
                    created,
                } => tokio::select! {
                    woken = wait_for_delete(&self.shared, &key, read_at, created) => woken,
                    _ = session.until_ended() => return Ok(false),
                },
                Next::WaitForAny { read_at } => tokio::select! {
                    woken = self.wait_for_departure(read_at) => woken,
                    _ = session.until_ended() => return Ok(false),
                },
            };
            match woken {
                Ok(Woken::Checked(false)) => return Ok(false),
                Ok(Woken::Checked(true)) => continue,
                Ok(Woken::Gone) => {}
                Err(error) if !error.is_transient() => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "watch failed; checking the queue again");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
            match self.check_queue().await {
                Ok(still_queued) if !still_queued => return Ok(false),
                Ok(_) => {}
                Err(error) if error.is_transient() => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Confirms our key still exists (so its lease lives) and reads where it stands now,
    /// in one transaction. `false` if our key is gone.
    async fn check_queue(&mut self) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.key(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then(line::recheck_reads(&self.dir, self.mode, self.revision));
        let response = self.shared.txn(txn).await?;
        if !response.succeeded() {
            return Ok(false);
        }
        self.next = line::decide(
            self.shared.config.layout,
            &self.lock,
            &self.dir,
            self.mode,
            self.revision,
            &response,
            0,
        )?;
        Ok(true)
    }

    /// Waits, every permit ahead of us being taken, until a contender ahead of ours leaves:
    /// a watch on the queue directory for deletes of keys older than ours.
    ///
    /// As in [`wait_for_delete`], the watch starts at the current revision, and if anything
    /// was written since the line was read at `read_at`, the line is read again once the
    /// watch is in place; if that read finds us still waiting for any, the same watch goes
    /// on, so a busy cluster whose revision always moves never makes this loop.
    async fn wait_for_departure(&mut self, read_at: i64) -> Result<Woken> {
        let options = WatchOptions::new()
            .with_prefix()
            // Arrivals behind us change nothing; a departure's previous value tells whether
            // it stood ahead of us.
            .with_filters([WatchFilterType::NoPut])
            .with_prev_key();
        let Some(mut watch) = Watch::open(&self.shared, self.dir.as_str(), options).await? else {
            return Ok(Woken::Gone);
        };
        if watch.created_at() > read_at {
            let still_queued = self.check_queue().await?;
            if !still_queued || !matches!(self.next, Next::WaitForAny { .. }) {
                return Ok(Woken::Checked(still_queued));
            }
        }
        loop {
            let events = match watch.next().await? {
                Answer::Cancelled => return Ok(Woken::Gone),
                Answer::Events(events) => events,
            };
            self.shared
                .watch_events
                .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let ahead_left = events.iter().any(|event| {
                event.event_type() == EventType::Delete
                    && event
                        .prev_kv()
                        .is_none_or(|kv| kv.create_revision() < self.revision)
            });
            if ahead_left {
                return Ok(Woken::Gone);
            }
        }
    }

    /// Deletes our key now (the wait was given up); on failure, the drop retries in the
    /// background.
    async fn leave(&mut self) {
        let deleted = pending::delete(&self.shared, self.key.key(), Some(self.revision)).await;
        if deleted.is_ok() {
            self.key.forget();
        }
    }
}

/// Why a wait for a contender ahead ended.
enum Woken {
    /// A contender ahead may have left: read the line again.
    Gone,
    /// The line was read again already while waiting: `false` if our key is gone.
    Checked(bool),
}

/// Resolves when `key` (seen at revision `read_at`, created at `created`) may be gone: a delete
/// event, a cancelled watch, or a check that finds it missing or re-created. The caller then
/// looks at the queue.
///
/// The watch starts at the current revision, not at `read_at + 1`: etcd serves watches that
/// start in the past from a loop that runs every 100 ms, which would add up to 100 ms to a
/// handoff (and [`Watch`] makes sure etcd does not put this one behind either). Nothing is
/// missed: if anything was written since `read_at` (the answer to the watch creation carries
/// a later revision), the key is looked up once more after the watch is in place.
async fn wait_for_delete(inner: &Shared, key: &[u8], read_at: i64, created: i64) -> Result<Woken> {
    let (endpoint, timeout) = (inner.endpoint.as_str(), inner.config.request_timeout);
    // Only deletes wake us: the holder ahead rewrites its value once (the grant time).
    let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
    let Some(mut watch) = Watch::open(inner, key, options).await? else {
        return Ok(Woken::Gone);
    };
    if watch.created_at() > read_at {
        let mut kv = inner.client.kv_client();
        // Whether the key is still there after the watch began is all this read must tell,
        // so the member's own copy will do (no round of consensus) if it has applied the
        // watch's start revision: a delete the copy does not show comes after it and is
        // delivered. A member further behind is asked again, linearizably.
        let local = GetOptions::new().with_serializable();
        let mut found = request(endpoint, timeout, kv.get(key, Some(local))).await?;
        if found
            .header()
            .is_none_or(|h| h.revision() < watch.created_at())
        {
            found = request(endpoint, timeout, kv.get(key, None)).await?;
        }
        // A key of that name created after the one we saw is a new incarnation of a reused
        // name (its holder released and queued again, behind us): the key ahead is gone.
        // Waiting for this one would wait for a key waiting for us.
        if found
            .kvs()
            .first()
            .is_none_or(|kv| kv.create_revision() != created)
        {
            return Ok(Woken::Gone);
        }
    }
    loop {
        let events = match watch.next().await? {
            Answer::Cancelled => return Ok(Woken::Gone),
            Answer::Events(events) => events,
        };
        inner
            .watch_events
            .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if events.iter().any(|e| e.event_type() == EventType::Delete) {
            return Ok(Woken::Gone);
        }
    }
}
