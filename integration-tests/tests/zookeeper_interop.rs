//! `layout=kazoo` against the real kazoo (`python3-kazoo`, one Python process per kazoo
//! client): the two exclude each other both ways, wait for each other, and a crashed holder
//! on either side frees the lock for the other within its session.

use std::any::Any;
use std::time::{Duration, Instant};

use dlock_core::{LockOptions, Locker};
use dlock_test_servers::{kazoo_try_lock, shared_zookeeper, KazooLock};
use dlock_zookeeper::ZooKeeperBackend;

/// The session timeout of both sides in the crash tests: the server's expiry check runs per
/// tick, so a crashed holder's node goes within this plus the backend's declared bound.
const SESSION: Duration = Duration::from_secs(2);

fn hosts() -> &'static str {
    shared_zookeeper().url.trim_start_matches("zookeeper://")
}

/// A lock path no other test uses, as kazoo is given it (absolute).
fn unique_path(test: &str) -> String {
    let id: u64 = rand_id();
    format!("/dlock-interop/{test}-{id:016x}/lock")
}

fn rand_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ u64::from(std::process::id()) << 32
}

async fn kazoo_layout(session: Duration) -> Locker {
    let url = format!(
        "{}?layout=kazoo&session_timeout={}ms",
        shared_zookeeper().url,
        session.as_millis()
    );
    let backend = dlock_zookeeper::connect(&url)
        .await
        .expect("a kazoo-layout client");
    Locker::new(backend)
}

/// kazoo holds: dlock's try fails under the same path (with or without the leading `/`),
/// `inspect` names kazoo's identifier, and a waiting dlock acquire gets the lock as soon as
/// kazoo releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_holds_and_dlock_waits_its_turn() {
    let path = unique_path("kazoo-holds");
    let kazoo = KazooLock::hold(hosts(), &path, Duration::from_secs(10), "kazoo worker 7");
    let locker = kazoo_layout(Duration::from_secs(10)).await;
    for key in [path.as_str(), path.trim_start_matches('/')] {
        assert!(
            locker.try_acquire(key).await.expect("asked").is_none(),
            "dlock took {key} while kazoo holds it"
        );
    }
    let report = locker.inspect(path.as_str()).await.expect("inspect");
    assert!(report.info.held, "{report:?}");
    assert_eq!(
        report.owner.as_deref(),
        Some("kazoo worker 7"),
        "{report:?}"
    );
    assert_eq!(report.info.waiters, Some(0), "{report:?}");
    let waiter = {
        let (locker, path) = (locker.clone(), path.clone());
        tokio::spawn(async move {
            locker
                .acquire_with(
                    path.as_str(),
                    &LockOptions::default().wait(Duration::from_secs(60)),
                )
                .await
        })
    };
    // The waiter stands in kazoo's line (its node is one of kazoo's contenders) before
    // kazoo lets go, so the handoff goes through the predecessor watch.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = locker.inspect(path.as_str()).await.expect("inspect");
        if report.info.waiters == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dlock waiter never queued: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(move || kazoo.release())
        .await
        .expect("kazoo released");
    let guard = waiter
        .await
        .expect("the waiter task")
        .expect("dlock gets the lock kazoo released");
    guard.release().await.expect("release");
}

/// dlock holds: kazoo's try fails; a waiting kazoo gets the lock when dlock releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlock_holds_and_kazoo_waits_its_turn() {
    let path = unique_path("dlock-holds");
    let locker = kazoo_layout(Duration::from_secs(10)).await;
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let tried = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || kazoo_try_lock(hosts(), &path))
            .await
            .expect("kazoo tried")
    };
    assert!(!tried, "kazoo took {path} while dlock holds it");
    let mut kazoo = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            KazooLock::start(hosts(), &path, Duration::from_secs(10), "kazoo waiter")
        })
        .await
        .expect("kazoo started")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = locker.inspect(path.as_str()).await.expect("inspect");
        if report.info.waiters == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "kazoo never queued: {report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    guard.release().await.expect("release");
    let kazoo = tokio::task::spawn_blocking(move || {
        kazoo.wait_held();
        kazoo
    })
    .await
    .expect("kazoo gets the lock dlock released");
    assert!(
        locker
            .try_acquire(path.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took the lock back from kazoo"
    );
    tokio::task::spawn_blocking(move || kazoo.release())
        .await
        .expect("kazoo released");
}

/// A kazoo holder killed with SIGKILL (no session close): dlock gets the lock once the
/// server expires kazoo's session, within its timeout plus the server's tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_kazoo_holder_frees_the_lock_for_dlock() {
    let path = unique_path("kazoo-crash");
    let kazoo = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || KazooLock::hold(hosts(), &path, SESSION, "doomed"))
            .await
            .expect("kazoo holds")
    };
    let locker = kazoo_layout(Duration::from_secs(10)).await;
    let bound = SESSION + locker.capabilities().crash_release_bound + Duration::from_secs(1);
    let killed = Instant::now();
    kazoo.kill();
    let guard = locker
        .acquire_with(
            path.as_str(),
            &LockOptions::default().wait(bound + Duration::from_secs(5)),
        )
        .await
        .expect("dlock gets the crashed holder's lock");
    let took = killed.elapsed();
    assert!(took <= bound, "freed after {took:?}, bound {bound:?}");
    guard.release().await.expect("release");
}

/// A dlock holder whose process "crashes" (session abandoned: no close, no heartbeat): a
/// waiting kazoo gets the lock within the session timeout plus the server's tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_dlock_holder_frees_the_lock_for_kazoo() {
    let path = unique_path("dlock-crash");
    let locker = kazoo_layout(SESSION).await;
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let mut kazoo = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            KazooLock::start(hosts(), &path, Duration::from_secs(10), "kazoo heir")
        })
        .await
        .expect("kazoo started")
    };
    let bound = SESSION + locker.capabilities().crash_release_bound + Duration::from_secs(1);
    guard.abandon();
    let backend: &dyn Any = locker.backend().as_ref();
    let crashed = Instant::now();
    backend
        .downcast_ref::<ZooKeeperBackend>()
        .expect("a zookeeper backend")
        .abandon_session()
        .await;
    let kazoo = tokio::task::spawn_blocking(move || {
        kazoo.wait_held();
        kazoo
    })
    .await
    .expect("kazoo gets the crashed holder's lock");
    let took = crashed.elapsed();
    assert!(took <= bound, "freed after {took:?}, bound {bound:?}");
    tokio::task::spawn_blocking(move || kazoo.release())
        .await
        .expect("kazoo released");
}

/// Without the layout, dlock's own nodes are not kazoo's contenders: the reason the layout
/// must be asked for (and the reason it exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlocks_own_layout_does_not_exclude_kazoo() {
    let path = unique_path("own-layout");
    let locker = Locker::new(
        dlock_zookeeper::connect(&shared_zookeeper().url)
            .await
            .expect("connect"),
    );
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let tried = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || kazoo_try_lock(hosts(), &path))
            .await
            .expect("kazoo tried")
    };
    assert!(tried, "kazoo saw dlock's own layout as a contender");
    guard.release().await.expect("release");
}
