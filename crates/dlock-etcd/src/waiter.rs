//! How a waiter stands in line and is woken: its key in a lock's queue, put with one
//! transaction, a watch on the key just ahead of it, and the key taken out again when the
//! wait is given up.

use std::sync::Arc;
use std::time::Duration;

use dlock_core::{AcquireRequest, Backoff, LockError, Result};
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
};

use crate::error::{request, to_lock_error, BACKEND};
use crate::layout::newest_first;
use crate::pending::{self, PendingKey};
use crate::session::{got, revision_of, Name, Session, Shared};

/// Where a contender stands after waiting.
pub(crate) enum Line {
    /// First in line: the lock is ours.
    Holder(Contender),
    /// Our key is gone (the session ended, or someone deleted it): queue again.
    Dropped,
}

/// A key in a lock's queue. Until [`Contender::keep`] is called, dropping it deletes the key
/// in the background, so a cancelled `acquire` leaves nothing that delays others (P7).
pub(crate) struct Contender {
    shared: Arc<Shared>,
    dir: String,
    key: PendingKey,
    /// The create revision of our key.
    revision: i64,
    /// The key just ahead of ours, the revision at which we saw it and its create revision
    /// (names are reused: a key of the same name created later is another contender, behind
    /// us), if any.
    ahead: Option<(Vec<u8>, i64, i64)>,
    /// Whether we stood behind another key (then the grant time is written after the grant).
    waited: bool,
}

impl Contender {
    /// Puts `key` into the queue `dir` under the session's lease and reads the key just
    /// ahead of it, in one transaction (one round trip).
    pub(crate) async fn enqueue(
        shared: &Arc<Shared>,
        session: &Session,
        dir: &str,
        name: Name,
        value: String,
    ) -> Result<Contender> {
        let key = name.key().to_owned();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(session.id())),
                ),
                // Our key is the newest, so the second newest is the one just ahead.
                TxnOp::get(dir, Some(newest_first(2))),
            ]);
        // Armed before the request goes out: if this future is dropped mid-flight, the key
        // may exist on the server and must not be left behind.
        let mut contender = Contender {
            shared: Arc::clone(shared),
            dir: dir.to_owned(),
            key: PendingKey::put(shared, name, txn),
            revision: 0,
            ahead: None,
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
        contender.ahead = got(&response, 1)?
            .into_iter()
            .find(|kv| kv.create_revision() < contender.revision)
            .map(|kv| (kv.key().to_vec(), contender.revision, kv.create_revision()));
        Ok(contender)
    }

    /// Waits until every key ahead of ours is gone, the session ends, or the request's
    /// deadline passes (then our key is deleted and the error is `Timeout`).
    pub(crate) async fn wait_for_turn(
        mut self,
        session: &Session,
        request: &AcquireRequest<'_>,
    ) -> Result<Line> {
        if self.ahead.is_some() {
            request.queued();
        }
        self.waited = self.ahead.is_some();
        let outcome = match request.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.turn(session))
                .await
                .ok(),
            None => Some(self.turn(session).await),
        };
        match outcome {
            Some(Ok(true)) => Ok(Line::Holder(self)),
            Some(Ok(false)) => Ok(Line::Dropped),
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

    /// Waits for our turn: `true` when first in line, `false` when our key is gone.
    async fn turn(&mut self, session: &Session) -> Result<bool> {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let Some((ahead, read_at, created)) = self.ahead.clone() else {
                return Ok(true);
            };
            let woken = tokio::select! {
                woken = wait_for_delete(&self.shared, &ahead, read_at, created) => woken,
                _ = session.until_ended() => return Ok(false),
            };
            if let Err(error) = woken {
                if !error.is_transient() {
                    return Err(error);
                }
                tracing::debug!(%error, "watch failed; checking the queue again");
                tokio::time::sleep(backoff.next_delay()).await;
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

    /// Confirms our key still exists (so its lease lives) and finds the key now just ahead
    /// of it, in one transaction. `false` if our key is gone.
    async fn check_queue(&mut self) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.key(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::get(
                self.dir.as_str(),
                Some(newest_first(1).with_max_create_revision(self.revision - 1)),
            )]);
        let response = self.shared.txn(txn).await?;
        if !response.succeeded() {
            return Ok(false);
        }
        let read_at = revision_of(&response)?;
        self.ahead = got(&response, 0)?
            .into_iter()
            .next()
            .map(|kv| (kv.key().to_vec(), read_at, kv.create_revision()));
        Ok(true)
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

/// Resolves when `key` (seen at revision `read_at`, created at `created`) may be gone: a delete
/// event, a cancelled watch, or a check that finds it missing or re-created. The caller then
/// looks at the queue.
///
/// The watch starts at the current revision, not at `read_at + 1`: etcd serves watches that
/// start in the past from a loop that runs every 100 ms, which would add up to 100 ms to a
/// handoff. Nothing is missed: if anything was written since `read_at` (the answer to the
/// watch creation carries a later revision), the key is looked up once more after the watch
/// is in place.
async fn wait_for_delete(inner: &Shared, key: &[u8], read_at: i64, created: i64) -> Result<()> {
    let (endpoint, timeout) = (inner.endpoint.as_str(), inner.config.request_timeout);
    let mut watch = inner.client.watch_client();
    let mut stream = request(
        endpoint,
        timeout,
        // Only deletes wake us: the holder ahead rewrites its value once (the grant time).
        watch.watch(
            key,
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        ),
    )
    .await?;
    let mut checked = false;
    loop {
        let answer = if checked {
            stream
                .message()
                .await
                .map_err(|e| to_lock_error(endpoint, e))?
        } else {
            request(endpoint, timeout, stream.message()).await?
        };
        let Some(answer) = answer else {
            return Err(LockError::connection(endpoint, "the watch stream closed"));
        };
        if answer.canceled() {
            return Ok(());
        }
        let events = answer.events();
        if !events.is_empty() {
            inner
                .watch_events
                .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if events.iter().any(|e| e.event_type() == EventType::Delete) {
            return Ok(());
        }
        if !checked && answer.created() {
            checked = true;
            let now = answer.header().map_or(i64::MAX, |h| h.revision());
            if now > read_at {
                let mut kv = inner.client.kv_client();
                let found = request(endpoint, timeout, kv.get(key, None)).await?;
                // A key of that name created after the one we saw is a new incarnation of
                // a reused name (its holder released and queued again, behind us): the key
                // ahead is gone. Waiting for this one would wait for a key waiting for us.
                if found
                    .kvs()
                    .first()
                    .is_none_or(|kv| kv.create_revision() != created)
                {
                    return Ok(());
                }
            }
        }
    }
}
