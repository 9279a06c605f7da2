//! Issue 13 on the memory backend: `Locker::inspect` and `Locker::list` report the holder's
//! owner, token, acquisition time and waiters while held, queued and after release; owner
//! descriptions out of bounds are typed errors.

use std::time::SystemTime;

use dlock_core::{
    ListRequest, LockError, LockOptions, Locker, MemoryServer, MAX_LIST_LIMIT, MAX_OWNER_LEN,
};
use tokio::sync::oneshot;

fn owned(owner: &str) -> LockOptions {
    LockOptions::default().owner(owner)
}

#[tokio::test(start_paused = true)]
async fn inspect_reports_holder_owner_token_and_waiters() {
    let server = MemoryServer::new();
    let alice = Locker::new(server.client())
        .with_options(owned("alice@web-1"))
        .unwrap();
    let bob = Locker::new(server.client());
    let operator = Locker::new(server.client());

    let free = operator.inspect("k").await.unwrap();
    assert!(!free.info.held);
    assert_eq!((free.owner, free.acquired_at), (None, None));

    let before = SystemTime::now();
    let guard = alice.acquire("k").await.unwrap();
    let (queued, in_line) = oneshot::channel();
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.acquire_observed("k", &owned("bob@web-2"), Some(queued))
                .await
        })
    };
    in_line.await.unwrap();

    let held = operator.inspect("k").await.unwrap();
    assert!(held.info.held);
    assert_eq!(held.info.fencing_token, Some(guard.fencing_token()));
    assert_eq!(held.info.waiters, Some(1));
    assert_eq!(held.owner.as_deref(), Some("alice@web-1"));
    let at = held.acquired_at.expect("memory records when");
    assert!(at >= before && at <= SystemTime::now());

    guard.release().await.unwrap();
    let bobs = waiter.await.unwrap().unwrap();
    let handed = operator.inspect("k").await.unwrap();
    assert_eq!(handed.owner.as_deref(), Some("bob@web-2"));
    assert_eq!(handed.info.fencing_token, Some(bobs.fencing_token()));
    assert_eq!(handed.info.waiters, Some(0));

    bobs.release().await.unwrap();
    let released = operator.inspect("k").await.unwrap();
    assert!(!released.info.held);
    assert_eq!(released.owner, None);
}

#[tokio::test(start_paused = true)]
async fn the_default_owner_is_this_process() {
    let locker = Locker::new(MemoryServer::new().client());
    let _guard = locker.acquire("k").await.unwrap();
    let report = locker.inspect("k").await.unwrap();
    assert_eq!(report.owner.as_deref(), Some(dlock_core::default_owner()));
}

#[tokio::test(start_paused = true)]
async fn list_pages_through_the_locks_under_a_prefix() {
    let server = MemoryServer::new();
    let holder = Locker::new(server.client())
        .with_options(owned("holder"))
        .unwrap();
    let other_namespace = LockOptions::default().prefix("elsewhere");
    let mut guards = Vec::new();
    for key in ["jobs/c", "jobs/a", "mail/x", "jobs/b"] {
        guards.push(holder.acquire(key).await.unwrap());
    }
    guards.push(
        holder
            .acquire_with("jobs/z", &other_namespace)
            .await
            .unwrap(),
    );
    // Somebody waits for `jobs/b`.
    let (queued, in_line) = oneshot::channel();
    let waiter = Locker::new(server.client());
    let waiting = tokio::spawn(async move {
        waiter
            .acquire_observed("jobs/b", &LockOptions::default(), Some(queued))
            .await
    });
    in_line.await.unwrap();

    let all = holder.list(&ListRequest::new("")).await.unwrap();
    let keys: Vec<&str> = all.locks.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["jobs/a", "jobs/b", "jobs/c", "mail/x"]);
    assert_eq!(all.next, None);

    let mut seen = Vec::new();
    let mut request = ListRequest::new("jobs/").limit(2);
    loop {
        let page = holder.list(&request).await.unwrap();
        assert!(page.locks.len() <= 2);
        for lock in &page.locks {
            assert!(lock.report.info.held);
            assert_eq!(lock.report.owner.as_deref(), Some("holder"));
            assert!(lock.report.info.fencing_token.is_some());
            let waiters = if lock.key.as_str() == "jobs/b" { 1 } else { 0 };
            assert_eq!(lock.report.info.waiters, Some(waiters), "{}", lock.key);
            seen.push(lock.key.as_str().to_owned());
        }
        match page.next {
            Some(cursor) => request = request.after(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ["jobs/a", "jobs/b", "jobs/c"]);

    let elsewhere = holder
        .list_with(&other_namespace, &ListRequest::new("jobs/"))
        .await
        .unwrap();
    assert_eq!(elsewhere.locks.len(), 1);
    assert_eq!(elsewhere.locks[0].key.as_str(), "jobs/z");

    for guard in guards {
        guard.release().await.unwrap();
    }
    waiting.await.unwrap().unwrap().release().await.unwrap();
    let empty = holder.list(&ListRequest::new("")).await.unwrap();
    assert!(empty.locks.is_empty() && empty.next.is_none());
}

#[tokio::test]
async fn bad_list_requests_are_typed_errors() {
    let locker = Locker::new(MemoryServer::new().client());
    for request in [
        ListRequest::new("").limit(0),
        ListRequest::new("").limit(MAX_LIST_LIMIT + 1),
        ListRequest::new("a\nb"),
        ListRequest::new("x".repeat(600)),
        ListRequest::new("").after("\u{1b}"),
    ] {
        assert!(
            matches!(
                locker.list(&request).await,
                Err(LockError::InvalidOptions { .. })
            ),
            "{request:?} must be rejected"
        );
    }
}

#[tokio::test]
async fn bad_owner_descriptions_are_typed_errors_everywhere() {
    let server = MemoryServer::new();
    for owner in [
        String::new(),
        "x".repeat(MAX_OWNER_LEN + 1),
        "two\nlines".to_owned(),
        "\u{1b}[2Jclear screen".to_owned(),
    ] {
        let options = owned(&owner);
        let locker = Locker::new(server.client());
        assert!(matches!(
            locker.clone().with_options(options.clone()),
            Err(LockError::InvalidOptions { .. })
        ));
        assert!(matches!(
            locker.acquire_with("k", &options).await,
            Err(LockError::InvalidOptions { .. })
        ));
        assert!(matches!(
            locker.try_acquire_with("k", &options).await,
            Err(LockError::InvalidOptions { .. })
        ));
    }
    // Nothing was taken on the way.
    let locker = Locker::new(server.client());
    assert!(!locker.inspect("k").await.unwrap().info.held);
}
