//! `layout=kazoo` against the real kazoo (`python3-kazoo`, one Python process per client) and
//! `layout=curator` against the real Curator `InterProcessMutex` (Debian's jars, one JVM per
//! client): dlock and the other library exclude each other both ways, wait for each other,
//! and a crashed holder on either side frees the lock for the other within its session.

use std::any::Any;
use std::time::{Duration, Instant};

use dlock_core::{LockOptions, Locker};
use dlock_test_servers::{foreign_count, foreign_try_lock, shared_zookeeper, Foreign, ForeignLock};
use dlock_zookeeper::ZooKeeperBackend;

/// The session timeout of both sides in the crash tests: the server's expiry check runs per
/// tick, so a crashed holder's node goes within this plus the backend's declared bound.
const SESSION: Duration = Duration::from_secs(2);

fn hosts() -> &'static str {
    shared_zookeeper().url.trim_start_matches("zookeeper://")
}

/// A lock path no other test uses, as the other library is given it (absolute).
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

/// A dlock client in the layout of `foreign`.
async fn foreign_layout(foreign: Foreign, session: Duration) -> Locker {
    let layout = match foreign {
        Foreign::Kazoo => "kazoo",
        Foreign::Curator => "curator",
    };
    let url = format!(
        "{}?layout={layout}&session_timeout={}ms",
        shared_zookeeper().url,
        session.as_millis()
    );
    let backend = dlock_zookeeper::connect(&url)
        .await
        .expect("a foreign-layout client");
    Locker::new(backend)
}

/// The tests below, once per foreign client.
macro_rules! interop_tests {
    ($module:ident, $foreign:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn they_hold_and_dlock_waits_its_turn() {
                super::they_hold_and_dlock_waits_its_turn($foreign).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dlock_holds_and_they_wait_their_turn() {
                super::dlock_holds_and_they_wait_their_turn($foreign).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn their_crashed_holder_frees_the_lock_for_dlock() {
                super::their_crashed_holder_frees_the_lock_for_dlock($foreign).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_crashed_dlock_holder_frees_the_lock_for_them() {
                super::a_crashed_dlock_holder_frees_the_lock_for_them($foreign).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiters_of_both_sides_are_served_in_arrival_order() {
                super::waiters_of_both_sides_are_served_in_arrival_order($foreign).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_mixed_crowd_never_overlaps() {
                super::a_mixed_crowd_never_overlaps($foreign).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dlocks_own_layout_does_not_exclude_them() {
                super::dlocks_own_layout_does_not_exclude_them($foreign).await;
            }
        }
    };
}

interop_tests!(kazoo, Foreign::Kazoo);
interop_tests!(curator, Foreign::Curator);

/// They hold: dlock's try fails under the same path (with or without the leading `/`),
/// `inspect` names their node's data (kazoo's identifier, Curator's IP address), and a
/// waiting dlock acquire gets the lock as soon as they release it.
async fn they_hold_and_dlock_waits_its_turn(foreign: Foreign) {
    let path = unique_path("they-hold");
    let them = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            ForeignLock::hold(
                foreign,
                hosts(),
                &path,
                Duration::from_secs(10),
                "kazoo worker 7",
            )
        })
        .await
        .expect("they hold")
    };
    let locker = foreign_layout(foreign, Duration::from_secs(10)).await;
    for key in [path.as_str(), path.trim_start_matches('/')] {
        assert!(
            locker.try_acquire(key).await.expect("asked").is_none(),
            "dlock took {key} while {foreign:?} holds it"
        );
    }
    let report = locker.inspect(path.as_str()).await.expect("inspect");
    assert!(report.info.held, "{report:?}");
    match foreign {
        Foreign::Kazoo => assert_eq!(report.owner.as_deref(), Some("kazoo worker 7")),
        // Curator writes the client's IP address into its lock node.
        Foreign::Curator => assert!(report.owner.is_some(), "{report:?}"),
    }
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
    // The waiter stands in their line (its node is one of their contenders) before
    // they let go, so the handoff goes through the predecessor watch.
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
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
    let guard = waiter
        .await
        .expect("the waiter task")
        .expect("dlock gets the lock they released");
    guard.release().await.expect("release");
}

/// dlock holds: their try fails; a waiting client of theirs gets the lock when dlock
/// releases it.
async fn dlock_holds_and_they_wait_their_turn(foreign: Foreign) {
    let path = unique_path("dlock-holds");
    let locker = foreign_layout(foreign, Duration::from_secs(10)).await;
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let tried = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || foreign_try_lock(foreign, hosts(), &path))
            .await
            .expect("they tried")
    };
    assert!(!tried, "{foreign:?} took {path} while dlock holds it");
    let mut them = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            ForeignLock::start(foreign, hosts(), &path, Duration::from_secs(10), "waiter")
        })
        .await
        .expect("they started")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = locker.inspect(path.as_str()).await.expect("inspect");
        if report.info.waiters == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{foreign:?} never queued: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    guard.release().await.expect("release");
    let them = tokio::task::spawn_blocking(move || {
        them.wait_held();
        them
    })
    .await
    .expect("they get the lock dlock released");
    assert!(
        locker
            .try_acquire(path.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took the lock back from {foreign:?}"
    );
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
}

/// Their holder killed with SIGKILL (no session close): dlock gets the lock once the server
/// expires that session, within its timeout plus the server's tick.
async fn their_crashed_holder_frees_the_lock_for_dlock(foreign: Foreign) {
    let path = unique_path("they-crash");
    let them = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            ForeignLock::hold(foreign, hosts(), &path, SESSION, "doomed")
        })
        .await
        .expect("they hold")
    };
    let locker = foreign_layout(foreign, Duration::from_secs(10)).await;
    let bound = SESSION + locker.capabilities().crash_release_bound + Duration::from_secs(1);
    let killed = Instant::now();
    them.kill();
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

/// A dlock holder whose process "crashes" (session abandoned: no close, no heartbeat): their
/// waiting client gets the lock within the session timeout plus the server's tick.
async fn a_crashed_dlock_holder_frees_the_lock_for_them(foreign: Foreign) {
    let path = unique_path("dlock-crash");
    let locker = foreign_layout(foreign, SESSION).await;
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let mut them = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            ForeignLock::start(foreign, hosts(), &path, Duration::from_secs(10), "heir")
        })
        .await
        .expect("they started")
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
    let them = tokio::task::spawn_blocking(move || {
        them.wait_held();
        them
    })
    .await
    .expect("they get the crashed holder's lock");
    let took = crashed.elapsed();
    assert!(took <= bound, "freed after {took:?}, bound {bound:?}");
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
}

/// Waits until `waiters` contenders stand behind the holder of `path`.
async fn wait_for_waiters(locker: &Locker, path: &str, waiters: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = locker.inspect(path).await.expect("inspect");
        if report.info.waiters == Some(waiters) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {waiters} waiting: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line for both sides: behind a dlock holder, their waiter (first) and a dlock waiter
/// (second) are served in that order, and the dlock waiter is not served while they hold.
async fn waiters_of_both_sides_are_served_in_arrival_order(foreign: Foreign) {
    let path = unique_path("arrival-order");
    let locker = foreign_layout(foreign, Duration::from_secs(10)).await;
    let first = locker.acquire(path.as_str()).await.expect("acquire");
    let mut them = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            ForeignLock::start(foreign, hosts(), &path, Duration::from_secs(10), "second")
        })
        .await
        .expect("they started")
    };
    wait_for_waiters(&locker, &path, 1).await;
    let third = {
        let (locker, path) = (locker.clone(), path.clone());
        tokio::spawn(async move { locker.acquire(path.as_str()).await })
    };
    wait_for_waiters(&locker, &path, 2).await;
    first.release().await.expect("release");
    let them = tokio::task::spawn_blocking(move || {
        them.wait_held();
        them
    })
    .await
    .expect("they are served second");
    // They hold now, and the dlock waiter that came after them still waits.
    wait_for_waiters(&locker, &path, 1).await;
    assert!(!third.is_finished(), "the later dlock waiter overtook them");
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
    let third = third
        .await
        .expect("the waiter task")
        .expect("the dlock waiter is served third");
    third.release().await.expect("release");
}

/// Two processes of theirs and two dlock clients (sessions of their own) each increment one
/// counter file 8 times under the lock, with a pause between the read and the write: any
/// overlap loses an increment, so the file must end at 32.
async fn a_mixed_crowd_never_overlaps(foreign: Foreign) {
    const ROUNDS: u32 = 8;
    let path = unique_path("crowd");
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("counter");
    std::fs::write(&file, "0").expect("the counter");
    let theirs: Vec<_> = (0..2)
        .map(|_| foreign_count(foreign, hosts(), &path, &file, ROUNDS))
        .collect();
    let mut ours = Vec::new();
    for _ in 0..2 {
        let locker = foreign_layout(foreign, Duration::from_secs(10)).await;
        let (path, file) = (path.clone(), file.clone());
        ours.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = locker.acquire(path.as_str()).await.expect("acquire");
                let value: u32 = std::fs::read_to_string(&file)
                    .expect("read")
                    .trim()
                    .parse()
                    .expect("a number");
                tokio::time::sleep(Duration::from_millis(10)).await;
                std::fs::write(&file, (value + 1).to_string()).expect("write");
                guard.release().await.expect("release");
            }
        }));
    }
    for task in ours {
        task.await.expect("a dlock client");
    }
    for child in theirs {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("joined")
            .expect("their process");
        assert!(output.status.success(), "{foreign:?}: {}", output.status);
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "counted");
    }
    let total = std::fs::read_to_string(&file).expect("read");
    assert_eq!(total.trim(), (4 * ROUNDS).to_string(), "lost increments");
}

/// Without the layout, dlock's own nodes are not their contenders: the reason the layout
/// must be asked for (and the reason it exists).
async fn dlocks_own_layout_does_not_exclude_them(foreign: Foreign) {
    let path = unique_path("own-layout");
    let locker = Locker::new(
        dlock_zookeeper::connect(&shared_zookeeper().url)
            .await
            .expect("connect"),
    );
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let tried = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || foreign_try_lock(foreign, hosts(), &path))
            .await
            .expect("they tried")
    };
    assert!(tried, "{foreign:?} saw dlock's own layout as a contender");
    guard.release().await.expect("release");
}

/// Curator asks a holder to let go by writing `__REVOKE__` into its lock node
/// (`Revoker.attemptRevoke`). dlock does not honour revocation, but the write must not blind
/// the holder: the node deleted from outside afterwards is still signalled as a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_the_holders_node_does_not_blind_it_to_a_later_deletion() {
    let path = unique_path("revoked");
    let locker = foreign_layout(Foreign::Curator, Duration::from_secs(10)).await;
    let guard = locker.acquire(path.as_str()).await.expect("acquire");
    let node = ZooKeeperBackend::node_path(guard.lease())
        .expect("a zookeeper lease")
        .to_owned();
    let admin = dlock_zookeeper::zookeeper_client::Client::connect(hosts())
        .await
        .expect("an admin session");
    admin
        .set_data(&node, b"__REVOKE__", None)
        .await
        .expect("Curator's revocation request");
    // The holder's watch fires for the write: give it the time to watch again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(guard.is_held(), "a write to the node is not a loss");
    admin
        .delete(&node, None)
        .await
        .expect("delete from outside");
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost()).await;
    assert_eq!(
        lost.ok(),
        Some(dlock_core::LossReason::NotOwner),
        "the deletion after the write went unnoticed"
    );
}
