//! Issue 14: the etcd backend reuses its contender key names, so etcd's history (never
//! compacted by default) does not fill a lock's directory with ever more deleted keys that
//! every range read walks; and reuse never lets an old incarnation's clean-up touch a new
//! one.

use std::collections::BTreeSet;
use std::time::Duration;

use dlock_core::{LockKey, LockOptions, Locker};
use dlock_etcd::etcd_client::WatchOptions;
use dlock_etcd::EtcdBackend;
use dlock_test_servers::shared_etcd;
use tokio::time::{timeout, Instant};

/// Far above a healthy local round trip.
const PROMPTLY: Duration = Duration::from_secs(10);

fn options(test: &str) -> LockOptions {
    use std::hash::{BuildHasher, RandomState};
    let unique = RandomState::new().hash_one((std::process::id(), test));
    LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix(format!("dlock-history/{test}/{unique:016x}"))
}

async fn backend() -> EtcdBackend {
    dlock_etcd::connect(&shared_etcd().url)
        .await
        .expect("connect")
}

/// Every key name etcd has ever seen under `prefix` (deleted ones too): the prefix's whole
/// history, replayed by a watch from revision 1 up to a marker written now.
async fn names_ever_used(backend: &EtcdBackend, prefix: &str) -> BTreeSet<Vec<u8>> {
    let mut client = backend.client().clone();
    let marker = format!("{prefix}~marker");
    client.put(marker.as_str(), "", None).await.expect("marker");
    let history = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client.watch(prefix, Some(history)).await.expect("watch");
    let mut names = BTreeSet::new();
    loop {
        let answer = timeout(PROMPTLY, stream.message())
            .await
            .expect("history in time")
            .expect("watch answer")
            .expect("watch open");
        for kv in answer.events().iter().filter_map(|event| event.kv()) {
            if kv.key() == marker.as_bytes() {
                return names;
            }
            names.insert(kv.key().to_vec());
        }
    }
}

/// One client taking and releasing one lock 50 times, once with `acquire` and once with
/// `try_acquire`, leaves one key name in etcd's history, not 50 (before: one new name per
/// acquisition, so every read of the directory walked all the deleted ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_reuses_one_key_name_per_lock() {
    let options = options("reuse");
    let backend = backend().await;
    let locker = Locker::new(backend.clone())
        .with_options(options.clone())
        .expect("options");
    let mut tokens = Vec::new();
    for _ in 0..50 {
        let guard = locker.acquire("k").await.expect("acquire");
        tokens.push(guard.fencing_token());
        guard.release().await.expect("release");
        let tried = locker.try_acquire("k").await.expect("try").expect("free");
        tokens.push(tried.fencing_token());
        tried.release().await.expect("release");
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must grow with reused names: {tokens:?}"
    );
    let names = names_ever_used(&backend, &format!("{}/", options.prefix)).await;
    assert_eq!(names.len(), 1, "names ever used: {names:?}");
}

/// A waiter given up while queued (its key deleted in the background, conditional on that
/// incarnation) and the same client queueing again at once for the same lock: the new
/// incarnation is never removed by the old one's clean-up, so it gets and keeps the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiters_clean_up_never_removes_a_newer_incarnation() {
    let options = options("cancel-reuse");
    let holder = Locker::new(backend().await)
        .with_options(options.clone())
        .expect("options");
    let client = backend().await;
    let waiter = Locker::new(client.clone())
        .with_options(options.clone())
        .expect("options");
    let key = LockKey::new("k").expect("key");
    for round in 0..20 {
        let guard = holder.acquire("k").await.expect("holder acquires");
        // Queue, then give up once queued (dropping the acquire).
        let (queued, in_line) = tokio::sync::oneshot::channel();
        let waiting = {
            let (waiter, options) = (waiter.clone(), options.clone());
            tokio::spawn(async move { waiter.acquire_observed("k", &options, Some(queued)).await })
        };
        timeout(PROMPTLY, in_line)
            .await
            .expect("queued in time")
            .expect("queued");
        waiting.abort();
        // Queue again at once, from the same client and session.
        let again = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.acquire("k").await })
        };
        guard.release().await.expect("release");
        let got = timeout(PROMPTLY, again)
            .await
            .expect("handoff")
            .expect("task")
            .expect("the new request acquires");
        // Let any clean-up of the old incarnation run its course, then check ours stands.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let report = holder.inspect(&key).await.expect("inspect");
            assert!(
                report.info.held,
                "round {round}: the lock vanished: {report:?}"
            );
            assert_eq!(
                report.info.fencing_token,
                Some(got.fencing_token()),
                "round {round}"
            );
            if report.info.waiters == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(got.is_held(), "round {round}");
        got.release().await.expect("still ours to release");
    }
}

/// A waiter whose answer to its enqueue is held up while the holder releases and queues
/// again under the same (reused) key name: when the answer arrives, the name ahead exists
/// again, but as a new incarnation that queued behind the waiter. The waiter must take it for
/// gone and get the lock; before, it watched that key, which waited for it in turn (found by
/// the faults harness's `etcd_restart`, where a server restart made this interleaving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_name_ahead_that_queued_again_behind_us_is_not_waited_for() {
    use dlock_test_servers::{Direction, FaultProxy};
    let options = options("reincarnation");
    let address = shared_etcd()
        .url
        .trim_start_matches("etcd://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = FaultProxy::start(address.as_str());
    let holder_backend = backend().await;
    let holder = Locker::new(holder_backend.clone())
        .with_options(options.clone())
        .expect("options");
    let waiter_backend = dlock_etcd::connect(&format!("etcd://{}?timeout=5s", proxy.address()))
        .await
        .expect("connect through the proxy");
    let waiter = Locker::new(waiter_backend)
        .with_options(options.clone())
        .expect("options");
    let key = LockKey::new("k").expect("key");
    // The waiter's session (its lease) exists before its answers are held back.
    waiter
        .acquire("warm-up")
        .await
        .expect("warm-up")
        .release()
        .await
        .expect("release");
    let first = holder.acquire("k").await.expect("holder acquires");
    // Hold the waiter's answers back: its enqueue reaches etcd, its reply does not.
    proxy.stall(Direction::ToClient);
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.acquire("k").await })
    };
    let deadline = Instant::now() + PROMPTLY;
    while holder.inspect(&key).await.expect("inspect").info.waiters != Some(1) {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The holder releases and queues again, under the same name (now behind the waiter).
    first.release().await.expect("release");
    let (queued, in_line) = tokio::sync::oneshot::channel();
    let again = {
        let (holder, options) = (holder.clone(), options.clone());
        tokio::spawn(async move { holder.acquire_observed("k", &options, Some(queued)).await })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");
    proxy.unstall(Direction::ToClient);
    let got = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiter gets the lock, not a wait on a key waiting for it")
        .expect("task")
        .expect("acquire");
    got.release().await.expect("release");
    timeout(PROMPTLY, again)
        .await
        .expect("the holder gets it back")
        .expect("task")
        .expect("acquire")
        .release()
        .await
        .expect("release");
}
