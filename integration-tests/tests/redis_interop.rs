//! `layout=redis-standard` against the real redis-py `Lock` (`python3-redis`, one Python
//! process per client): `SET key token NX PX`, compare-and-delete, compare-and-pexpire, the
//! layout redsync, node-redlock and rslock share; on a Redlock quorum, the same done on each
//! instance as redsync and node-redlock do (in Python, on redis-py). dlock and they exclude
//! each other both ways, wait for each other, and a crashed holder on either side frees the
//! lock for the other within its lease; a dlock waiter is woken by keyspace notifications
//! where the server publishes them and polls where it does not.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dlock_core::{LockOptions, Locker};
use dlock_test_servers::{
    redis_py_count, redis_py_hold, redis_py_start, redis_py_try_lock, RedisServer,
};
use tokio::sync::oneshot;

/// One server of this test binary's own with keyspace notifications on (`KA`), one with
/// them off (the server's default): the library reads, never changes, the setting.
fn server(notifications: bool) -> &'static str {
    static ON: OnceLock<(RedisServer, String)> = OnceLock::new();
    static OFF: OnceLock<(RedisServer, String)> = OnceLock::new();
    let (cell, extra): (_, &[&str]) = if notifications {
        (&ON, &["--notify-keyspace-events", "KA"])
    } else {
        (&OFF, &[])
    };
    &cell
        .get_or_init(|| {
            let server = RedisServer::start_with(extra);
            let address = format!("127.0.0.1:{}", server.port());
            (server, address)
        })
        .1
}

/// Three instances of this test binary's own with keyspace notifications on, for Redlock:
/// `host:port,host:port,host:port`, as the Python side and the dlock URL both take them.
fn redlock() -> &'static str {
    static TRIO: OnceLock<(Vec<RedisServer>, String)> = OnceLock::new();
    &TRIO
        .get_or_init(|| {
            let servers: Vec<RedisServer> = (0..3)
                .map(|_| RedisServer::start_with(&["--notify-keyspace-events", "KA"]))
                .collect();
            let addresses: Vec<String> = servers
                .iter()
                .map(|s| format!("127.0.0.1:{}", s.port()))
                .collect();
            (servers, addresses.join(","))
        })
        .1
}

/// A key no other test uses, as redis-py is given it.
fn unique_key(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("interop:{test}:{nanos:x}:{}", std::process::id())
}

/// A dlock client of `address` in the standard layout, with `lease`: Redlock over several
/// addresses (`a,b,c`).
async fn standard(address: &str, lease: Duration) -> Locker {
    let scheme = if address.contains(',') {
        "redis+redlock"
    } else {
        "redis"
    };
    let backend = dlock_redis::connect(&format!("{scheme}://{address}?layout=redis-standard"))
        .await
        .expect("a redis-standard client");
    Locker::new(backend)
        .with_options(LockOptions::default().lease(lease))
        .expect("options")
}

/// The tests below, on one instance with keyspace notifications on and off, and on a Redlock
/// quorum of three (redsync's and node-redlock's Redlock, here in Python: the same value
/// `SET NX PX` on each instance, a majority wins).
macro_rules! interop_tests {
    ($module:ident, $address:expr, $notifications:expr) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn they_hold_and_dlock_waits_its_turn() {
                super::they_hold_and_dlock_waits_its_turn($address, $notifications).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dlock_holds_and_they_wait_their_turn() {
                super::dlock_holds_and_they_wait_their_turn($address).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn their_crashed_holder_frees_the_lock_for_dlock() {
                super::their_crashed_holder_frees_the_lock_for_dlock($address).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_crashed_dlock_holder_frees_the_lock_for_them() {
                super::a_crashed_dlock_holder_frees_the_lock_for_them($address).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_mixed_crowd_never_overlaps() {
                super::a_mixed_crowd_never_overlaps($address).await;
            }
        }
    };
}

interop_tests!(notifications_on, super::server(true), true);
interop_tests!(notifications_off, super::server(false), false);
interop_tests!(redlock, super::redlock(), true);

/// They hold: dlock's try fails, `inspect` says held (by nobody dlock can name: their value
/// is their secret token), and a waiting dlock acquire gets the lock once they release it,
/// woken by the `del` notification or by its polling. The client declares which.
async fn they_hold_and_dlock_waits_its_turn(address: &'static str, notifications: bool) {
    let key = unique_key("they-hold");
    let them = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_hold(address, &key, Duration::from_secs(30)))
            .await
            .expect("they hold")
    };
    let locker = standard(address, Duration::from_secs(10)).await;
    assert_eq!(
        locker.capabilities().server_wakeup,
        notifications,
        "server wake-up is declared exactly when the server publishes keyspace events"
    );
    assert!(!locker.capabilities().fifo, "no line across libraries");
    assert!(
        locker
            .try_acquire(key.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took {key} while redis-py holds it"
    );
    let report = locker.inspect(key.as_str()).await.expect("inspect");
    assert!(report.info.held, "{report:?}");
    assert_eq!(report.owner, None, "their token is not shown: {report:?}");
    assert_eq!(report.info.fencing_token, None, "{report:?}");
    let (queued, in_line) = oneshot::channel();
    let waiter = {
        let (locker, key) = (locker.clone(), key.clone());
        tokio::spawn(async move {
            locker
                .acquire_observed(
                    key.as_str(),
                    &LockOptions::default()
                        .lease(Duration::from_secs(10))
                        .wait(Duration::from_secs(60)),
                    Some(queued),
                )
                .await
        })
    };
    // Waiting: listening (when the server publishes) and having found the lock taken.
    in_line.await.expect("the dlock waiter waits");
    assert!(
        !waiter.is_finished(),
        "dlock got the lock while they hold it"
    );
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
    let guard = waiter
        .await
        .expect("the waiter task")
        .expect("dlock gets the lock they released");
    assert!(
        !tokio::task::spawn_blocking({
            let key = key.clone();
            move || redis_py_try_lock(address, &key)
        })
        .await
        .expect("they tried"),
        "redis-py took the lock dlock now holds"
    );
    guard.release().await.expect("release");
}

/// dlock holds: their non-blocking acquire fails; their blocking acquire, started while
/// dlock holds, gets the lock once dlock releases it; then dlock's try fails.
async fn dlock_holds_and_they_wait_their_turn(address: &'static str) {
    let key = unique_key("dlock-holds");
    let locker = standard(address, Duration::from_secs(10)).await;
    let guard = locker.acquire(key.as_str()).await.expect("acquire");
    let tried = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_try_lock(address, &key))
            .await
            .expect("they tried")
    };
    assert!(!tried, "redis-py took {key} while dlock holds it");
    // It has found the lock taken once when this returns, and waits.
    let mut them = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_start(address, &key, Duration::from_secs(30)))
            .await
            .expect("they started")
    };
    guard.release().await.expect("release");
    let them = tokio::task::spawn_blocking(move || {
        them.wait_held();
        them
    })
    .await
    .expect("they get the lock dlock released");
    assert!(
        locker
            .try_acquire(key.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took the lock back from redis-py"
    );
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
}

/// Their holder killed with SIGKILL (no release): its key expires with its timeout, and a
/// waiting dlock acquire gets the lock by then plus the backend's declared bound.
async fn their_crashed_holder_frees_the_lock_for_dlock(address: &'static str) {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let key = unique_key("they-crash");
    let locker = standard(address, Duration::from_secs(10)).await;
    let set_before = Instant::now();
    let them = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_hold(address, &key, TIMEOUT))
            .await
            .expect("they hold")
    };
    them.kill();
    let bound = TIMEOUT + locker.capabilities().crash_release_bound + Duration::from_millis(500);
    let guard = locker
        .acquire_with(
            key.as_str(),
            &LockOptions::default().wait(bound + Duration::from_secs(5)),
        )
        .await
        .expect("dlock gets the crashed holder's lock");
    let took = set_before.elapsed();
    assert!(
        took <= bound,
        "freed {took:?} after they took it, bound {bound:?}"
    );
    guard.release().await.expect("release");
}

/// A dlock holder that "crashes" (no release, no more renewals): their blocking acquire,
/// already waiting, gets the lock once its lease runs out, plus their polling period.
async fn a_crashed_dlock_holder_frees_the_lock_for_them(address: &'static str) {
    const LEASE: Duration = Duration::from_secs(2);
    let key = unique_key("dlock-crash");
    let locker = standard(address, LEASE).await;
    let guard = locker.acquire(key.as_str()).await.expect("acquire");
    let acquired = Instant::now();
    let mut them = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_start(address, &key, Duration::from_secs(30)))
            .await
            .expect("they started")
    };
    guard.abandon();
    drop(locker);
    let them = tokio::task::spawn_blocking(move || {
        them.wait_held();
        them
    })
    .await
    .expect("they get the crashed holder's lock");
    let took = acquired.elapsed();
    let bound = LEASE + Duration::from_secs(1);
    assert!(took <= bound, "freed after {took:?}, bound {bound:?}");
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
}

/// Two redis-py processes and two dlock clients each increment one counter file 8 times
/// under the lock, with a pause between the read and the write: any overlap loses an
/// increment, so the file must end at 32.
async fn a_mixed_crowd_never_overlaps(address: &'static str) {
    const ROUNDS: u32 = 8;
    let key = unique_key("crowd");
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("counter");
    std::fs::write(&file, "0").expect("the counter");
    let theirs: Vec<_> = (0..2)
        .map(|_| redis_py_count(address, &key, &file, ROUNDS))
        .collect();
    let mut ours = Vec::new();
    for _ in 0..2 {
        let locker = standard(address, Duration::from_secs(10)).await;
        let (key, file) = (key.clone(), file.clone());
        ours.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..ROUNDS {
                let guard = locker.acquire(key.as_str()).await.expect("acquire");
                tokens.push(guard.fencing_token());
                let value: u32 = std::fs::read_to_string(&file)
                    .expect("read")
                    .trim()
                    .parse()
                    .expect("a number");
                tokio::time::sleep(Duration::from_millis(10)).await;
                std::fs::write(&file, (value + 1).to_string()).expect("write");
                guard.release().await.expect("release");
            }
            tokens
        }));
    }
    for task in ours {
        let tokens = task.await.expect("a dlock client");
        assert!(
            tokens.windows(2).all(|pair| pair[0] < pair[1]),
            "tokens grow among dlock holders: {tokens:?}"
        );
    }
    for child in theirs {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("joined")
            .expect("their process");
        assert!(output.status.success(), "redis-py: {}", output.status);
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "counted");
    }
    let total = std::fs::read_to_string(&file).expect("read");
    assert_eq!(total.trim(), (4 * ROUNDS).to_string(), "lost increments");
}

/// The URL's `prefix` goes in front of the key as it is, without a separator: with
/// `prefix=app:` the key `job` is redis-py's lock `app:job`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_urls_prefix_goes_in_front_of_the_key_as_is() {
    let address = server(true);
    let key = unique_key("prefixed");
    let them = {
        let key = format!("app:{key}");
        tokio::task::spawn_blocking(move || redis_py_hold(address, &key, Duration::from_secs(30)))
            .await
            .expect("they hold")
    };
    let backend = dlock_redis::connect(&format!(
        "redis://{address}?layout=redis-standard&prefix=app:"
    ))
    .await
    .expect("connect");
    let locker = Locker::new(backend);
    assert!(
        locker
            .try_acquire(key.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took app:{key} while redis-py holds it"
    );
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
    let guard = locker
        .try_acquire(key.as_str())
        .await
        .expect("asked")
        .expect("free once they released");
    guard.release().await.expect("release");
}

/// Without the layout, dlock's own keys are not theirs: the reason the layout must be asked
/// for (and the reason it exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlocks_own_layout_does_not_exclude_them() {
    let address = server(true);
    let key = unique_key("own-layout");
    let locker = Locker::new(
        dlock_redis::connect(&format!("redis://{address}"))
            .await
            .expect("connect"),
    );
    let guard = locker.acquire(key.as_str()).await.expect("acquire");
    let tried = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_try_lock(address, &key))
            .await
            .expect("they tried")
    };
    assert!(tried, "redis-py saw dlock's own layout as a contender");
    guard.release().await.expect("release");
}

/// A server that refuses `CONFIG GET` (renamed or denied, as managed services do) counts as
/// one without keyspace notifications, even if it publishes them: the client polls, and a
/// waiter still gets the lock redis-py releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_config_get_is_polled() {
    static SERVER: OnceLock<(RedisServer, String)> = OnceLock::new();
    let (_, address) = SERVER.get_or_init(|| {
        let server = RedisServer::start_with(&[
            "--notify-keyspace-events",
            "KA",
            "--rename-command",
            "CONFIG",
            "config-for-admins-only",
        ]);
        let address = format!("127.0.0.1:{}", server.port());
        (server, address)
    });
    let address: &'static str = address.as_str();
    let key = unique_key("config-refused");
    let locker = standard(address, Duration::from_secs(10)).await;
    assert!(
        !locker.capabilities().server_wakeup,
        "CONFIG GET is refused: the client cannot know that the server publishes events"
    );
    let them = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || redis_py_hold(address, &key, Duration::from_secs(30)))
            .await
            .expect("they hold")
    };
    let (queued, in_line) = oneshot::channel();
    let waiter = {
        let (locker, key) = (locker.clone(), key.clone());
        tokio::spawn(async move {
            locker
                .acquire_observed(
                    key.as_str(),
                    &LockOptions::default()
                        .lease(Duration::from_secs(10))
                        .wait(Duration::from_secs(60)),
                    Some(queued),
                )
                .await
        })
    };
    in_line.await.expect("the dlock waiter waits");
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("they released");
    waiter
        .await
        .expect("the waiter task")
        .expect("dlock gets the lock they released")
        .release()
        .await
        .expect("release");
}
