//! A key this client is putting into a lock's queue, deleted again if whoever waits for it
//! gives up (a dropped `acquire` or `try_acquire`) before it is handed over.

use std::sync::Arc;
use std::time::Duration;

use dlock_core::support::spawn_clean_up;
use dlock_core::{Backoff, LockError, Result};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnResponse};
use tokio::task::JoinHandle;

use crate::error::{request, BACKEND};
use crate::session::{revision_of, Name, Shared};

/// Our key in a queue, from the moment the transaction that may put it is sent until
/// [`PendingKey::keep`] or [`PendingKey::forget`]. Dropped before that, it deletes the key
/// in the background, so a cancelled request leaves nothing that holds or delays the lock
/// for the rest of the session (P7).
pub(crate) struct PendingKey {
    inner: Arc<Shared>,
    /// The key's name, lent by the session (see [`Name`]); `None` once handed on.
    name: Option<Name>,
    /// The transaction putting the key, while in flight. It runs as a task of its own so
    /// that a dropped caller cannot cut it off half way: the delete sent from `Drop` travels
    /// on another stream, could reach etcd first, and the put landing after it would leave
    /// the key in line for the session's whole life.
    putting: Option<JoinHandle<Result<TxnResponse>>>,
    /// The create revision of the key, once the put is known to have happened.
    revision: Option<i64>,
    armed: bool,
}

impl PendingKey {
    /// Sends `txn`, which may put the key `name`, in a task of its own; the key is to be
    /// deleted on drop from now on, before the request has even gone out.
    pub(crate) fn put(shared: &Arc<Shared>, name: Name, txn: Txn) -> PendingKey {
        let putting = tokio::spawn({
            let shared = Arc::clone(shared);
            async move { shared.txn(txn).await }
        });
        PendingKey {
            inner: Arc::clone(shared),
            name: Some(name),
            putting: Some(putting),
            revision: None,
            armed: true,
        }
    }

    /// The answer to the transaction. On an error the key stays armed: it may exist.
    pub(crate) async fn settled(&mut self) -> Result<TxnResponse> {
        let Some(putting) = self.putting.as_mut() else {
            return Err(LockError::protocol(BACKEND, "the put was awaited twice"));
        };
        let outcome = putting.await;
        self.putting = None;
        let response =
            outcome.map_err(|error| LockError::backend(BACKEND, error.to_string()))??;
        self.revision = put_revision(&response);
        Ok(response)
    }

    /// The key's name.
    pub(crate) fn key(&self) -> &str {
        self.name.as_ref().map_or("", Name::key)
    }

    /// Hands the key over (the lock is held now): dropping no longer deletes it.
    pub(crate) fn keep(mut self) -> Name {
        self.armed = false;
        self.name
            .take()
            .expect("a pending key has its name until handed on")
    }

    /// The key is known not to exist (the put did not happen, or it was deleted): nothing
    /// to clean up, and the name can be used again.
    pub(crate) fn forget(&mut self) {
        self.armed = false;
        if let Some(name) = self.name.take() {
            name.give_back();
        }
    }

    /// Nothing to clean up, but the key's state is not understood: the name is retired.
    pub(crate) fn retire(&mut self) {
        self.armed = false;
        self.name = None;
    }
}

/// The create revision of the key a successful put transaction wrote.
fn put_revision(response: &TxnResponse) -> Option<i64> {
    response
        .succeeded()
        .then(|| revision_of(response).ok())
        .flatten()
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(name) = self.name.take() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let putting = self.putting.take();
        let mut revision = self.revision;
        spawn_clean_up(async move {
            // Delete only once the put is settled, or the delete may overtake it.
            if let Some(put) = putting {
                match put.await {
                    // Nothing was put. (The name is still not reused: for `enqueue` a failed
                    // put means a key of that name existed, which must not happen.)
                    Ok(Ok(response)) if !response.succeeded() => return,
                    Ok(Ok(response)) => revision = put_revision(&response),
                    _ => {}
                }
            }
            // Retried, since the client lives on and keeps the key's lease alive: a delete
            // lost to a server restart or a cut link would otherwise leave the key in line
            // for the session's whole life.
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
            for _ in 0..DELETE_TRIES {
                match delete(&inner, name.key(), revision).await {
                    Ok(()) => {
                        // Only a delete of a known incarnation frees the name: after an
                        // unknown put outcome, that put may still land later.
                        if revision.is_some() {
                            name.give_back();
                        }
                        return;
                    }
                    Err(error) => {
                        tracing::debug!(%error, key = name.key(), "removing a cancelled request's key failed")
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            tracing::warn!(
                key = name.key(),
                "could not remove a cancelled request's key; its lease will"
            );
        });
    }
}

/// Deletes `key`: only the incarnation created at `revision` when it is known (so a late
/// retry cannot remove a newer incarnation of a reused name), else whatever is there (the
/// name is then never reused).
pub(crate) async fn delete(inner: &Shared, key: &str, revision: Option<i64>) -> Result<()> {
    match revision {
        Some(revision) => {
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, revision)])
                .and_then([TxnOp::delete(key, None)]);
            inner.txn(txn).await.map(|_| ())
        }
        None => {
            let mut kv = inner.client.kv_client();
            request(
                &inner.endpoint,
                inner.config.request_timeout,
                kv.delete(key, None),
            )
            .await
            .map(|_| ())
        }
    }
}

/// How many times a dropped request's key is deleted before its lease is left to remove it:
/// with the backoff above, about a minute.
const DELETE_TRIES: u32 = 20;
