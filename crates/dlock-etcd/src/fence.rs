//! Fencing that etcd enforces: your own writes, conditional on still holding the lock.

use dlock_core::{LockError, LockGuard};
use etcd_client::{Compare, Txn};

use crate::backend::{record, still_ours};

/// A comparison that is true exactly while `guard`'s lock key still exists with the create
/// revision it was acquired with (its fencing token): put it in your transaction's `when`.
///
/// It fails once the lock was released, lost, or taken by anyone else, even if this process
/// does not know yet (paused, partitioned): etcd itself rejects the stale write.
pub fn lock_compare(guard: &LockGuard) -> Result<Compare, LockError> {
    let lease = guard.lease();
    Ok(still_ours(record(lease)?, lease))
}

/// The etcd key that holds `guard`'s lock (its create revision is the fencing token).
pub fn lock_key(guard: &LockGuard) -> Result<String, LockError> {
    Ok(record(guard.lease())?.key.clone())
}

/// A transaction whose `when` holds [`lock_compare`] and `compares`: add your operations
/// with `and_then` and run it with the backend's [`client`](crate::EtcdBackend::client).
/// `succeeded()` is false if the lock was no longer held (or a compare of yours failed).
///
/// Give it at least one operation: etcd serves a transaction without one (or with
/// serializable reads only) from the copy of whichever member the request reaches, which
/// may lag behind the cluster, so a bare check could report a lock that is gone as held. A
/// write, or a plain (linearizable) `get`, makes it go through the quorum.
///
/// ```no_run
/// # async fn demo(backend: dlock_etcd::EtcdBackend, guard: dlock_core::LockGuard) -> Result<(), Box<dyn std::error::Error>> {
/// use etcd_client::TxnOp;
///
/// let txn = dlock_etcd::fence::fenced_txn(&guard, [])?
///     .and_then([TxnOp::put("reports/daily/state", "done", None)]);
/// let written = backend.client().clone().txn(txn).await?.succeeded();
/// # let _ = written; Ok(()) }
/// ```
pub fn fenced_txn(
    guard: &LockGuard,
    compares: impl IntoIterator<Item = Compare>,
) -> Result<Txn, LockError> {
    let mut all = vec![lock_compare(guard)?];
    all.extend(compares);
    Ok(Txn::new().when(all))
}
