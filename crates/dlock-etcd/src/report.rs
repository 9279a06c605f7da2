//! What the server says about one lock: who holds it and how many wait ([`report_dir`]),
//! and a wait, woken by a watch, until that may have changed ([`wait_for_change`]).

use std::time::Duration;

use dlock_core::{FencingToken, LockInfo, LockMode, LockReport, Result};
use etcd_client::{GetOptions, KeyValue};

use crate::error::{request, to_lock_error};
use crate::layout::{oldest_first, Layout};
use crate::session::Shared;

/// What a report says of a lock before the holder's remaining lease is asked for.
struct Snapshot {
    report: LockReport,
    /// The etcd lease of the oldest holder's key.
    holder_lease: Option<i64>,
}

/// Who holds the lock whose queue directory is `dir`: the oldest key (its create revision is
/// the token, its value the owner and times), how many contenders are not granted, and how
/// long the oldest holder's lease has left. Two requests for an exclusive holder; a shared
/// or permit holder costs a third, a keys-only read of the holders.
pub(crate) async fn report_dir(shared: &Shared, layout: Layout, dir: &str) -> Result<LockReport> {
    let Snapshot {
        mut report,
        holder_lease,
    } = snapshot(shared, layout, dir).await?;
    if let Some(lease) = holder_lease {
        let mut leases = shared.client.lease_client();
        let (endpoint, timeout) = (&shared.endpoint, shared.config.request_timeout);
        let remaining = request(endpoint, timeout, leases.time_to_live(lease, None))
            .await?
            .ttl();
        report.info.remaining_lease = u64::try_from(remaining).ok().map(Duration::from_secs);
    }
    Ok(report)
}

/// The report of `dir` without the remaining lease.
async fn snapshot(shared: &Shared, layout: Layout, dir: &str) -> Result<Snapshot> {
    let mut kv = shared.client.kv_client();
    let (endpoint, timeout) = (&shared.endpoint, shared.config.request_timeout);
    // The oldest key, with its value, and the number of keys in the line.
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Ascend,
        )
        .with_limit(1);
    let queue = request(endpoint, timeout, kv.get(dir, Some(oldest))).await?;
    let Some(holder) = queue.kvs().first() else {
        return Ok(Snapshot {
            report: LockReport::from(LockInfo {
                waiters: Some(0),
                ..LockInfo::default()
            }),
            holder_lease: None,
        });
    };
    let count = usize::try_from(queue.count()).unwrap_or(usize::MAX);
    let holders = match layout.mode_of(dir, holder.key()) {
        // Only the oldest key can be granted before anyone else.
        LockMode::Exclusive => 1,
        mode => {
            // Readers or permit holders share the lock: read the line's modes (keys only, at
            // the revision of the first read, so both reads are one snapshot) as far as
            // holders can reach, and count those `turn` grants.
            let reach = match mode {
                LockMode::Permit(permits) => i64::from(permits),
                _ => 0,
            };
            let at = queue.header().map_or(0, |h| h.revision());
            let line = request(
                endpoint,
                timeout,
                kv.get(dir, Some(oldest_first(reach).with_revision(at))),
            )
            .await?;
            granted(layout, dir, line.kvs())
        }
    };
    let mut report = LockReport::from(LockInfo {
        held: true,
        fencing_token: u64::try_from(holder.create_revision())
            .ok()
            .map(FencingToken::new),
        remaining_lease: None,
        waiters: Some(count.saturating_sub(holders)),
    });
    let (owner, acquired_at) = layout.holder(holder.key(), holder.value());
    report.owner = owner;
    report.acquired_at = acquired_at;
    Ok(Snapshot {
        report,
        holder_lease: Some(holder.lease()),
    })
}

/// How many of `line` (oldest first, from the first contender on) hold the lock: the
/// leading contenders whose turn is granted. (A contender that is not granted stops the
/// count: everyone behind it is behind a waiter, or a writer's reader.)
fn granted(layout: Layout, dir: &str, line: &[KeyValue]) -> usize {
    let modes: Vec<LockMode> = line
        .iter()
        .map(|kv| layout.mode_of(dir, kv.key()))
        .collect();
    dlock_core::holders(&modes).max(1)
}

/// Resolves when the lock of `dir` may have changed since `seen` was read: a watch on the
/// whole queue (any put or delete: a new holder, a release, an expiry, a new owner
/// description, a waiter), with a timer at the holder's remaining lease only as a safety
/// net.
///
/// The watch starts at the current revision (etcd serves a watch that starts in the past
/// from a 100 ms loop), and the lock is read once more when it is in place: a change
/// between `seen` and the watch resolves at once.
pub(crate) async fn wait_for_change(
    shared: &Shared,
    layout: Layout,
    dir: &str,
    seen: &LockReport,
) -> Result<()> {
    let (endpoint, timeout) = (shared.endpoint.as_str(), shared.config.request_timeout);
    let mut watch = shared.client.watch_client();
    let options = etcd_client::WatchOptions::new().with_prefix();
    let mut stream = request(endpoint, timeout, watch.watch(dir, Some(options))).await?;
    // The first answer says the watch is in place.
    match request(endpoint, timeout, stream.message()).await? {
        Some(answer) if answer.created() && answer.events().is_empty() => {}
        // Cancelled, closed, or already an event: the caller reads the lock again.
        _ => return Ok(()),
    }
    let now = snapshot(shared, layout, dir).await?.report;
    if !same_holder(&now, seen) {
        return Ok(());
    }
    let safety_net = seen
        .info
        .remaining_lease
        .unwrap_or(SAFETY_NET)
        .clamp(Duration::from_secs(1), SAFETY_NET);
    tokio::select! {
        answer = stream.message() => match answer {
            Ok(Some(_)) | Ok(None) => Ok(()),
            // A broken watch is a wake-up: the caller's next read reports a lost cluster.
            Err(error) => {
                tracing::debug!(error = %to_lock_error(endpoint, error), "change watch failed");
                Ok(())
            }
        },
        _ = tokio::time::sleep(safety_net) => Ok(()),
    }
}

/// Whether two reports tell the same holder, owner and line.
fn same_holder(a: &LockReport, b: &LockReport) -> bool {
    a.same_holder(b) && a.info.waiters == b.info.waiters
}

/// The longest a change wait runs without a word from the watch: the watch is what wakes
/// it; this only bounds the harm of a watch that went silent.
const SAFETY_NET: Duration = Duration::from_secs(60);
