//! Redlock with a frozen minority (issue 9, item 4): one of three instances stopped with
//! SIGSTOP keeps its TCP connections and even accepts new ones, but answers nothing. Redlock
//! exists to survive a failed minority, so connecting, acquiring, renewing, extending,
//! releasing and waking waiters must all go on with the two instances that answer.

use std::time::Duration;

use dlock_core::{LockKey, LockOptions, Locker};
use dlock_test_servers::RedisServer;
use tokio::time::{timeout, Instant};

mod redis_support;
use redis_support::command;

/// Generous bound for something that takes a few local round trips: a loaded 2-core CI
/// machine can stall a process for a second, but the bugs these tests catch cost the
/// instance's whole connect or response timeout (2–4 s) or more.
const PROMPTLY: Duration = Duration::from_millis(1500);

fn options(test: &str, lease: Duration) -> LockOptions {
    LockOptions::default()
        .lease(lease)
        .prefix(format!("redlock-faults/{test}/{:016x}", rand_u64()))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish()
}

/// Three independent instances.
struct Trio {
    servers: Vec<RedisServer>,
}

impl Trio {
    fn start() -> Trio {
        Trio {
            servers: (0..3).map(|_| RedisServer::start()).collect(),
        }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self.servers.iter().map(address).collect();
        format!("redis+redlock://{}", hosts.join(","))
    }

    fn pause(&mut self, index: usize) {
        self.servers[index].process().pause();
    }

    fn resume(&mut self, index: usize) {
        self.servers[index].process().resume();
    }

    /// The name of the lock key of `key` under `options` on every instance.
    async fn lock_key(&self, options: &LockOptions, key: &str) -> String {
        let single = format!("redis://{}", address(&self.servers[0]));
        dlock_redis::connect(&single)
            .await
            .expect("connect to one instance")
            .lock_key_name(&options.prefix, &LockKey::new(key).unwrap())
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        // A stopped process cannot act on the kill that ends the test.
        for server in &mut self.servers {
            server.process().resume();
        }
    }
}

fn address(server: &RedisServer) -> String {
    format!("127.0.0.1:{}", server.port())
}

async fn locker(url: &str, options: &LockOptions) -> Locker {
    Locker::new(dlock_redis::connect(url).await.expect("connect"))
        .with_options(options.clone())
        .expect("options")
}

/// (a) One of three instances frozen: a client that was connected before and one that
/// connects now both get the lock at once, not after the frozen instance's timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_frozen_minority_connect_and_acquire_are_prompt() {
    let mut trio = Trio::start();
    let opts = options("prompt", Duration::from_secs(3));
    let before = locker(&trio.url(), &opts).await;
    trio.pause(2);

    let started = Instant::now();
    let guard = timeout(Duration::from_secs(20), before.acquire("k"))
        .await
        .expect("no hang")
        .expect("a majority answers: acquire succeeds");
    assert!(
        started.elapsed() < PROMPTLY,
        "acquire took {:?} with one instance frozen",
        started.elapsed()
    );
    assert!(guard.is_held());
    let started = Instant::now();
    guard.release().await.expect("release");
    assert!(
        started.elapsed() < PROMPTLY,
        "release took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let after = timeout(Duration::from_secs(20), dlock_redis::connect(&trio.url()))
        .await
        .expect("no hang")
        .expect("a majority answers: connect succeeds");
    assert!(
        started.elapsed() < PROMPTLY,
        "connect took {:?} with one instance frozen",
        started.elapsed()
    );
    let after = Locker::new(after).with_options(opts.clone()).unwrap();
    let started = Instant::now();
    let guard = timeout(Duration::from_secs(20), after.acquire("k"))
        .await
        .expect("no hang")
        .expect("acquire after connecting to a majority");
    assert!(
        started.elapsed() < PROMPTLY,
        "acquire took {:?} on a client that connected to a majority",
        started.elapsed()
    );
    // The validity counts the majority's time only, not the frozen instance's timeout.
    let left = guard
        .lease()
        .valid_until()
        .saturating_duration_since(Instant::now());
    assert!(
        left > Duration::from_secs(1),
        "only {left:?} of a 3 s lease"
    );
    let started = Instant::now();
    guard.release().await.expect("release");
    assert!(
        started.elapsed() < PROMPTLY,
        "release took {:?}",
        started.elapsed()
    );

    // Once it runs again, the instance the second client never reached joins it: a lock
    // then lands there too. Its connection attempts time out after 4 s and are retried a
    // second later; 15 s leaves room for a loaded machine.
    trio.resume(2);
    let name = trio.lock_key(&opts, "k").await;
    let resumed = address(&trio.servers[2]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let guard = after.acquire("k").await.expect("acquire");
        let there = command(&resumed, &["GET", &name]).await.expect("GET");
        guard.release().await.expect("release");
        if !there.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed instance never joined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (b, c) A holder keeps its lock through several leases while one instance is frozen: no
/// loss, `is_held` stays true, `extend` answers promptly; meanwhile another client cannot
/// take it, and a waiter gets it promptly once it is released (wake-ups come from the
/// instances that answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_frozen_minority_keeps_the_lock_and_excludes_others() {
    let mut trio = Trio::start();
    let lease = Duration::from_secs(2);
    let opts = options("hold", lease);
    let holder = locker(&trio.url(), &opts).await;
    let other = locker(&trio.url(), &opts).await;
    let guard = holder.acquire("k").await.expect("acquire");
    trio.pause(1);

    let lost = guard.lost();
    tokio::pin!(lost);
    let hold_until = Instant::now() + lease * 3 + lease / 2;
    while Instant::now() < hold_until {
        tokio::select! {
            reason = &mut lost => panic!("lock lost with a frozen minority: {reason:?}"),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        assert!(guard.is_held());
        let tried = timeout(Duration::from_secs(20), other.try_acquire("k"))
            .await
            .expect("no hang")
            .expect("try_acquire answers");
        assert!(tried.is_none(), "two holders with a frozen minority");
    }
    let started = Instant::now();
    guard.extend(lease).await.expect("extend with a majority");
    assert!(
        started.elapsed() < PROMPTLY,
        "extend took {:?}",
        started.elapsed()
    );

    let waiter = {
        let (other, opts) = (other.clone(), opts.clone().wait(Duration::from_secs(20)));
        tokio::spawn(async move { other.acquire_with("k", &opts).await })
    };
    // Let the waiter stand in line (it is fine if it has not yet: it then finds it free).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let next = timeout(Duration::from_secs(20), waiter)
        .await
        .expect("no hang")
        .unwrap()
        .expect("the waiter gets the lock");
    assert!(
        released.elapsed() < PROMPTLY,
        "the waiter got the lock {:?} after the release",
        released.elapsed()
    );
    assert!(next.is_held());
    next.release().await.expect("release");
    let again = other.try_acquire("k").await.expect("try").expect("free");
    again.release().await.expect("release");
}

/// (d) The frozen instance comes back: things keep working on all three, and what it was
/// sent while frozen (acquires, renewals, a waiter's place in line, releases) leaves no key
/// behind longer than its lease, and no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_resumed_instance_keeps_no_stale_key() {
    let mut trio = Trio::start();
    let lease = Duration::from_secs(2);
    let opts = options("resume", lease);
    let client = locker(&trio.url(), &opts).await;
    let name = trio.lock_key(&opts, "k").await;
    let line = name.replace(":lock", ":queue");
    assert_ne!(line, name);
    trio.pause(0);

    let guard = client.acquire("k").await.expect("acquire");
    // A waiter queues meanwhile (on the frozen instance too, once it runs again), gets the
    // lock after the release, and leaves every line. It shares the holder's client, so the
    // frozen instance gets both clients' commands on one connection, in the order they were
    // sent: the waiter surely finds the lock held there and queues.
    let waiter = {
        let (client, opts) = (client.clone(), opts.clone().wait(Duration::from_secs(30)));
        tokio::spawn(async move { client.acquire_with("k", &opts).await })
    };
    tokio::time::sleep(lease).await;
    assert!(guard.is_held());
    guard.release().await.expect("release");
    let next = timeout(Duration::from_secs(20), waiter)
        .await
        .expect("no hang")
        .unwrap()
        .expect("the waiter gets the lock");
    next.release().await.expect("release");
    trio.resume(0);

    // The frozen instance runs the acquires, the renewals, the waiter's place in line, its
    // leaving and the releases in the order they were sent: the lock key goes at once
    // (in any case no later than one lease), and the line too (it would otherwise stay for
    // the waiter's 30 s wait limit).
    let frozen = address(&trio.servers[0]);
    let deadline = Instant::now() + lease + PROMPTLY;
    for (what, key) in [("lock key", &name), ("waiting line", &line)] {
        loop {
            let exists = command(&frozen, &["EXISTS", key]).await.expect("EXISTS");
            if exists == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resumed instance keeps a stale {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // All three answer again: a lock is taken on every instance.
    let guard = client.acquire("k").await.expect("acquire after resume");
    // The last instance's grant may land just after the majority's.
    let deadline = Instant::now() + PROMPTLY;
    for server in &trio.servers {
        while command(&address(server), &["EXISTS", &name])
            .await
            .expect("EXISTS")
            != "1"
        {
            assert!(
                Instant::now() < deadline,
                "the lock is on every instance after the resume"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    guard.release().await.expect("release");
    let other = locker(&trio.url(), &opts).await;
    let again = other.try_acquire("k").await.expect("try").expect("free");
    again.release().await.expect("release");
}

/// Several clients contend for one key while an instance is frozen: every acquisition
/// comes through (no livelock of split votes that wait for the frozen instance), one holder
/// at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_minority_contended_key_makes_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut trio = Trio::start();
    let opts = options("contended", Duration::from_secs(2)).wait(Duration::from_secs(30));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(locker(&trio.url(), &opts).await);
    }
    trio.pause(2);
    let inside = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let inside = Arc::clone(&inside);
            tokio::spawn(async move {
                for _ in 0..5 {
                    let guard = client.acquire("k").await.expect("acquire");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    inside.store(false, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        timeout(Duration::from_secs(60), task)
            .await
            .expect("no hang")
            .expect("no panic");
    }
    // 15 handoffs: each costs a few round trips, or a split vote's give-back and retry
    // (20–40 ms, plus the 20 ms the frozen instance is waited for). Waiting out the frozen
    // instance's response timeout (3 s) even twice would blow this; the rest is slack for a
    // loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "15 contended acquisitions took {:?}",
        started.elapsed()
    );
}
