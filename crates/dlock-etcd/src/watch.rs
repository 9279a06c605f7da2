//! A watch whose events etcd pushes as they happen, not from its 100 ms catch-up loop.
//!
//! etcd (3.4 to 3.6) registers a watch without a start revision in two steps: it reads the
//! current revision `R` (the revision the "created" answer carries), then registers a watcher
//! that starts at `R + 1`. A write committed between the two steps leaves that watcher
//! *behind* the store ("unsynced", `mvcc/watchable_store.go`), and unsynced watchers are only
//! served by `syncWatchersLoop`, every 100 ms: a delete that follows is delivered up to
//! 100 ms late. Under contention writes land every few hundred microseconds, so a few
//! percent of a waiter's watches fell into that gap, and each such handoff took up to
//! 100 ms (the p99 acquire wait of ~100 ms at 8 clients, issue 14).
//!
//! etcd does not say whether a watcher is synced, but a progress request, answered on the
//! same stream with the revision current when the server reads it, tells: etcd reads a watch
//! stream's requests one after the other, so the progress answer's revision is at least the
//! revision at the watcher's registration; if it equals the created answer's revision, no
//! write came between, and the watcher is synced. Otherwise another watcher on the same key
//! is created on the same stream, its create request and a progress request sent together
//! (so the server reads them back to back, a much smaller gap), up to [`HEDGES`] times.
//! Every watcher of the stream delivers the same changes (each from its own start on);
//! a change already handed out is not handed out again.

use std::collections::BTreeSet;

use dlock_core::{LockError, Result};
use etcd_client::{Event, WatchOptions, WatchResponse, WatchStream};

use crate::error::{request, to_lock_error};
use crate::session::Shared;

/// How many more watchers a watch adds while it is not shown to be synced.
const HEDGES: u32 = 2;

/// The watch id etcd gives answers that belong to no watcher (progress answers).
const NO_WATCHER: i64 = -1;

/// A watch on one key or range, with the options it was opened with.
pub(crate) struct Watch {
    stream: WatchStream,
    endpoint: String,
    key: Vec<u8>,
    options: WatchOptions,
    /// The revision the first watcher started after: every change after it is delivered.
    created_at: i64,
    /// The created answer's revision of the newest watcher, while a progress answer is
    /// awaited to tell whether it is synced.
    probing: Option<i64>,
    /// How many more watchers may be added.
    hedges: u32,
    /// The changes handed out already, by revision and key (several watchers may deliver
    /// one).
    seen: BTreeSet<(i64, Vec<u8>)>,
}

/// What a watch says next.
pub(crate) enum Answer {
    /// Changes not handed out before.
    Events(Vec<Event>),
    /// etcd ended the watch (leader lost, compaction): whatever was watched may have changed.
    Cancelled,
}

impl Watch {
    /// Opens a watch on `key` with `options` (no start revision: from now on) and waits, within
    /// the request timeout, until etcd says it is in place; `None` if etcd cancelled it at once.
    pub(crate) async fn open(
        shared: &Shared,
        key: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> Result<Option<Watch>> {
        let key = key.into();
        let (endpoint, timeout) = (shared.endpoint.as_str(), shared.config.request_timeout);
        let mut client = shared.client.watch_client();
        let mut stream = request(
            endpoint,
            timeout,
            client.watch(key.clone(), Some(options.clone())),
        )
        .await?;
        let Some(created) = request(endpoint, timeout, stream.message()).await? else {
            return Err(LockError::connection(endpoint, "the watch stream closed"));
        };
        if created.canceled() || !created.created() {
            return Ok(None);
        }
        // Without a revision, the caller reads everything again.
        let created_at = revision(&created).unwrap_or(i64::MAX);
        let mut watch = Watch {
            stream,
            endpoint: endpoint.to_owned(),
            key,
            options,
            created_at,
            probing: revision(&created),
            hedges: HEDGES,
            seen: BTreeSet::new(),
        };
        watch.send(Request::Progress).await?;
        Ok(Some(watch))
    }

    /// The revision the watch started after: changes after it are delivered, earlier ones
    /// must be read.
    pub(crate) fn created_at(&self) -> i64 {
        self.created_at
    }

    /// Waits for the next changes (or the end of the watch), checking on the way that one of
    /// its watchers is synced.
    pub(crate) async fn next(&mut self) -> Result<Answer> {
        loop {
            let answer = self
                .stream
                .message()
                .await
                .map_err(|e| to_lock_error(&self.endpoint, e))?;
            let Some(answer) = answer else {
                return Err(LockError::connection(
                    &self.endpoint,
                    "the watch stream closed",
                ));
            };
            if answer.canceled() {
                return Ok(Answer::Cancelled);
            }
            if answer.created() {
                // A hedge is in place; the progress answer sent with it follows.
                self.probing = revision(&answer);
                continue;
            }
            if answer.watch_id() == NO_WATCHER && answer.events().is_empty() {
                self.progress(revision(&answer)).await?;
                continue;
            }
            let fresh: Vec<Event> = answer
                .events()
                .iter()
                .filter(|event| {
                    let (at, key) = event
                        .kv()
                        .map_or((0, Vec::new()), |kv| (kv.mod_revision(), kv.key().to_vec()));
                    self.seen.insert((at, key))
                })
                .cloned()
                .collect();
            if !fresh.is_empty() {
                return Ok(Answer::Events(fresh));
            }
        }
    }

    /// A progress answer at revision `now`: the newest watcher is synced if nothing was written
    /// since its creation; if something was, another watcher is added while hedges are left.
    async fn progress(&mut self, now: Option<i64>) -> Result<()> {
        let Some(created) = self.probing.take() else {
            return Ok(());
        };
        if now == Some(created) || self.hedges == 0 {
            return Ok(());
        }
        self.hedges -= 1;
        self.send(Request::Create).await?;
        self.send(Request::Progress).await
    }

    async fn send(&mut self, what: Request) -> Result<()> {
        let sent = match what {
            Request::Create => {
                self.stream
                    .watch(self.key.clone(), Some(self.options.clone()))
                    .await
            }
            Request::Progress => self.stream.request_progress().await,
        };
        sent.map_err(|e| to_lock_error(&self.endpoint, e))
    }
}

enum Request {
    Create,
    Progress,
}

/// The revision in an answer's header.
fn revision(answer: &WatchResponse) -> Option<i64> {
    answer.header().map(|h| h.revision())
}
