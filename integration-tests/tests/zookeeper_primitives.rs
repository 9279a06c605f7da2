//! Issue 15's primitives on the ZooKeeper backend against a real server: readers and writers
//! (`Shared` / `Exclusive` in one line), semaphores (`Permit(n)`), the election's `proclaim`
//! (`update_owner`) and its observers' `wait_for_change`, in dlock's layout; and the foreign
//! layouts refusing the modes they do not map.

use std::future::Future;
use std::time::Duration;

use dlock_core::{LockBackend, LockError, LockGuard, LockMode, LockOptions, LockReport, Locker};
use dlock_test_servers::shared_zookeeper;
use dlock_zookeeper::zookeeper_client::Client;
use dlock_zookeeper::{Layout, ZooKeeperBackend, ZooKeeperConfig};
use tokio::sync::oneshot;

/// Generous bound for anything that should happen "soon": a JVM server and four test
/// binaries share two cores, and a handover is a few round trips.
const SOON: Duration = Duration::from_secs(15);

/// How long a wait that must not end is watched before the test moves on: long enough for a
/// wrongly granted contender's few round trips on a loaded machine, short enough to keep the
/// test quick. Only ever a bound on something that must NOT happen, never synchronisation.
const QUIET: Duration = Duration::from_millis(500);

/// A lock prefix no other test (or run) uses.
fn prefix(test: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let id = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("dlock-primitives/{test}/{id:016x}")
}

/// A client of its own (one session) in `layout`, with a lease of 10 s.
async fn client_in(layout: Layout, prefix: &str) -> (Locker, ZooKeeperBackend) {
    let mut config = ZooKeeperConfig::from_url(&shared_zookeeper().url)
        .expect("the harness gives a valid URL")
        .session_timeout(Duration::from_secs(10));
    config.layout = layout;
    let backend = ZooKeeperBackend::connect(config).await.expect("connect");
    let options = LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix(prefix);
    let locker = Locker::new(backend.clone())
        .with_options(options)
        .expect("valid options");
    (locker, backend)
}

async fn client(prefix: &str) -> (Locker, ZooKeeperBackend) {
    client_in(Layout::Dlock, prefix).await
}

async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("waited {limit:?} for {what}"))
}

/// Starts `acquire` in `mode` (under the locker's own options) in a task and returns once it
/// stands in line (its `queued` signal), with the task's handle.
async fn queued(
    locker: &Locker,
    key: &str,
    mode: LockMode,
) -> tokio::task::JoinHandle<Result<LockGuard, LockError>> {
    let options = locker.options().clone().mode(mode);
    let (sent, in_line) = oneshot::channel();
    let (locker, key) = (locker.clone(), key.to_owned());
    let task =
        tokio::spawn(async move { locker.acquire_observed(key, &options, Some(sent)).await });
    within(SOON, "the waiter to stand in line", in_line)
        .await
        .expect("the waiter queued rather than failing or being granted");
    task
}

/// Asserts that `task` is still waiting after [`QUIET`].
async fn still_waits(task: &mut tokio::task::JoinHandle<Result<LockGuard, LockError>>, who: &str) {
    if let Ok(result) = tokio::time::timeout(QUIET, &mut *task).await {
        panic!("{who} should still wait, but got {result:?}");
    }
}

async fn granted(
    task: tokio::task::JoinHandle<Result<LockGuard, LockError>>,
    who: &str,
) -> LockGuard {
    within(SOON, who, task)
        .await
        .expect("the task ran")
        .unwrap_or_else(|error| panic!("{who}: {error}"))
}

/// The key node a held lock's node stands in.
fn key_node(guard: &LockGuard) -> String {
    let node = ZooKeeperBackend::node_path(guard.lease()).expect("a zookeeper lease");
    node.rsplit_once('/')
        .expect("a node below its key")
        .0
        .to_owned()
}

/// A session of its own that looks at the tree directly.
async fn admin() -> Client {
    let hosts = shared_zookeeper().url.trim_start_matches("zookeeper://");
    Client::connect(hosts).await.expect("an admin session")
}

/// Waits, woken by a children watch, until `dir` has exactly `count` children.
async fn children_become(admin: &Client, dir: &str, count: usize) {
    within(SOON, &format!("{dir} to have {count} children"), async {
        loop {
            let (children, watcher) = admin
                .list_and_watch_children(dir)
                .await
                .expect("list the key node");
            if children.len() == count {
                return;
            }
            watcher.changed().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_exclude_a_writer() {
    let prefix = prefix("readers-share");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let (w, _) = client(&prefix).await;
    let first = a.rw_lock("k").unwrap().read().await.expect("a reads");
    let second = within(SOON, "a second reader", b.rw_lock("k").unwrap().read())
        .await
        .expect("b reads beside a");
    assert!(second.fencing_token() > first.fencing_token());
    let report = a.inspect("k").await.unwrap();
    assert!(report.info.held);
    assert_eq!(report.info.fencing_token, Some(first.fencing_token()));
    assert_eq!(report.info.waiters, Some(0), "both readers hold");

    assert!(
        w.rw_lock("k").unwrap().try_write().await.unwrap().is_none(),
        "readers hold: no writer"
    );
    let mut writer = queued(&w, "k", LockMode::Exclusive).await;
    assert_eq!(a.inspect("k").await.unwrap().info.waiters, Some(1));
    first.release().await.unwrap();
    still_waits(&mut writer, "the writer behind one reader").await;
    let second_token = second.fencing_token();
    second.release().await.unwrap();
    let writer = granted(writer, "the writer once the readers left").await;
    assert!(writer.fencing_token() > second_token);
    assert!(
        a.rw_lock("k").unwrap().try_read().await.unwrap().is_none(),
        "a writer holds: no reader"
    );
    let writer_token = writer.fencing_token();
    writer.release().await.unwrap();
    let after = a
        .rw_lock("k")
        .unwrap()
        .try_read()
        .await
        .unwrap()
        .expect("free again");
    assert!(after.fencing_token() > writer_token);
    after.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_a_waiting_writer_waits() {
    let prefix = prefix("reader-behind-writer");
    let (a, _) = client(&prefix).await;
    let (w, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let reader = a.rw_lock("k").unwrap().read().await.unwrap();
    let writer = queued(&w, "k", LockMode::Exclusive).await;
    let mut late_reader = queued(&b, "k", LockMode::Shared).await;
    assert!(
        b.rw_lock("k").unwrap().try_read().await.unwrap().is_none(),
        "a reader does not pass a waiting writer"
    );
    let report = a.inspect("k").await.unwrap();
    assert_eq!(report.info.waiters, Some(2), "{report:?}");
    still_waits(&mut late_reader, "the reader behind the writer").await;

    reader.release().await.unwrap();
    let writer = granted(writer, "the writer").await;
    still_waits(&mut late_reader, "the reader behind the holding writer").await;
    let writer_token = writer.fencing_token();
    writer.release().await.unwrap();
    let late = granted(late_reader, "the late reader").await;
    assert!(late.fencing_token() > writer_token);
    late.release().await.unwrap();
}

/// A reader behind two writers watches the last one only: the first writer's release does
/// not wake it (one wake-up, one re-read of the line in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_watches_only_the_last_writer_ahead() {
    let prefix = prefix("reader-watches-last-writer");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let (c, reader_backend) = client(&prefix).await;
    let first = a.acquire("k").await.unwrap();
    let second = queued(&b, "k", LockMode::Exclusive).await;
    let reader = queued(&c, "k", LockMode::Shared).await;
    first.release().await.unwrap();
    let second = granted(second, "the second writer").await;
    second.release().await.unwrap();
    granted(reader, "the reader").await.release().await.unwrap();
    // Had the reader watched the first writer, it would have read the line again after each
    // writer's release. (Whether the one re-read follows a wake-up or finds the second writer
    // already gone when setting its watch depends on timing: at most one wake-up.)
    assert_eq!(reader_backend.rechecks(), 1);
    assert!(reader_backend.wakeups() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_permits_and_the_next_waits_until_a_release() {
    let prefix = prefix("permits");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&prefix).await);
    }
    let mut holders = Vec::new();
    for (locker, _) in &clients[..3] {
        let semaphore = locker.semaphore("s", 3).unwrap();
        holders.push(
            within(SOON, "a free permit", semaphore.acquire())
                .await
                .expect("a permit"),
        );
    }
    let tokens: Vec<_> = holders.iter().map(LockGuard::fencing_token).collect();
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "{tokens:?}"
    );
    let (fourth, _) = &clients[3];
    let semaphore = fourth.semaphore("s", 3).unwrap();
    assert!(
        semaphore.try_acquire().await.unwrap().is_none(),
        "three of three taken"
    );
    let report = fourth.inspect("s").await.unwrap();
    assert!(report.info.held);
    assert_eq!(
        report.info.fencing_token,
        Some(tokens[0]),
        "the oldest holder"
    );
    assert_eq!(report.info.waiters, Some(0));

    let mut waiter = queued(fourth, "s", LockMode::Permit(3)).await;
    assert_eq!(fourth.inspect("s").await.unwrap().info.waiters, Some(1));
    still_waits(&mut waiter, "the fourth contender").await;
    // The middle holder leaves: any departure frees a permit.
    holders.remove(1).release().await.unwrap();
    let fourth_guard = granted(waiter, "the fourth contender after a release").await;
    assert!(fourth_guard.fencing_token() > tokens[2]);
    let report = fourth.inspect("s").await.unwrap();
    assert_eq!(report.info.waiters, Some(0), "{report:?}");
    for guard in holders {
        guard.release().await.unwrap();
    }
    fourth_guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_count_mismatch_is_incompatible_and_leaves_no_node() {
    let prefix = prefix("mismatch");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let holder = a.semaphore("s", 2).unwrap().acquire().await.unwrap();
    let dir = key_node(&holder);
    for (what, outcome) in [
        (
            "a waiting acquire with 3 permits",
            b.semaphore("s", 3).unwrap().acquire().await.map(|_| ()),
        ),
        (
            "a try with 3 permits",
            b.semaphore("s", 3).unwrap().try_acquire().await.map(|_| ()),
        ),
        (
            "a mutex on the semaphore's key",
            b.acquire("s").await.map(|_| ()),
        ),
        (
            "a reader on the semaphore's key",
            b.rw_lock("s").unwrap().read().await.map(|_| ()),
        ),
    ] {
        match outcome {
            Err(LockError::IncompatibleMode { .. }) => {}
            other => panic!("{what}: expected IncompatibleMode, got {other:?}"),
        }
        // The error comes after the node was removed: nothing left in line.
        let children = admin().await.list_children(&dir).await.unwrap();
        assert_eq!(children.len(), 1, "{what} left {children:?}");
    }
    // And the other way round: a semaphore on a mutex's key.
    let mutex = a.acquire("m").await.unwrap();
    match b.semaphore("m", 2).unwrap().acquire().await {
        Err(LockError::IncompatibleMode { .. }) => {}
        other => panic!("expected IncompatibleMode, got {other:?}"),
    }
    let children = admin()
        .await
        .list_children(&key_node(&mutex))
        .await
        .unwrap();
    assert_eq!(children.len(), 1, "{children:?}");
    mutex.release().await.unwrap();
    holder.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_permit_waiter_leaves_no_node() {
    let prefix = prefix("cancelled");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let (c, _) = client(&prefix).await;
    let holder = a.semaphore("s", 1).unwrap().acquire().await.unwrap();
    let dir = key_node(&holder);
    let waiter = queued(&b, "s", LockMode::Permit(1)).await;
    let admin = admin().await;
    children_become(&admin, &dir, 2).await;
    waiter.abort();
    children_become(&admin, &dir, 1).await;
    // The next contender is served at once after the holder, not behind a ghost.
    let next = queued(&c, "s", LockMode::Permit(1)).await;
    holder.release().await.unwrap();
    granted(next, "the contender behind the cancelled one")
        .await
        .release()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_reader_leaves_no_node() {
    let prefix = prefix("reader-timeout");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let writer = a.acquire("k").await.unwrap();
    let options = b
        .options()
        .clone()
        .mode(LockMode::Shared)
        .wait(Duration::from_millis(300));
    match b.acquire_with("k", &options).await {
        Err(LockError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let children = admin()
        .await
        .list_children(&key_node(&writer))
        .await
        .unwrap();
    assert_eq!(children.len(), 1, "{children:?}");
    writer.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proclaim_is_visible_in_the_report_and_release_still_works() {
    let prefix = prefix("proclaim");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let election = a.election("e").unwrap();
    let mut leadership = election.campaign("alpha").await.unwrap();
    let observer = b.election("e").unwrap();
    let leader = observer.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.value, "alpha");
    assert_eq!(leader.term, Some(leadership.term()));

    leadership.proclaim("beta").await.unwrap();
    let leader = observer.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.value, "beta");
    assert_eq!(leader.term, Some(leadership.term()), "same term");
    assert_eq!(b.inspect("e").await.unwrap().owner.as_deref(), Some("beta"));

    // The data write changed the node's version: the owner-checked release must still work,
    // and the holder's own-node watch must not take the write for a loss.
    assert!(leadership.is_leader());
    leadership.resign().await.expect("resign after proclaiming");
    assert_eq!(observer.leader().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proclaim_after_the_node_is_gone_is_not_held() {
    let prefix = prefix("proclaim-gone");
    let (a, _) = client(&prefix).await;
    let mut leadership = a.election("e").unwrap().campaign("alpha").await.unwrap();
    let node = ZooKeeperBackend::node_path(leadership.guard().lease())
        .unwrap()
        .to_owned();
    admin().await.delete(&node, None).await.unwrap();
    match leadership.proclaim("beta").await {
        Err(LockError::NotHeld { .. }) => {}
        other => panic!("expected NotHeld, got {other:?}"),
    }
    assert!(!leadership.is_leader());
}

/// Starts `wait_for_change` from `seen` in a task.
fn change_after(
    backend: &ZooKeeperBackend,
    key: &str,
    options: &LockOptions,
    seen: LockReport,
) -> tokio::task::JoinHandle<Result<(), LockError>> {
    let (backend, options) = (backend.clone(), options.clone());
    let key = dlock_core::LockKey::new(key).unwrap();
    tokio::spawn(async move { backend.wait_for_change(&key, &options, &seen).await })
}

async fn stays_unchanged(task: &mut tokio::task::JoinHandle<Result<(), LockError>>) {
    if let Ok(result) = tokio::time::timeout(QUIET, &mut *task).await {
        panic!("wait_for_change resolved with nothing changed: {result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_change_resolves_on_release_proclaim_and_a_first_holder() {
    let prefix = prefix("wait-for-change");
    let (a, _) = client(&prefix).await;
    let (b, watcher) = client(&prefix).await;
    let options = b.options().clone();

    // No key node at all yet: resolves when someone takes the lock.
    let seen = b.inspect("e").await.unwrap();
    assert!(!seen.info.held);
    let mut change = change_after(&watcher, "e", &options, seen);
    stays_unchanged(&mut change).await;
    let mut leadership = a.election("e").unwrap().campaign("alpha").await.unwrap();
    within(SOON, "the first holder", change)
        .await
        .unwrap()
        .unwrap();

    // A new owner description changes no child: the holder's data watch sees it.
    let seen = b.inspect("e").await.unwrap();
    assert_eq!(seen.owner.as_deref(), Some("alpha"));
    let mut change = change_after(&watcher, "e", &options, seen);
    stays_unchanged(&mut change).await;
    leadership.proclaim("beta").await.unwrap();
    within(SOON, "the proclaim", change).await.unwrap().unwrap();

    // A release.
    let seen = b.inspect("e").await.unwrap();
    assert_eq!(seen.owner.as_deref(), Some("beta"));
    let mut change = change_after(&watcher, "e", &options, seen.clone());
    stays_unchanged(&mut change).await;
    leadership.resign().await.unwrap();
    within(SOON, "the release", change).await.unwrap().unwrap();

    // A stale `seen` resolves at once.
    within(
        SOON,
        "a stale report",
        change_after(&watcher, "e", &options, seen),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_follow_the_leader() {
    let prefix = prefix("observe");
    let (a, _) = client(&prefix).await;
    let (b, _) = client(&prefix).await;
    let (c, _) = client(&prefix).await;
    let mut changes = c.election("e").unwrap().observe();
    assert_eq!(
        within(SOON, "no leader", changes.next()).await.unwrap(),
        None
    );
    let mut first = a.election("e").unwrap().campaign("alpha").await.unwrap();
    let seen = within(SOON, "alpha", changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_str(), seen.term),
        ("alpha", Some(first.term()))
    );
    first.proclaim("alpha-2").await.unwrap();
    let seen = within(SOON, "alpha-2", changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, "alpha-2");
    let second = tokio::spawn({
        let b = b.clone();
        async move { b.election("e").unwrap().campaign("beta").await }
    });
    let first_term = first.term();
    first.resign().await.unwrap();
    // Either "no leader" passes by too quickly to be seen, or it is seen first.
    let mut seen = within(SOON, "the next leader", changes.next())
        .await
        .unwrap();
    if seen.is_none() {
        seen = within(SOON, "beta", changes.next()).await.unwrap();
    }
    let seen = seen.expect("beta leads");
    let second = second.await.unwrap().unwrap();
    assert_eq!(
        (seen.value.as_str(), seen.term),
        ("beta", Some(second.term()))
    );
    assert!(second.term() > first_term);
    second.resign().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_layouts_support_only_exclusive_locks() {
    for layout in [Layout::Kazoo, Layout::Curator] {
        let prefix = prefix("foreign");
        let (locker, backend) = client_in(layout, &prefix).await;
        assert!(backend.supports(LockMode::Exclusive));
        assert!(!backend.supports(LockMode::Shared), "{layout:?}");
        assert!(!backend.supports(LockMode::Permit(2)), "{layout:?}");
        let path = format!("/{prefix}/s");
        for (what, outcome) in [
            (
                "a permit",
                locker
                    .semaphore(path.as_str(), 2)
                    .unwrap()
                    .acquire()
                    .await
                    .map(|_| ()),
            ),
            (
                "a reader",
                locker
                    .rw_lock(path.as_str())
                    .unwrap()
                    .read()
                    .await
                    .map(|_| ()),
            ),
        ] {
            match outcome {
                Err(LockError::Unsupported { .. }) => {}
                other => panic!("{layout:?}, {what}: expected Unsupported, got {other:?}"),
            }
        }
        // A writer is a mutex, which the foreign layout does map.
        let writer = locker
            .rw_lock(path.as_str())
            .unwrap()
            .write()
            .await
            .unwrap();
        writer.release().await.unwrap();
    }
}
