//! What the etcd backend tells about its locks (issue 13): the owner and the acquisition
//! time stored in the contender key's value, also for a lock that was handed over.

use std::time::{Duration, SystemTime};

use dlock_core::{LockKey, LockOptions, Locker};
use dlock_test_servers::shared_etcd;
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

/// Far above a healthy local round trip.
const PROMPTLY: Duration = Duration::from_secs(10);

fn options(test: &str) -> LockOptions {
    use std::hash::{BuildHasher, RandomState};
    let unique = RandomState::new().hash_one(std::process::id());
    LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix(format!("dlock-introspection/{test}/{unique:016x}"))
}

async fn locker(options: &LockOptions) -> Locker {
    let backend = dlock_etcd::connect(&shared_etcd().url)
        .await
        .expect("connect");
    Locker::new(backend)
        .with_options(options.clone())
        .expect("valid options")
}

/// A waiter that got the lock reports when it got it, not when it queued: the grant time
/// is written after the handoff (a report in between says the queue time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_lock_reports_its_grant_time_and_owner() {
    let options = options("grant-time");
    let alice = locker(&options).await;
    let bob = locker(&options).await;
    let guard = alice
        .acquire_with("k", &options.clone().owner("alice"))
        .await
        .expect("alice acquires");
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let (bob, options) = (bob.clone(), options.clone().owner("bob"));
        tokio::spawn(async move { bob.acquire_observed("k", &options, Some(queued)).await })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");
    let queued_by = SystemTime::now();
    // Bob stands in line for a measurable while (not a synchronisation: the check below is
    // on timestamps, and the time only has to be clearly apart from the queue time).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = SystemTime::now();
    guard.release().await.expect("release");
    let bobs = timeout(PROMPTLY, waiting)
        .await
        .expect("handoff")
        .expect("task")
        .expect("bob acquires");
    let key = LockKey::new("k").expect("key");
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let report = alice.inspect(&key).await.expect("report");
        assert_eq!(report.owner.as_deref(), Some("bob"), "{report:?}");
        assert_eq!(report.info.fencing_token, Some(bobs.fencing_token()));
        let at = report.acquired_at.expect("acquired_at");
        assert!(at <= SystemTime::now(), "{report:?}");
        // Milliseconds are stored; the grant is after the release started.
        if at + Duration::from_millis(1) >= released_at {
            break;
        }
        assert!(at <= queued_by, "neither queue nor grant time: {report:?}");
        assert!(
            Instant::now() < deadline,
            "grant time never written: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bobs.release().await.expect("release");
}
