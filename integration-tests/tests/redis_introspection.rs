//! Issue 13 on Redis: what the holder details and the index of held locks leave behind. The
//! owner and acquisition time live in the lock's value; the index (`dlock:{ns|prefix}:index`)
//! must go with the last lock of its prefix, released or expired, and a `list` must not show
//! (and drops) the entry of a lock whose holder vanished.

use std::time::Duration;

use dlock_core::{ListRequest, LockKey, LockOptions, Locker};
use dlock_test_servers::shared_redis;
use tokio::time::Instant;

mod redis_support;
use redis_support::command;

fn options(test: &str, lease: Duration) -> LockOptions {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    LockOptions::default()
        .lease(lease)
        .prefix(format!("redis-introspection-{test}-{nanos:x}"))
}

fn index_of(options: &LockOptions) -> String {
    // The URL has no `prefix=` namespace, and the test prefixes have no `% { } |` to escape.
    format!("dlock:{{|{}}}:index", options.prefix)
}

/// Polls `condition` until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exists(key: &str) -> bool {
    command(&shared_redis().address, &["EXISTS", key])
        .await
        .expect("EXISTS")
        == "1"
}

#[tokio::test]
async fn the_index_goes_with_the_last_released_lock() {
    let options = options("released", Duration::from_secs(20)).owner("ops/1/introspection");
    let locker = Locker::new(dlock_redis::connect(&shared_redis().url).await.unwrap())
        .with_options(options.clone())
        .unwrap();
    let a = locker.acquire("a").await.unwrap();
    let b = locker.acquire("b").await.unwrap();
    let index = index_of(&options);
    assert!(exists(&index).await, "{index} lists the held locks");
    a.release().await.unwrap();
    assert!(exists(&index).await, "b is still held");
    b.release().await.unwrap();
    assert!(!exists(&index).await, "the index outlived its last lock");
}

#[tokio::test]
async fn the_index_of_a_vanished_holder_expires_with_its_lock() {
    let lease = Duration::from_millis(400);
    let options = options("expired", lease).keepalive(false);
    let backend = dlock_redis::connect(&shared_redis().url).await.unwrap();
    let locker = Locker::new(backend.clone())
        .with_options(options.clone())
        .unwrap();
    // A holder that vanishes: no release, no renewal.
    std::mem::forget(locker.acquire("k").await.unwrap());
    let index = index_of(&options);
    assert!(exists(&index).await);
    let lock = backend.lock_key_name(&options.prefix, &LockKey::new("k").unwrap());
    eventually(lease * 10, "the lock expires", async || {
        !exists(&lock).await
    })
    .await;
    // Same expiry as the lock, set in the same script: gone within a moment of it.
    eventually(Duration::from_secs(2), "the index expires", async || {
        !exists(&index).await
    })
    .await;
}

#[tokio::test]
async fn list_skips_and_drops_the_entry_of_a_vanished_holder() {
    let options = options("stale", Duration::from_secs(20)).owner("ops/2/introspection");
    let backend = dlock_redis::connect(&shared_redis().url).await.unwrap();
    let locker = Locker::new(backend.clone())
        .with_options(options.clone())
        .unwrap();
    let held = locker.acquire("jobs/b").await.unwrap();
    // A holder that vanished: its lock is gone from the server without a release (the key
    // expired, or a restart lost it). Deleted by hand rather than left to expire: a live
    // process cleans up its own run-out lease (owner-checked release, index entry and all)
    // at the moment Redis would expire it, so waiting for the expiry races with that.
    std::mem::forget(
        locker
            .acquire_with("jobs/a", &options.clone().keepalive(false))
            .await
            .unwrap(),
    );
    let lock = backend.lock_key_name(&options.prefix, &LockKey::new("jobs/a").unwrap());
    assert_eq!(
        command(&shared_redis().address, &["DEL", &lock])
            .await
            .as_deref(),
        Ok("1")
    );
    let index = index_of(&options);
    let members = command(&shared_redis().address, &["ZCARD", &index]).await;
    assert_eq!(members.as_deref(), Ok("2"), "jobs/a is still indexed");
    let page = locker
        .list(&ListRequest::new("jobs/").limit(1))
        .await
        .unwrap();
    let keys: Vec<&str> = page.locks.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["jobs/b"], "{page:?}");
    assert_eq!(
        page.locks[0].report.owner.as_deref(),
        Some("ops/2/introspection")
    );
    let members = command(&shared_redis().address, &["ZCARD", &index]).await;
    assert_eq!(members.as_deref(), Ok("1"), "the stale entry was dropped");
    held.release().await.unwrap();
}
