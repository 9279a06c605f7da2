//! Issue 15 on Redis: shared (read) locks, semaphores and elections against a real
//! `redis-server`, looking at what the scripts leave in Redis: the holders set and the
//! holders' own keys, the waiting line, the watchers set. Redlock declares only exclusive
//! locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dlock_core::{
    LockBackend, LockError, LockGuard, LockKey, LockMode, LockOptions, LockReport, Locker,
};
use dlock_redis::RedisBackend;
use dlock_test_servers::{shared_redis, RedisServer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod conformance_support;
mod redis_support;
use conformance_support::CountingProxy;
use redis_support::command;

/// Much longer than any test: nothing here may be decided by a lease running out, unless the
/// test says so.
const LONG_LEASE: Duration = Duration::from_secs(30);

/// How soon a server-woken waiter or watcher must be woken: well below the 500 ms poll of
/// `wait_for_change`'s default and the waiters' timers (at the holder's lease).
const PROMPTLY: Duration = Duration::from_millis(300);

fn options(test: &str) -> LockOptions {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    LockOptions::default()
        .lease(LONG_LEASE)
        .prefix(format!("redis-primitives-{test}-{nanos:x}"))
}

async fn backend() -> RedisBackend {
    dlock_redis::connect(&shared_redis().url)
        .await
        .expect("connect")
}

async fn locker(options: &LockOptions) -> Locker {
    Locker::new(backend().await)
        .with_options(options.clone())
        .expect("options")
}

/// The Redis keys of the lock `k` under `options`' prefix.
struct Keys {
    queue: String,
    deadlines: String,
    holders: String,
    watchers: String,
}

async fn keys(options: &LockOptions) -> Keys {
    let lock = backend()
        .await
        .lock_key_name(&options.prefix, &LockKey::new("k").unwrap());
    let base = lock
        .strip_suffix(":lock")
        .expect("the lock key ends in :lock");
    Keys {
        queue: format!("{base}:queue"),
        deadlines: format!("{base}:deadlines"),
        holders: format!("{base}:holders"),
        watchers: format!("{base}:watchers"),
    }
}

async fn redis(args: &[&str]) -> String {
    command(&shared_redis().address, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn count(kind: &str, key: &str) -> usize {
    redis(&[kind, key]).await.parse().expect("a count")
}

/// Polls `condition` until it holds or `limit` passes (for clean-up that runs in the
/// background after a cancellation).
async fn eventually(limit: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A task taking `k` with `options` on `locker`, returned once it stands in line.
async fn queued(
    locker: &Locker,
    options: &LockOptions,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let (signal, in_line) = oneshot::channel();
    let (locker, options) = (locker.clone(), options.clone());
    let task =
        tokio::spawn(async move { locker.acquire_observed("k", &options, Some(signal)).await });
    tokio::time::timeout(PROMPTLY, in_line)
        .await
        .expect("the waiter queues promptly")
        .expect("the waiter reported it queued");
    task
}

async fn woken(task: JoinHandle<Result<LockGuard, LockError>>, what: &str) -> LockGuard {
    tokio::time::timeout(PROMPTLY, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not woken within {PROMPTLY:?}"))
        .expect("task")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test]
async fn readers_share_the_key_and_exclude_a_writer() {
    let options = options("share");
    let keys = keys(&options).await;
    let [alice, bob, carol] = [
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    ];
    let first = alice
        .rw_lock("k")
        .unwrap()
        .read()
        .await
        .expect("alice reads");
    let second = bob
        .rw_lock("k")
        .unwrap()
        .try_read()
        .await
        .expect("try_read")
        .expect("bob reads alongside alice");
    assert_eq!(
        count("ZCARD", &keys.holders).await,
        2,
        "two readers hold it"
    );
    assert!(first.fencing_token() < second.fencing_token());
    assert!(
        carol
            .rw_lock("k")
            .unwrap()
            .try_write()
            .await
            .unwrap()
            .is_none(),
        "a writer got in beside two readers"
    );
    let writer = queued(&carol, &options).await;
    first.release().await.unwrap();
    assert!(!writer.is_finished(), "the writer got in beside a reader");
    let second_token = second.fencing_token();
    second.release().await.unwrap();
    let write = woken(writer, "the writer, by the last reader's release").await;
    assert!(write.fencing_token() > second_token);
    assert_eq!(count("EXISTS", &keys.holders).await, 0, "no reader is left");
    write.release().await.unwrap();
}

#[tokio::test]
async fn a_reader_behind_a_waiting_writer_waits_and_a_writer_release_admits_every_reader() {
    let options = options("behind-writer");
    let read = options.clone().mode(LockMode::Shared);
    let keys = keys(&options).await;
    let [alice, bob, carol, dave] = [
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    ];
    let first = alice.acquire_with("k", &read).await.expect("alice reads");
    let writer = queued(&bob, &options).await;
    assert!(
        carol.try_acquire_with("k", &read).await.unwrap().is_none(),
        "a new reader overtook the waiting writer"
    );
    let readers = [queued(&carol, &read).await, queued(&dave, &read).await];
    assert_eq!(
        count("LLEN", &keys.queue).await,
        3,
        "writer and two readers wait"
    );
    first.release().await.unwrap();
    let write = woken(writer, "the writer").await;
    for reader in &readers {
        assert!(!reader.is_finished(), "a reader got in beside the writer");
    }
    let write_token = write.fencing_token();
    write.release().await.unwrap();
    // One release admits both readers at once.
    let [c, d] = readers;
    let (c, d) = (woken(c, "carol").await, woken(d, "dave").await);
    assert!(write_token < c.fencing_token().min(d.fencing_token()));
    assert_eq!(count("ZCARD", &keys.holders).await, 2);
    assert_eq!(
        count("EXISTS", &keys.queue).await,
        0,
        "nobody waits any more"
    );
    c.release().await.unwrap();
    d.release().await.unwrap();
}

#[tokio::test]
async fn n_permits_and_the_next_waits_until_a_release_wakes_it() {
    const PERMITS: u32 = 3;
    let options = options("permits");
    let permit = options.clone().mode(LockMode::Permit(PERMITS));
    let keys = keys(&options).await;
    let clients = [
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    ];
    let mut held = Vec::new();
    for client in &clients[..PERMITS as usize] {
        let semaphore = client.semaphore("k", PERMITS).unwrap();
        held.push(
            semaphore
                .try_acquire()
                .await
                .unwrap()
                .expect("a free permit"),
        );
    }
    assert_eq!(count("ZCARD", &keys.holders).await, PERMITS as usize);
    let waiters = [
        queued(&clients[3], &permit).await,
        queued(&clients[4], &permit).await,
    ];
    // One permit returned admits exactly one waiter: the first in line.
    held.remove(0).release().await.unwrap();
    let [first, second] = waiters;
    let next = woken(first, "the first permit waiter").await;
    assert!(
        !second.is_finished(),
        "a returned permit admitted two waiters"
    );
    assert_eq!(count("ZCARD", &keys.holders).await, PERMITS as usize);
    held.remove(0).release().await.unwrap();
    let last = woken(second, "the second permit waiter").await;
    assert!(next.fencing_token() < last.fencing_token());
    for guard in held.into_iter().chain([next, last]) {
        guard.release().await.unwrap();
    }
    assert_eq!(count("EXISTS", &keys.holders).await, 0);
}

#[tokio::test]
async fn a_disagreeing_permit_count_is_incompatible_and_leaves_nothing() {
    let options = options("mismatch");
    let keys = keys(&options).await;
    let [alice, bob] = [locker(&options).await, locker(&options).await];
    let two = alice
        .semaphore("k", 2)
        .unwrap()
        .acquire()
        .await
        .expect("alice takes one of two");
    let three = bob.semaphore("k", 3).unwrap();
    let waited = three
        .acquire_with(&options.clone().wait(Duration::from_secs(5)))
        .await;
    assert!(
        matches!(
            waited,
            Err(LockError::IncompatibleMode {
                requested: LockMode::Permit(3),
                found: LockMode::Permit(2),
                ..
            })
        ),
        "{waited:?}"
    );
    let mutex = bob.acquire("k").await;
    assert!(
        matches!(
            mutex,
            Err(LockError::IncompatibleMode {
                requested: LockMode::Exclusive,
                found: LockMode::Permit(2),
                ..
            })
        ),
        "{mutex:?}"
    );
    let reader = bob.rw_lock("k").unwrap().try_read().await;
    assert!(
        matches!(reader, Err(LockError::IncompatibleMode { .. })),
        "{reader:?}"
    );
    assert_eq!(
        count("EXISTS", &keys.queue).await,
        0,
        "a refused request waits"
    );
    assert_eq!(count("EXISTS", &keys.deadlines).await, 0);
    assert_eq!(count("ZCARD", &keys.holders).await, 1, "only alice holds");
    two.release().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_shared_waiter_leaves_nothing() {
    let options = options("cancel");
    let read = options.clone().mode(LockMode::Shared);
    let keys = keys(&options).await;
    let [alice, bob, carol] = [
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    ];
    let write = alice.acquire("k").await.expect("alice writes");
    let reader = queued(&bob, &read).await;
    assert_eq!(count("LLEN", &keys.queue).await, 1);
    reader.abort();
    assert!(reader.await.is_err(), "cancelled");
    eventually(
        Duration::from_secs(2),
        "the cancelled reader leaves the line",
        async || {
            count("EXISTS", &keys.queue).await == 0 && count("EXISTS", &keys.deadlines).await == 0
        },
    )
    .await;
    write.release().await.unwrap();
    let read_now = carol
        .acquire_with("k", &read.clone().wait(PROMPTLY))
        .await
        .expect("nothing left behind delays the next reader");
    assert_eq!(count("ZCARD", &keys.holders).await, 1);
    read_now.release().await.unwrap();
}

#[tokio::test]
async fn one_readers_expiry_leaves_the_others_holding() {
    let options = options("expiry");
    let short = options
        .clone()
        .mode(LockMode::Shared)
        .lease(Duration::from_millis(300))
        .keepalive(false);
    let keys = keys(&options).await;
    let [alice, bob, carol] = [
        locker(&options).await,
        locker(&options).await,
        locker(&options).await,
    ];
    let vanishing = alice.acquire_with("k", &short).await.expect("alice reads");
    let staying = bob.rw_lock("k").unwrap().read().await.expect("bob reads");
    let writer = queued(&carol, &options).await;
    let expired = vanishing.lease().valid_until();
    tokio::time::sleep_until(expired + Duration::from_millis(50)).await;
    let report = bob.inspect("k").await.unwrap();
    assert!(
        report.info.held,
        "bob still holds after alice's lease ran out"
    );
    assert!(!writer.is_finished(), "the writer got in beside bob");
    assert!(staying.is_held());
    staying.release().await.unwrap();
    let write = woken(writer, "the writer, after the last live reader").await;
    assert_eq!(count("EXISTS", &keys.holders).await, 0);
    write.release().await.unwrap();
    drop(vanishing);
}

#[tokio::test]
async fn report_names_the_oldest_reader_and_counts_the_waiters() {
    let options = options("report");
    let [alice, bob, carol] = [
        locker(&options.clone().owner("alice")).await,
        locker(&options.clone().owner("bob")).await,
        locker(&options.clone().owner("carol")).await,
    ];
    let first = alice.rw_lock("k").unwrap().read().await.unwrap();
    let second = bob.rw_lock("k").unwrap().read().await.unwrap();
    let writer = queued(&carol, &options.clone().owner("carol")).await;
    let report = carol.inspect("k").await.unwrap();
    assert!(report.info.held);
    assert_eq!(report.owner.as_deref(), Some("alice"));
    assert_eq!(report.info.fencing_token, Some(first.fencing_token()));
    assert_eq!(report.info.waiters, Some(1));
    assert!(report.acquired_at.is_some());
    let listed = carol.list(&dlock_core::ListRequest::new("")).await.unwrap();
    assert_eq!(listed.locks.len(), 1, "{listed:?}");
    first.release().await.unwrap();
    let report = carol.inspect("k").await.unwrap();
    assert_eq!(report.owner.as_deref(), Some("bob"));
    assert_eq!(report.info.fencing_token, Some(second.fencing_token()));
    second.release().await.unwrap();
    woken(writer, "the writer").await.release().await.unwrap();
    assert!(!carol.inspect("k").await.unwrap().info.held);
}

#[tokio::test]
async fn proclaim_is_visible_in_report_and_owner_checked() {
    let options = options("proclaim");
    let [alice, bob] = [locker(&options).await, locker(&options).await];
    let mut leadership = alice
        .election("k")
        .unwrap()
        .campaign("alice@10.0.0.1")
        .await
        .expect("alice leads");
    let before = bob.inspect("k").await.unwrap();
    leadership
        .proclaim("alice@10.0.0.2")
        .await
        .expect("proclaim");
    let after = bob.inspect("k").await.unwrap();
    assert_eq!(after.owner.as_deref(), Some("alice@10.0.0.2"));
    assert_eq!(
        after.info.fencing_token, before.info.fencing_token,
        "same term"
    );
    assert_eq!(after.acquired_at, before.acquired_at, "same acquisition");
    let leader = bob.election("k").unwrap().leader().await.unwrap().unwrap();
    assert_eq!(leader.value, "alice@10.0.0.2");
    // Once the server forgot the leader, a proclaim is refused and changes nothing.
    let backend = backend().await;
    let name = backend.held_key_name(leadership.guard().lease()).unwrap();
    redis(&["DEL", &name]).await;
    let refused = leadership.proclaim("alice@10.0.0.3").await;
    assert!(
        matches!(refused, Err(LockError::NotHeld { .. })),
        "{refused:?}"
    );
    assert_eq!(
        count("EXISTS", &name).await,
        0,
        "a refused proclaim wrote the key"
    );
}

#[tokio::test]
async fn a_permit_holder_can_update_its_owner_too() {
    let options = options("permit-owner");
    let backend = backend().await;
    let locker = Locker::new(backend.clone())
        .with_options(options.clone().owner("first"))
        .unwrap();
    let guard = locker.semaphore("k", 2).unwrap().acquire().await.unwrap();
    backend
        .update_owner(guard.lease(), "second")
        .await
        .expect("update_owner");
    let report = locker.inspect("k").await.unwrap();
    assert_eq!(report.owner.as_deref(), Some("second"));
    guard.release().await.unwrap();
}

/// Waits in `wait_for_change` in a task, returned once the watcher is listed with the lock
/// (so a change from now on must wake it).
async fn watching(
    backend: &RedisBackend,
    options: &LockOptions,
    watchers: &str,
) -> (JoinHandle<Result<(), LockError>>, LockReport) {
    let key = LockKey::new("k").unwrap();
    let seen = backend.report(&key, options).await.unwrap();
    let before = count("SCARD", watchers).await;
    let task = {
        let (backend, options, seen) = (backend.clone(), options.clone(), seen.clone());
        tokio::spawn(async move { backend.wait_for_change(&key, &options, &seen).await })
    };
    eventually(PROMPTLY, "the watcher is listed", async || {
        count("SCARD", watchers).await > before
    })
    .await;
    (task, seen)
}

#[tokio::test]
async fn wait_for_change_is_woken_by_release_grant_and_proclaim() {
    let options = options("watch");
    let keys = keys(&options).await;
    let observer = backend().await;
    let alice = locker(&options).await;
    let mut leadership = alice
        .election("k")
        .unwrap()
        .campaign("v1")
        .await
        .expect("alice leads");
    // Unchanged: it keeps waiting (its safety net is the holder's 30 s lease).
    let (task, _) = watching(&observer, &options, &keys.watchers).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), async {
            while !task.is_finished() {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_err(),
        "wait_for_change returned with nothing changed"
    );
    let started = Instant::now();
    leadership.proclaim("v2").await.unwrap();
    tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("woken by the proclaim")
        .unwrap()
        .unwrap();
    let (task, _) = watching(&observer, &options, &keys.watchers).await;
    leadership.resign().await.unwrap();
    tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("woken by the release")
        .unwrap()
        .unwrap();
    let (task, _) = watching(&observer, &options, &keys.watchers).await;
    let again = alice.acquire("k").await.unwrap();
    tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("woken by the grant")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    again.release().await.unwrap();
}

#[tokio::test]
async fn wait_for_change_returns_at_once_when_the_lock_changed_already() {
    let options = options("watch-stale");
    let observer = backend().await;
    let alice = locker(&options).await;
    let key = LockKey::new("k").unwrap();
    let seen = observer.report(&key, &options).await.unwrap();
    let guard = alice.acquire("k").await.unwrap();
    tokio::time::timeout(PROMPTLY, observer.wait_for_change(&key, &options, &seen))
        .await
        .expect("a change before the call is seen at once")
        .unwrap();
    guard.release().await.unwrap();
}

/// Two more instances next to the shared one, for Redlock.
fn redlock_url() -> &'static str {
    &redlock_trio().0
}

/// A Redlock URL and the addresses of its instances.
type Trio = (String, Vec<String>);

/// The Redlock URL and the addresses of its three instances.
fn redlock_trio() -> &'static Trio {
    static TRIO: OnceLock<(Vec<RedisServer>, Trio)> = OnceLock::new();
    &TRIO
        .get_or_init(|| {
            let servers = vec![RedisServer::start(), RedisServer::start()];
            let mut addresses = vec![shared_redis().address.clone()];
            addresses.extend(servers.iter().map(|s| format!("127.0.0.1:{}", s.port())));
            let url = format!("redis+redlock://{}", addresses.join(","));
            (servers, (url, addresses))
        })
        .1
}

/// A Redlock lock whose token is still being settled (the instances behind not raised yet)
/// reads as not held; once a majority shares the highest counter, that is its token, even
/// with a late instance ahead of it.
#[tokio::test]
async fn redlock_report_shows_only_a_settled_token() {
    let options = options("redlock-settle");
    let (url, addresses) = redlock_trio();
    let backend = dlock_redis::connect(url).await.expect("connect");
    let key = LockKey::new("k").unwrap();
    let lock = backend.lock_key_name(&options.prefix, &key);
    let fence = backend.fence_key_name(&options.prefix, &key);
    let set = |fences: [u64; 3]| {
        let (lock, fence) = (lock.clone(), fence.clone());
        async move {
            for (address, value) in addresses.iter().zip(fences) {
                let holder = "0123456789abcdef:7\n1795726321896\nleader";
                for args in [
                    vec!["SET", lock.as_str(), holder, "PX", "10000"],
                    vec!["SET", fence.as_str(), &value.to_string(), "PX", "15000"],
                ] {
                    command(address, &args).await.expect("SET");
                }
            }
        }
    };
    // Granted with 100, 90 and 95; the raises to 100 not done yet.
    set([100, 90, 95]).await;
    let report = backend.report(&key, &options).await.unwrap();
    assert!(
        !report.info.held,
        "an unsettled token was reported: {report:?}"
    );
    // One raised: a majority at 100.
    set([100, 100, 95]).await;
    let report = backend.report(&key, &options).await.unwrap();
    assert!(report.info.held);
    assert_eq!(report.info.fencing_token.map(|t| t.get()), Some(100));
    assert_eq!(report.owner.as_deref(), Some("leader"));
    // An instance that granted late, with a counter of its own above the token.
    set([100, 100, 120]).await;
    let report = backend.report(&key, &options).await.unwrap();
    assert_eq!(report.info.fencing_token.map(|t| t.get()), Some(100));
    for address in addresses {
        command(address, &["DEL", &lock, &fence])
            .await
            .expect("DEL");
    }
}

#[tokio::test]
async fn redlock_declares_only_exclusive_locks() {
    let options = options("redlock");
    let backend = dlock_redis::connect(redlock_url()).await.expect("connect");
    assert!(backend.supports(LockMode::Exclusive));
    assert!(!backend.supports(LockMode::Shared));
    assert!(!backend.supports(LockMode::Permit(2)));
    let locker = Locker::new(backend).with_options(options.clone()).unwrap();
    let permit = locker.semaphore("k", 2).unwrap().try_acquire().await;
    assert!(
        matches!(permit, Err(LockError::Unsupported { .. })),
        "{permit:?}"
    );
    let read = locker.rw_lock("k").unwrap().read().await;
    assert!(
        matches!(read, Err(LockError::Unsupported { .. })),
        "{read:?}"
    );
    // The election is a mutex: it works, and so does proclaim, on a majority.
    let mut leadership = locker
        .election("k")
        .unwrap()
        .campaign("v1")
        .await
        .expect("campaign on Redlock");
    leadership
        .proclaim("v2")
        .await
        .expect("proclaim on Redlock");
    let leader = locker.election("k").unwrap().leader().await.unwrap();
    assert_eq!(leader.map(|l| l.value).as_deref(), Some("v2"));
    // One instance behind (its update lost): the majority's value is the leader's.
    let backend = dlock_redis::connect(redlock_url()).await.unwrap();
    let name = backend.held_key_name(leadership.guard().lease()).unwrap();
    let value = redis(&["GET", &name]).await;
    let behind = value.replace("\nv2", "\nv1");
    assert_ne!(value, behind);
    redis(&["SET", &name, &behind, "KEEPTTL"]).await;
    let leader = locker.election("k").unwrap().leader().await.unwrap();
    assert_eq!(leader.map(|l| l.value).as_deref(), Some("v2"));
    leadership.resign().await.unwrap();
}

/// How long after a hand-over the wake-ups of waiters it did not admit would show up as
/// requests: a measuring window, not synchronisation.
const HERD_WINDOW: Duration = Duration::from_millis(100);

/// Requests to the server from `A`'s release (a writer, or one of two permit holders) until
/// the waiters it admits hold, and a window after: with `behind` more waiters in line that it
/// does not admit (readers behind a second writer, permit waiters behind the first).
async fn release_cost(test: &str, permits: bool, behind: usize) -> u64 {
    let requests = Arc::new(AtomicU64::new(0));
    let proxy = CountingProxy::start(&shared_redis().address, &requests).await;
    let options = options(test);
    let mut clients = Vec::new();
    for _ in 0..behind + 4 {
        let backend = dlock_redis::connect(&format!("redis://{}", proxy.address))
            .await
            .expect("connect");
        clients.push(Locker::new(backend).with_options(options.clone()).unwrap());
    }
    let (first, admitted_mode, blocker_mode, rest_mode) = if permits {
        let permit = options.clone().mode(LockMode::Permit(2));
        (permit.clone(), permit.clone(), permit.clone(), permit)
    } else {
        let read = options.clone().mode(LockMode::Shared);
        (options.clone(), read.clone(), options.clone(), read)
    };
    let mut holders = vec![clients[0].acquire_with("k", &first).await.unwrap()];
    if permits {
        holders.push(clients[1].acquire_with("k", &first).await.unwrap());
    }
    // Readers: two admitted by the writer's release, then a writer, then the rest.
    // Permits: one admitted by the release, then the rest.
    let mut admitted = vec![queued(&clients[2], &admitted_mode).await];
    if !permits {
        admitted.push(queued(&clients[1], &admitted_mode).await);
    }
    let mut waiting = vec![queued(&clients[3], &blocker_mode).await];
    for client in &clients[4..] {
        waiting.push(queued(client, &rest_mode).await);
    }
    let before = requests.load(Ordering::Relaxed);
    holders.remove(0).release().await.unwrap();
    for task in admitted {
        holders.push(woken(task, "a waiter the release admits").await);
    }
    tokio::time::sleep(HERD_WINDOW).await;
    let cost = requests.load(Ordering::Relaxed) - before;
    for task in &waiting {
        assert!(
            !task.is_finished(),
            "the release admitted a waiter out of turn"
        );
    }
    for task in waiting {
        task.abort();
    }
    for guard in holders {
        guard.release().await.unwrap();
    }
    cost
}

#[tokio::test]
async fn a_release_wakes_only_the_waiters_it_admits() {
    for permits in [false, true] {
        let few = release_cost("cost-few", permits, 2).await;
        let many = release_cost("cost-many", permits, 8).await;
        println!("requests per release (permits: {permits}), 2 / 8 more waiting: {few} / {many}");
        assert!(
            many <= few + 1,
            "a release with 8 more waiters cost {many} requests, with 2 {few}: it wakes \
             waiters it does not admit"
        );
        assert!(few <= 3, "a release cost {few} requests");
    }
}
