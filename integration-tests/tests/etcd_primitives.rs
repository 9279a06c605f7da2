//! The etcd backend's lock modes (issue 15) against a real etcd: readers and writers,
//! semaphore permits, elections, and what each leaves in etcd's key space.

use std::time::Duration;

use dlock_core::{LockError, LockGuard, LockKey, LockMode, LockOptions, LockReport, Locker};
use dlock_etcd::etcd_client::GetOptions;
use dlock_test_servers::shared_etcd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Far above a healthy local round trip, far below the 10 s lease of these tests.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Options with a prefix of this test's own.
fn options(test: &str) -> LockOptions {
    use std::hash::{BuildHasher, RandomState};
    let unique = RandomState::new().hash_one(std::process::id());
    LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix(format!("dlock-primitives/{test}/{unique:016x}"))
}

/// A client of its own (its own etcd session).
async fn locker(options: &LockOptions) -> Locker {
    let backend = dlock_etcd::connect(&shared_etcd().url)
        .await
        .expect("connect");
    Locker::new(backend)
        .with_options(options.clone())
        .expect("valid options")
}

/// Every etcd key under the options' prefix, read from outside.
async fn keys_under(options: &LockOptions) -> Vec<String> {
    let backend = dlock_etcd::connect(&shared_etcd().url)
        .await
        .expect("connect");
    let mut client = backend.client().clone();
    let answer = client
        .get(
            format!("{}/", options.prefix),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("read keys");
    answer
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Waits (bounded) until exactly `count` keys are under the options' prefix: a cancelled
/// request's key is deleted by a background task, which nothing else can be awaited on.
async fn expect_keys(options: &LockOptions, count: usize) -> Vec<String> {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let keys = keys_under(options).await;
        if keys.len() == count {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} keys, found {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts an `acquire` of `key` in `mode` and returns once it stands in line (so it is
/// not granted at once).
async fn queued(
    locker: &Locker,
    key: &str,
    options: &LockOptions,
    mode: LockMode,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let (sent, in_line) = oneshot::channel();
    let task = {
        let (locker, key, options) = (locker.clone(), key.to_owned(), options.clone().mode(mode));
        tokio::spawn(async move { locker.acquire_observed(key, &options, Some(sent)).await })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued, not granted at once");
    task
}

/// The guard a queued `acquire` gets.
async fn granted(task: JoinHandle<Result<LockGuard, LockError>>) -> LockGuard {
    timeout(PROMPTLY, task)
        .await
        .expect("granted in time")
        .expect("task")
        .expect("granted")
}

async fn report(locker: &Locker, key: &str) -> LockReport {
    locker.inspect(key).await.expect("report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_the_lock_and_exclude_a_writer() {
    let options = options("readers-share");
    let (alice, bob, carol) = (
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    );
    let first = alice
        .rw_lock("k")
        .unwrap()
        .read()
        .await
        .expect("alice reads");
    let second = bob.rw_lock("k").unwrap().read().await.expect("bob reads");
    let third = bob
        .rw_lock("k")
        .unwrap()
        .try_read()
        .await
        .expect("try_read")
        .expect("a third reader shares the lock");
    assert!(first.fencing_token() < second.fencing_token());
    assert!(second.fencing_token() < third.fencing_token());
    let shared = report(&carol, "k").await;
    assert!(shared.info.held);
    assert_eq!(shared.info.fencing_token, Some(first.fencing_token()));
    assert_eq!(shared.info.waiters, Some(0), "{shared:?}");

    let writers = carol.rw_lock("k").unwrap();
    assert!(writers.try_write().await.expect("try_write").is_none());
    // Nothing left behind by the refused try.
    expect_keys(&options, 3).await;
    let writer = queued(&carol, "k", &options, LockMode::Exclusive).await;
    let waiting = report(&carol, "k").await;
    assert_eq!(waiting.info.waiters, Some(1), "{waiting:?}");
    let last_reader = third.fencing_token();
    // The writer waits for every reader ahead of it, whatever order they leave in.
    first.release().await.unwrap();
    third.release().await.unwrap();
    assert!(!writer.is_finished(), "a reader still holds the lock");
    second.release().await.unwrap();
    let writing = granted(writer).await;
    assert!(writing.fencing_token() > last_reader);
    // While it writes, readers are refused.
    let readers = alice.rw_lock("k").unwrap();
    assert!(readers.try_read().await.expect("try_read").is_none());
    expect_keys(&options, 1).await;
    let writer_token = writing.fencing_token();
    writing.release().await.unwrap();
    let reading = readers.try_read().await.unwrap().expect("free again");
    assert!(reading.fencing_token() > writer_token);
    reading.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_a_waiting_writer_waits() {
    let options = options("reader-behind-writer");
    let (alice, bob, carol) = (
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    );
    let reading = alice
        .rw_lock("k")
        .unwrap()
        .read()
        .await
        .expect("alice reads");
    let writer = queued(&bob, "k", &options, LockMode::Exclusive).await;
    // A reader that arrives after the waiting writer queues behind it, and try_read is
    // refused, though only readers hold the lock.
    assert!(carol
        .rw_lock("k")
        .unwrap()
        .try_read()
        .await
        .expect("try_read")
        .is_none());
    let reader = queued(&carol, "k", &options, LockMode::Shared).await;
    let line = report(&alice, "k").await;
    assert_eq!(line.info.fencing_token, Some(reading.fencing_token()));
    assert_eq!(line.info.waiters, Some(2), "{line:?}");

    let first_token = reading.fencing_token();
    reading.release().await.unwrap();
    let writing = granted(writer).await;
    let line = report(&alice, "k").await;
    assert_eq!(line.info.fencing_token, Some(writing.fencing_token()));
    assert_eq!(line.info.waiters, Some(1), "{line:?}");
    assert!(!reader.is_finished(), "the reader got in beside the writer");
    let writer_token = writing.fencing_token();
    writing.release().await.unwrap();
    let late = granted(reader).await;
    // One sequence of tokens, in grant order.
    assert!(first_token < writer_token);
    assert!(writer_token < late.fencing_token());
    late.release().await.unwrap();
    expect_keys(&options, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_permits_are_held_at_once_and_the_next_waits_for_any_release() {
    let options = options("permits");
    let clients = [
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    ];
    let mut held = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let semaphore = client.semaphore("pool", 3).unwrap();
        held.push(if i % 2 == 0 {
            semaphore.acquire().await.expect("a permit")
        } else {
            semaphore
                .try_acquire()
                .await
                .unwrap()
                .expect("a free permit")
        });
    }
    let line = report(&clients[0], "pool").await;
    assert_eq!(line.info.fencing_token, Some(held[0].fencing_token()));
    assert_eq!(line.info.waiters, Some(0), "{line:?}");
    // Every permit is taken: a try withdraws, and leaves nothing behind.
    let semaphore = clients[2].semaphore("pool", 3).unwrap();
    assert!(semaphore.try_acquire().await.unwrap().is_none());
    expect_keys(&options, 3).await;
    let fourth = queued(&clients[2], "pool", &options, LockMode::Permit(3)).await;
    let fifth = queued(&clients[1], "pool", &options, LockMode::Permit(3)).await;
    let line = report(&clients[0], "pool").await;
    assert_eq!(line.info.waiters, Some(2), "{line:?}");
    // Not the oldest holder: any release frees a permit, for the oldest waiter.
    held.remove(1).release().await.unwrap();
    let fourth = granted(fourth).await;
    assert!(fourth.fencing_token() > held[1].fencing_token());
    assert!(!fifth.is_finished(), "a fourth permit was handed out");
    held.remove(0).release().await.unwrap();
    let fifth = granted(fifth).await;
    for guard in held.into_iter().chain([fourth, fifth]) {
        guard.release().await.unwrap();
    }
    expect_keys(&options, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_another_way_is_incompatible_and_left_alone() {
    let options = options("incompatible");
    let (alice, bob) = (locker(&options).await, locker(&options).await);
    let permit = alice
        .semaphore("pool", 2)
        .unwrap()
        .acquire()
        .await
        .expect("a permit");
    let incompatible = |outcome: Result<_, LockError>, requested: LockMode| match outcome {
        Err(LockError::IncompatibleMode {
            requested: asked,
            found,
            ..
        }) => {
            assert_eq!(asked, requested);
            assert_eq!(found, LockMode::Permit(2));
        }
        Err(other) => panic!("expected IncompatibleMode, got {other}"),
        Ok(_) => panic!("expected IncompatibleMode, got a lock"),
    };
    let other_count = bob.semaphore("pool", 3).unwrap();
    incompatible(other_count.acquire().await.map(drop), LockMode::Permit(3));
    incompatible(
        other_count.try_acquire().await.map(drop),
        LockMode::Permit(3),
    );
    let rw = bob.rw_lock("pool").unwrap();
    incompatible(rw.read().await.map(drop), LockMode::Shared);
    incompatible(rw.try_read().await.map(drop), LockMode::Shared);
    incompatible(rw.write().await.map(drop), LockMode::Exclusive);
    incompatible(rw.try_write().await.map(drop), LockMode::Exclusive);
    // Nothing left in line: the permit holder's key alone (the refused keys are deleted
    // before the error is returned).
    assert_eq!(keys_under(&options).await.len(), 1);
    // The other way round: a semaphore on a mutex's key.
    let mutex = bob.acquire("mutex").await.expect("mutex");
    match alice.semaphore("mutex", 2).unwrap().acquire().await {
        Err(LockError::IncompatibleMode {
            requested, found, ..
        }) => {
            assert_eq!(requested, LockMode::Permit(2));
            assert_eq!(found, LockMode::Exclusive);
        }
        other => panic!("expected IncompatibleMode, got {:?}", other.map(drop)),
    }
    assert_eq!(keys_under(&options).await.len(), 2);
    mutex.release().await.unwrap();
    // The semaphore still works for those who agree on its count.
    let second = bob.semaphore("pool", 2).unwrap().acquire().await.unwrap();
    permit.release().await.unwrap();
    second.release().await.unwrap();
    expect_keys(&options, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_leave_nothing_behind() {
    let options = options("cancelled");
    let (alice, bob, carol) = (
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    );
    // A permit waiter.
    let permit = alice.semaphore("pool", 1).unwrap().acquire().await.unwrap();
    let cancelled = queued(&bob, "pool", &options, LockMode::Permit(1)).await;
    let behind = queued(&carol, "pool", &options, LockMode::Permit(1)).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    expect_keys(&options, 2).await;
    permit.release().await.unwrap();
    granted(behind).await.release().await.unwrap();

    // A reader waiting behind a writer, and a writer waiting behind readers.
    let writing = alice.rw_lock("rw").unwrap().write().await.unwrap();
    let reader = queued(&bob, "rw", &options, LockMode::Shared).await;
    reader.abort();
    assert!(reader.await.unwrap_err().is_cancelled());
    expect_keys(&options, 1).await;
    writing.release().await.unwrap();
    let reading = alice.rw_lock("rw").unwrap().read().await.unwrap();
    let writer = queued(&bob, "rw", &options, LockMode::Exclusive).await;
    writer.abort();
    assert!(writer.await.unwrap_err().is_cancelled());
    expect_keys(&options, 1).await;
    // Nobody waits any more: readers are let in.
    let again = carol.rw_lock("rw").unwrap().try_read().await.unwrap();
    assert!(again.is_some(), "a cancelled writer still blocks readers");
    reading.release().await.unwrap();
    again.unwrap().release().await.unwrap();
    expect_keys(&options, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaimed_value_is_visible_in_the_report() {
    let options = options("proclaim");
    let (alice, bob) = (locker(&options).await, locker(&options).await);
    let election = alice.election("leader").unwrap();
    let mut leadership = election.campaign("alice:1").await.expect("elected");
    let seen = bob.election("leader").unwrap().leader().await.unwrap();
    let seen = seen.expect("a leader");
    assert_eq!(seen.value, "alice:1");
    assert_eq!(seen.term, Some(leadership.term()));
    leadership.proclaim("alice:2").await.expect("proclaim");
    let now = bob.election("leader").unwrap().leader().await.unwrap();
    let now = now.expect("a leader");
    assert_eq!(now.value, "alice:2");
    assert_eq!(now.term, Some(leadership.term()), "same term");
    let report = report(&bob, "leader").await;
    assert_eq!(report.owner.as_deref(), Some("alice:2"));
    // The key keeps its lease: the session still answers for it.
    assert!(report.info.remaining_lease.is_some());
    assert!(leadership
        .guard()
        .extend(Duration::from_secs(10))
        .await
        .is_ok());

    // A proclaim after the lock was taken away is refused, and changes nothing.
    let backend = dlock_etcd::connect(&shared_etcd().url).await.unwrap();
    let key = dlock_etcd::fence::lock_key(leadership.guard()).unwrap();
    backend.client().clone().delete(key, None).await.unwrap();
    assert!(matches!(
        leadership.proclaim("alice:3").await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(bob
        .election("leader")
        .unwrap()
        .leader()
        .await
        .unwrap()
        .is_none());
    expect_keys(&options, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_time_written_late_keeps_a_proclaimed_value() {
    // A candidate that waited is granted before its grant time is written (in the
    // background); a proclaim right after the grant must not be overwritten by it.
    let options = options("proclaim-after-wait");
    let (alice, bob) = (locker(&options).await, locker(&options).await);
    for round in 0..5 {
        let first = alice
            .election("leader")
            .unwrap()
            .campaign("alice")
            .await
            .unwrap();
        let (sent, in_line) = oneshot::channel();
        let waiting = {
            let (bob, options) = (bob.clone(), options.clone().owner(format!("bob:{round}")));
            tokio::spawn(async move { bob.acquire_observed("leader", &options, Some(sent)).await })
        };
        timeout(PROMPTLY, in_line).await.unwrap().unwrap();
        first.resign().await.unwrap();
        let guard = granted(waiting).await;
        let lease = guard.lease();
        bob.backend()
            .update_owner(lease, "bob:proclaimed")
            .await
            .expect("update_owner");
        // Whenever the grant-time write lands, before or after these reads, the proclaimed
        // value stays, with a grant time.
        for _ in 0..10 {
            let report = report(&alice, "leader").await;
            assert_eq!(
                report.owner.as_deref(),
                Some("bob:proclaimed"),
                "{report:?}"
            );
            assert!(report.acquired_at.is_some());
        }
        guard.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_change_resolves_on_proclaim_and_on_release() {
    let options = options("wait-for-change");
    let (alice, bob) = (locker(&options).await, locker(&options).await);
    let key = LockKey::new("leader").unwrap();
    let mut leadership = alice
        .election("leader")
        .unwrap()
        .campaign("alice:1")
        .await
        .unwrap();
    let watcher = bob.backend().clone();
    let wait = |seen: LockReport| {
        let (watcher, key, options) = (watcher.clone(), key.clone(), options.clone());
        tokio::spawn(async move { watcher.wait_for_change(&key, &options, &seen).await })
    };
    // Resolves on a new owner description. (The safety net is the holder's remaining
    // lease, ~10 s: resolving within PROMPTLY is the watch's doing.)
    let seen = report(&bob, "leader").await;
    let waiting = wait(seen.clone());
    leadership.proclaim("alice:2").await.unwrap();
    timeout(PROMPTLY, waiting)
        .await
        .expect("woken by the proclaim")
        .unwrap()
        .unwrap();
    // A report that is already stale resolves at once.
    timeout(PROMPTLY, wait(seen))
        .await
        .expect("stale report")
        .unwrap()
        .unwrap();
    // Resolves on a release.
    let seen = report(&bob, "leader").await;
    assert_eq!(seen.owner.as_deref(), Some("alice:2"));
    let waiting = wait(seen);
    leadership.resign().await.unwrap();
    timeout(PROMPTLY, waiting)
        .await
        .expect("woken by the release")
        .unwrap()
        .unwrap();
    // And on a new holder of a free lock.
    let seen = report(&bob, "leader").await;
    assert!(!seen.info.held);
    let waiting = wait(seen);
    let guard = alice.acquire("leader").await.unwrap();
    timeout(PROMPTLY, waiting)
        .await
        .expect("woken by the acquisition")
        .unwrap()
        .unwrap();
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_follow_the_leader() {
    let options = options("observe");
    let (alice, bob, carol) = (
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    );
    let mut changes = carol.election("leader").unwrap().observe();
    assert_eq!(changes.next().await.unwrap(), None);
    let mut first = alice
        .election("leader")
        .unwrap()
        .campaign("alice")
        .await
        .unwrap();
    let next = timeout(PROMPTLY, changes.next()).await.unwrap().unwrap();
    assert_eq!(next.map(|l| l.value), Some("alice".to_owned()));
    first.proclaim("alice, again").await.unwrap();
    let next = timeout(PROMPTLY, changes.next()).await.unwrap().unwrap();
    assert_eq!(next.map(|l| l.value), Some("alice, again".to_owned()));
    let second = queued(
        &bob,
        "leader",
        &options.clone().owner("bob"),
        LockMode::Exclusive,
    )
    .await;
    first.resign().await.unwrap();
    let bobs = granted(second).await;
    // Carol sees bob (or, first, nobody in between).
    let mut next = timeout(PROMPTLY, changes.next()).await.unwrap().unwrap();
    if next.is_none() {
        next = timeout(PROMPTLY, changes.next()).await.unwrap().unwrap();
    }
    let next = next.expect("bob leads");
    assert_eq!(next.value, "bob");
    assert_eq!(next.term, Some(bobs.fencing_token()));
    bobs.release().await.unwrap();
}

/// The layout other dlock processes rely on: an exclusive contender's key is untagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_keys_keep_their_layout_and_modes_are_tagged() {
    let options = options("layout");
    let alice = locker(&options).await;
    let mutex = alice.acquire("a").await.unwrap();
    let reading = alice.rw_lock("b").unwrap().read().await.unwrap();
    let permit = alice.semaphore("c", 4).unwrap().acquire().await.unwrap();
    let mut keys = keys_under(&options).await;
    keys.sort();
    let prefix = &options.prefix;
    let backend = alice.backend();
    let etcd = (&**backend as &dyn std::any::Any)
        .downcast_ref::<dlock_etcd::EtcdBackend>()
        .expect("an etcd backend");
    let lease = format!("{:016x}", etcd.session_lease_ids().await[0]);
    assert_eq!(
        keys,
        [
            format!("{prefix}/a/#{lease}-0"),
            format!("{prefix}/b/#~shared-{lease}-1"),
            format!("{prefix}/c/#~permit-4-{lease}-2"),
        ]
    );
    for guard in [mutex, reading, permit] {
        guard.release().await.unwrap();
    }
}

/// Nothing changes, nothing wakes: the wait is the watch's, not a poll (the trait's
/// default polls every 500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_change_does_not_poll() {
    let options = options("no-poll");
    let (alice, bob) = (locker(&options).await, locker(&options).await);
    let key = LockKey::new("leader").unwrap();
    let guard = alice.acquire("leader").await.unwrap();
    let seen = report(&bob, "leader").await;
    let quiet = timeout(
        Duration::from_millis(1500),
        bob.backend().wait_for_change(&key, &options, &seen),
    )
    .await;
    assert!(quiet.is_err(), "woken without a change: {quiet:?}");
    guard.release().await.unwrap();
}

/// The queue directory of `key` under the options' prefix (the prefixes of these tests need
/// no escaping), for keys put from outside.
fn dir(options: &LockOptions, key: &str) -> String {
    format!("{}/{key}/#", options.prefix)
}

/// A waiter that meets a semaphore's permit only when the contender just ahead of it
/// leaves is refused then, and leaves nothing in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_meets_a_semaphore_later_is_refused_and_leaves() {
    let options = options("refused-later");
    let alice = locker(&options).await;
    let backend = dlock_etcd::connect(&shared_etcd().url).await.unwrap();
    let mut client = backend.client().clone();
    let dir = dir(&options, "k");
    // Another process's permit, and behind it a mutex contender that has not yet noticed.
    let permit = format!("{dir}~permit-2-00000000000000aa-0");
    let mutex = format!("{dir}00000000000000bb-0");
    client.put(permit.as_str(), "", None).await.unwrap();
    client.put(mutex.as_str(), "", None).await.unwrap();
    // A reader sees the permit at once.
    let refused = alice.rw_lock("k").unwrap().read().await;
    assert!(matches!(refused, Err(LockError::IncompatibleMode { .. })));
    // A writer waits for the mutex contender just ahead of it…
    let waiter = queued(&alice, "k", &options, LockMode::Exclusive).await;
    assert_eq!(keys_under(&options).await.len(), 3);
    // …and meets the permit when it leaves.
    client.delete(mutex.as_str(), None).await.unwrap();
    match timeout(PROMPTLY, waiter).await.unwrap().unwrap() {
        Err(LockError::IncompatibleMode {
            requested, found, ..
        }) => {
            assert_eq!(requested, LockMode::Exclusive);
            assert_eq!(found, LockMode::Permit(2));
        }
        other => panic!("expected IncompatibleMode, got {:?}", other.map(drop)),
    }
    // Its key was deleted before the error was returned.
    assert_eq!(keys_under(&options).await, vec![permit.clone()]);
    client.delete(permit.as_str(), None).await.unwrap();
}
