//! What a contender reads of the line ahead of it, for its mode, and the turn
//! [`dlock_core::turn`] makes of it.
//!
//! Each mode reads only what its turn depends on (key names tell the modes, see
//! [`layout`](crate::layout)), keys only, bounded:
//!
//! - exclusive: the newest contender ahead (the one it waits for), as before modes existed;
//! - shared: the newest untagged (exclusive) contender ahead, and whether any semaphore
//!   permit is ahead (a reader cannot queue on a semaphore's key);
//! - `Permit(n)`: the `n` oldest contenders ahead: fewer than `n` means a permit is free,
//!   and their modes must all be this semaphore's.
//!
//! A contender's own view can miss an incompatible contender further ahead (an exclusive
//! one reads only its neighbour); that one then meets the contender just ahead of it, is
//! refused and leaves, so nobody is granted beside a contender of the wrong kind.

use dlock_core::{turn, LockMode, Result, Turn};
use etcd_client::{Compare, CompareOp, GetOptions, TxnOp, TxnResponse};

use crate::layout::{newest_first, oldest_first, permit_prefix, untagged_end, Layout};
use crate::session::{got, revision_of};

/// Where a contender stands, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// It holds the lock.
    Granted,
    /// It waits until the key `key` is gone: seen at revision `read_at`, created at
    /// `created` (names are reused: a key of that name created later is someone else).
    WaitFor {
        /// The contender's key.
        key: Vec<u8>,
        /// The revision the line was read at.
        read_at: i64,
        /// The key's create revision.
        created: i64,
    },
    /// It waits until any contender ahead leaves (every permit of a semaphore is taken).
    WaitForAny {
        /// The revision the line was read at.
        read_at: i64,
    },
}

/// The reads that go into the transaction putting a new contender in `mode` into `dir`,
/// after the put: our key is the newest, so every other key is ahead of it.
pub(crate) fn enqueue_reads(dir: &str, mode: LockMode) -> Vec<TxnOp> {
    match mode {
        // The newest two: ours and the one just ahead.
        LockMode::Exclusive => vec![TxnOp::get(dir, Some(newest_first(2)))],
        LockMode::Shared => shared_reads(dir, GetOptions::new, GetOptions::new),
        // One more than the permits: ours is among them if a permit is free.
        LockMode::Permit(permits) => {
            vec![TxnOp::get(dir, Some(oldest_first(i64::from(permits) + 1)))]
        }
    }
}

/// The reads that tell a contender in `mode` whose key in `dir` was created at `revision`
/// where it stands now (run guarded by our key's create revision).
pub(crate) fn recheck_reads(dir: &str, mode: LockMode, revision: i64) -> Vec<TxnOp> {
    let ahead = revision - 1;
    match mode {
        LockMode::Exclusive => vec![TxnOp::get(
            dir,
            Some(newest_first(1).with_max_create_revision(ahead)),
        )],
        LockMode::Shared => shared_reads(
            dir,
            move || GetOptions::new().with_max_create_revision(ahead),
            move || GetOptions::new().with_max_create_revision(ahead),
        ),
        LockMode::Permit(permits) => vec![TxnOp::get(
            dir,
            Some(oldest_first(i64::from(permits)).with_max_create_revision(ahead)),
        )],
    }
}

/// A reader's two reads: the newest untagged key (a writer, or someone else's lock
/// client), and any permit key.
fn shared_reads(
    dir: &str,
    writers: impl FnOnce() -> GetOptions,
    permits: impl FnOnce() -> GetOptions,
) -> Vec<TxnOp> {
    let newest_writer = writers()
        .with_range(untagged_end(dir))
        .with_keys_only()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Descend,
        )
        .with_limit(1);
    let any_permit = permits().with_prefix().with_keys_only().with_limit(1);
    vec![
        TxnOp::get(dir, Some(newest_writer)),
        TxnOp::get(permit_prefix(dir), Some(any_permit)),
    ]
}

/// How many operations [`enqueue_reads`] and [`recheck_reads`] add for `mode`.
pub(crate) fn reads(mode: LockMode) -> usize {
    match mode {
        LockMode::Shared => 2,
        _ => 1,
    }
}

/// The turn of the contender in `mode` for the lock `lock` whose key in `dir` was created at
/// `revision`, from `response`, whose operations from `first` on are the reads above.
/// [`LockError::IncompatibleMode`](dlock_core::LockError::IncompatibleMode) if someone ahead
/// uses the key another way: the contender must leave.
pub(crate) fn decide(
    layout: Layout,
    lock: &str,
    dir: &str,
    mode: LockMode,
    revision: i64,
    response: &TxnResponse,
    first: usize,
) -> Result<Next> {
    let read_at = revision_of(response)?;
    // Everything read that is ahead of us (ours, in the enqueue's read, is not), as
    // (key, create revision).
    let mut ahead: Vec<(Vec<u8>, i64)> = Vec::new();
    for index in first..first + reads(mode) {
        ahead.extend(
            got(response, index)?
                .into_iter()
                .filter(|kv| kv.create_revision() < revision)
                .map(|kv| (kv.key().to_vec(), kv.create_revision())),
        );
    }
    ahead.sort_by_key(|(_, created)| *created);
    ahead.dedup();
    match mode {
        // The enqueue's read has the two newest: only the newer one is just ahead.
        LockMode::Exclusive => {
            let skip = ahead.len().saturating_sub(1);
            ahead.drain(..skip);
        }
        LockMode::Permit(permits) => ahead.truncate(permits as usize),
        LockMode::Shared => {}
    }
    let modes: Vec<LockMode> = ahead
        .iter()
        .map(|(key, _)| layout.mode_of(dir, key))
        .collect();
    Ok(match turn(lock, mode, &modes)? {
        Turn::Granted => Next::Granted,
        Turn::WaitFor(index) => {
            let (key, created) = ahead.swap_remove(index);
            Next::WaitFor {
                key,
                read_at,
                created,
            }
        }
        Turn::WaitForAny => Next::WaitForAny { read_at },
    })
}

/// The conditions under which a `try_acquire` in `mode` may put its key into `dir` at once,
/// in one transaction, and the read its failure branch makes to tell a busy lock from one
/// used another way ([`refused`]); `None` for a semaphore permit, whose turn depends on a
/// count no comparison can make: it queues, and withdraws if its turn is not granted.
pub(crate) fn try_conditions(dir: &str, mode: LockMode) -> Option<(Vec<Compare>, TxnOp)> {
    let nobody = match mode {
        // Nobody holds the lock and nobody waits.
        LockMode::Exclusive => vec![Compare::version(dir, CompareOp::Equal, 0).with_prefix()],
        // No writer (nor other client's key) holds or waits, and no semaphore uses the key.
        LockMode::Shared => vec![
            Compare::version(dir, CompareOp::Equal, 0).with_range(untagged_end(dir)),
            Compare::version(permit_prefix(dir), CompareOp::Equal, 0).with_prefix(),
        ],
        LockMode::Permit(_) => return None,
    };
    let any_permit = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_limit(1);
    Some((nobody, TxnOp::get(permit_prefix(dir), Some(any_permit))))
}

/// Why a `try_acquire` in `mode` whose [`try_conditions`] failed did not get the lock:
/// `Ok` if it is busy, [`LockError::IncompatibleMode`](dlock_core::LockError::IncompatibleMode)
/// if a semaphore uses the key.
pub(crate) fn refused(
    layout: Layout,
    lock: &str,
    dir: &str,
    mode: LockMode,
    response: &TxnResponse,
) -> Result<()> {
    let permits: Vec<LockMode> = got(response, 0)?
        .iter()
        .map(|kv| layout.mode_of(dir, kv.key()))
        .collect();
    turn(lock, mode, &permits).map(|_| ())
}
