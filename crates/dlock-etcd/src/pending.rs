//! A key this client is putting into a lock's queue, deleted again if whoever waits for it
//! gives up (a dropped `acquire` or `try_acquire`) before it is handed over.

use std::sync::Arc;
use std::time::Duration;

use dlock_core::support::spawn_clean_up;
use dlock_core::{Backoff, LockError, Result};
use etcd_client::{Txn, TxnResponse};
use tokio::task::JoinHandle;

use crate::error::{request, BACKEND};
use crate::session::Shared;

/// Our key in a queue, from the moment the transaction that may put it is sent until
/// [`PendingKey::keep`] or [`PendingKey::forget`]. Dropped before that, it deletes the key
/// in the background, so a cancelled request leaves nothing that holds or delays the lock
/// for the rest of the session (P7).
pub(crate) struct PendingKey {
    inner: Arc<Shared>,
    key: String,
    /// The transaction putting the key, while in flight. It runs as a task of its own so
    /// that a dropped caller cannot cut it off half way: the delete sent from `Drop` travels
    /// on another stream, could reach etcd first, and the put landing after it would leave
    /// the key in line for the session's whole life.
    putting: Option<JoinHandle<Result<TxnResponse>>>,
    armed: bool,
}

impl PendingKey {
    /// Sends `txn`, which may put `key`, in a task of its own; the key is to be deleted on
    /// drop from now on, before the request has even gone out.
    pub(crate) fn put(shared: &Arc<Shared>, key: String, txn: Txn) -> PendingKey {
        let putting = tokio::spawn({
            let shared = Arc::clone(shared);
            async move { shared.txn(txn).await }
        });
        PendingKey {
            inner: Arc::clone(shared),
            key,
            putting: Some(putting),
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
        outcome.map_err(|error| LockError::backend(BACKEND, error.to_string()))?
    }

    /// The key's name.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Hands the key over (the lock is held now): dropping no longer deletes it.
    pub(crate) fn keep(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.key)
    }

    /// The key is known not to exist (the put did not happen, or it was deleted): nothing
    /// to clean up.
    pub(crate) fn forget(&mut self) {
        self.armed = false;
    }
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let key = std::mem::take(&mut self.key);
        let putting = self.putting.take();
        spawn_clean_up(async move {
            // Delete only once the put is settled, or the delete may overtake it.
            if let Some(put) = putting {
                let _ = put.await;
            }
            let mut kv = inner.client.kv_client();
            // The key is unique to this request (lease id and sequence): deleting it by name
            // cannot touch anyone else's, however often. Retried, since the client lives on
            // and keeps the key's lease alive: a delete lost to a server restart or a cut
            // link would otherwise leave the key in line for the session's whole life.
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
            for _ in 0..DELETE_TRIES {
                match request(
                    &inner.endpoint,
                    inner.config.request_timeout,
                    kv.delete(key.as_str(), None),
                )
                .await
                {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::debug!(%error, key, "removing a cancelled request's key failed")
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            tracing::warn!(
                key,
                "could not remove a cancelled request's key; its lease will"
            );
        });
    }
}

/// How many times a dropped request's key is deleted before its lease is left to remove it:
/// with the backoff above, about a minute.
const DELETE_TRIES: u32 = 20;
