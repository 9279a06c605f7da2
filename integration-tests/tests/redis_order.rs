//! The order the Redis backend grants a contended lock in (single instance): first come,
//! first served among waiters, no barging by a releasing holder or by `try_acquire`, and
//! waiters whose client died are skipped at once.

use std::time::Duration;

use dlock_core::{LockError, LockGuard, LockKey, LockOptions, Locker};
use dlock_test_servers::shared_redis;
use tokio::sync::oneshot;
use tokio::time::timeout;

mod redis_support;
use redis_support::command;

const PROMPTLY: Duration = Duration::from_secs(5);

fn options(test: &str) -> LockOptions {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    LockOptions::default()
        .lease(Duration::from_secs(20))
        .prefix(format!("redis-order/{test}/{:016x}", hasher.finish()))
}

async fn locker(options: &LockOptions) -> Locker {
    Locker::new(
        dlock_redis::connect(&shared_redis().url)
            .await
            .expect("connect"),
    )
    .with_options(options.clone())
    .expect("options")
}

async fn queued_waiter(
    locker: &Locker,
    options: &LockOptions,
) -> tokio::task::JoinHandle<Result<LockGuard, LockError>> {
    let (queued, in_line) = oneshot::channel();
    let (locker, options) = (locker.clone(), options.clone());
    let task =
        tokio::spawn(async move { locker.acquire_observed("k", &options, Some(queued)).await });
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");
    task
}

/// A holder that releases and asks again at once queues behind the waiter that was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_holder_queues_behind_waiters() {
    let opts = options("no-barging");
    let (alice, bob) = (locker(&opts).await, locker(&opts).await);
    let guard = alice.acquire("k").await.expect("alice acquires");
    let bobs = queued_waiter(&bob, &opts).await;
    guard.release().await.expect("alice releases");
    let alice_again = queued_waiter(&alice, &opts).await;
    let bob_guard = timeout(PROMPTLY, bobs)
        .await
        .expect("bob served")
        .unwrap()
        .expect("bob");
    assert!(!alice_again.is_finished(), "alice jumped the line");
    bob_guard.release().await.expect("bob releases");
    let alice_guard = timeout(PROMPTLY, alice_again)
        .await
        .expect("alice served next")
        .unwrap()
        .expect("alice");
    alice_guard.release().await.expect("release");
}

/// `try_acquire` fails while somebody waits, even in the instant the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_does_not_jump_the_line() {
    let opts = options("try-no-barging");
    let (alice, bob, carol) = (
        locker(&opts).await,
        locker(&opts).await,
        locker(&opts).await,
    );
    let guard = alice.acquire("k").await.expect("alice acquires");
    let bobs = queued_waiter(&bob, &opts).await;
    guard.release().await.expect("alice releases");
    assert!(carol.try_acquire("k").await.expect("try").is_none());
    timeout(PROMPTLY, bobs)
        .await
        .expect("bob served")
        .unwrap()
        .expect("bob");
}

/// A waiter whose client is gone (it no longer listens for its wake-up) is skipped at the
/// next release, and does not keep a free lock from `try_acquire`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_dead_clients_are_skipped() {
    let opts = options("dead-waiter");
    let (alice, bob) = (locker(&opts).await, locker(&opts).await);
    let backend = dlock_redis::connect(&shared_redis().url)
        .await
        .expect("connect");
    let lock = backend.lock_key_name(&opts.prefix, &LockKey::new("k").unwrap());
    let base = lock.strip_suffix(":lock").expect("layout");
    let (queue, deadlines) = (format!("{base}:queue"), format!("{base}:deadlines"));
    let address = &shared_redis().address;
    let guard = alice.acquire("k").await.expect("alice acquires");
    // A waiter of a client that crashed: in line with a far deadline, nobody listening.
    command(address, &["RPUSH", &queue, "deadc0de:1"])
        .await
        .unwrap();
    command(
        address,
        &["HSET", &deadlines, "deadc0de:1", "99999999999999"],
    )
    .await
    .unwrap();
    let bobs = queued_waiter(&bob, &opts).await;
    guard.release().await.expect("alice releases");
    let bob_guard = timeout(PROMPTLY, bobs)
        .await
        .expect("bob is woken although a dead waiter stood first")
        .unwrap()
        .expect("bob");
    bob_guard.release().await.expect("bob releases");
    // Dead first in line and the lock free: a try gets it.
    command(address, &["RPUSH", &queue, "deadc0de:2"])
        .await
        .unwrap();
    command(
        address,
        &["HSET", &deadlines, "deadc0de:2", "99999999999999"],
    )
    .await
    .unwrap();
    let tried = alice.try_acquire("k").await.expect("try");
    assert!(tried.is_some(), "a dead waiter kept the free lock");
}

/// Redlock: no order among waiters, but a releasing holder that asks again does not take the
/// lock from the waiter that was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_releasing_holder_does_not_barge() {
    let others = [
        dlock_test_servers::RedisServer::start(),
        dlock_test_servers::RedisServer::start(),
    ];
    let url = format!(
        "redis+redlock://{},127.0.0.1:{},127.0.0.1:{}",
        shared_redis().address,
        others[0].port(),
        others[1].port()
    );
    let opts = options("redlock-no-barging");
    let connect = || async {
        Locker::new(dlock_redis::connect(&url).await.expect("connect"))
            .with_options(opts.clone())
            .expect("options")
    };
    let (alice, bob) = (connect().await, connect().await);
    for _ in 0..5 {
        let guard = alice.acquire("k").await.expect("alice acquires");
        let bobs = queued_waiter(&bob, &opts).await;
        guard.release().await.expect("alice releases");
        let alice_again = queued_waiter(&alice, &opts).await;
        let bob_guard = timeout(PROMPTLY, bobs)
            .await
            .expect("bob served")
            .unwrap()
            .expect("bob");
        assert!(!alice_again.is_finished(), "alice barged");
        bob_guard.release().await.expect("bob releases");
        timeout(PROMPTLY, alice_again)
            .await
            .expect("alice served next")
            .unwrap()
            .expect("alice")
            .release()
            .await
            .expect("release");
    }
}

/// A waiter that gives up just as a release hands it the lock gives the lock back at once,
/// to the next in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_handed_to_a_leaving_waiter_goes_to_the_next() {
    let opts = options("handed-to-leaver");
    let (alice, bob, carol) = (
        locker(&opts).await,
        locker(&opts).await,
        locker(&opts).await,
    );
    let backend = dlock_redis::connect(&shared_redis().url)
        .await
        .expect("connect");
    let lock = backend.lock_key_name(&opts.prefix, &LockKey::new("k").unwrap());
    let base = lock.strip_suffix(":lock").expect("layout");
    let (queue, deadlines) = (format!("{base}:queue"), format!("{base}:deadlines"));
    let address = &shared_redis().address;
    let guard = alice.acquire("k").await.expect("alice acquires");
    let bobs = queued_waiter(&bob, &opts).await;
    let carols = queued_waiter(&carol, &opts).await;
    // What a release does, without the message to bob: the lock is now bob's.
    let bob_id = command(address, &["LPOP", &queue]).await.unwrap();
    command(address, &["HDEL", &deadlines, &bob_id])
        .await
        .unwrap();
    command(address, &["SET", &lock, &bob_id, "PX", "20000"])
        .await
        .unwrap();
    guard.abandon();
    // Bob gives up before he learns it.
    bobs.abort();
    assert!(bobs.await.is_err());
    let carol_guard = timeout(PROMPTLY, carols)
        .await
        .expect("carol gets the lock bob gave back")
        .unwrap()
        .expect("carol");
    assert!(carol_guard.is_held());
    carol_guard.release().await.expect("release");
}
