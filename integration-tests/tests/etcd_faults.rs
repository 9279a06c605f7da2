//! Fault tests of the etcd backend, each on its own etcd process: revoked leases, server
//! stops shorter and longer than the lease, a killed lock holder, a deleted lock key, and a
//! long line of waiters, locks lost on the holder's clock while etcd kept their lease, and a
//! lease gone on the server before the client noticed.

mod session_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_core::LockError;
use dlock_core::{LockBackend, LockOptions, Locker, LossReason};
use dlock_etcd::EtcdBackend;
use dlock_test_servers::EtcdServer;
use dlock_test_servers::{cancel_at_poll, Direction, FaultProxy};
use session_support::{
    check_paused_holder, elsewhere, hold_through_a_pause, jump_clock, FrozenRenewals, HolderChild,
};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

/// Far above a healthy local round trip, far below any lease used here.
const PROMPTLY: Duration = Duration::from_secs(5);
/// What the backend states as its crash bound (whole-second leases, etcd's expiry loop).
const CRASH_BOUND: Duration = Duration::from_secs(3);

/// An independent client of `server` (its own session), with short request timeouts so
/// outages show quickly.
async fn client(server: &EtcdServer) -> EtcdBackend {
    let url = format!("{}?timeout=1s&connect_timeout=1s", server.url());
    dlock_etcd::connect(&url).await.expect("connect to etcd")
}

fn options(test: &str, lease: Duration) -> LockOptions {
    LockOptions::default()
        .lease(lease)
        .prefix(format!("dlock-faults/{test}/{:016x}", rand_suffix()))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

fn locker(backend: &EtcdBackend, options: &LockOptions) -> Locker {
    Locker::new(backend.clone())
        .with_options(options.clone())
        .expect("valid options")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_loses_every_guard_and_waiters_acquire() {
    let server = EtcdServer::start();
    let options = options("revoke", Duration::from_secs(3));
    let holder_backend = client(&server).await;
    let holder = locker(&holder_backend, &options);
    let guards = [
        holder.acquire("a").await.expect("acquire a"),
        holder.acquire("b").await.expect("acquire b"),
    ];
    let waiter = locker(&client(&server).await, &options);
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let (waiter, options) = (waiter.clone(), options.clone());
        tokio::spawn(async move { waiter.acquire_observed("a", &options, Some(queued)).await })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");

    let sessions = holder_backend.session_lease_ids().await;
    assert_eq!(sessions.len(), 1, "one lease per client");
    let mut outsider = client(&server).await.client().clone();
    outsider.lease_revoke(sessions[0]).await.expect("revoke");

    for guard in &guards {
        let reason = timeout(options.lease, guard.lost())
            .await
            .expect("the guard noticed the revoked lease within the lease");
        assert!(
            matches!(reason, LossReason::SessionEnded | LossReason::NotOwner),
            "{reason:?}"
        );
        assert!(!guard.is_held());
    }
    let next = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiter was woken by the revocation")
        .expect("waiter task")
        .expect("the waiter acquires");
    assert!(next.fencing_token() > guards[0].fencing_token());
    // The holder's client works on with a new session.
    let again = holder
        .acquire("b")
        .await
        .expect("a new session takes locks");
    assert_ne!(holder_backend.session_lease_ids().await, sessions);
    again.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_survive_a_restart_shorter_than_the_lease() {
    let mut server = EtcdServer::start();
    // Long enough that a stop and a restart fit in half of it on a loaded machine.
    let lease = Duration::from_secs(10);
    let options = options("short-stop", lease);
    let holder = locker(&client(&server).await, &options);
    let guard = holder.acquire("k").await.expect("acquire");
    let token = guard.fencing_token();
    let mut lost = Box::pin(guard.lost());

    let stopped = Instant::now();
    server.process().stop();
    server.process().restart();
    let outage = stopped.elapsed();
    assert!(
        outage < lease / 2,
        "the restart took {outage:?}, too long for this test"
    );

    // Holding past the original lease is the point: renewals must resume after the restart.
    tokio::time::sleep(lease).await;
    assert!(
        futures_now(&mut lost).is_none(),
        "the lock was signalled lost"
    );
    assert!(guard.is_held());
    let other = locker(&client(&server).await, &options);
    assert!(other.try_acquire("k").await.expect("try").is_none());
    assert_eq!(guard.fencing_token(), token);
    guard.release().await.expect("release after the restart");
    assert!(other.try_acquire("k").await.expect("try").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_signal_loss_when_the_server_is_gone_longer_than_the_lease() {
    let mut server = EtcdServer::start();
    let lease = Duration::from_secs(2);
    let options = options("long-stop", lease);
    let holder = locker(&client(&server).await, &options);
    let guard = holder.acquire("k").await.expect("acquire");
    server.process().stop();
    let stopped = Instant::now();
    let reason = timeout(lease + lease / 3 + PROMPTLY, guard.lost())
        .await
        .expect("the loss was signalled");
    assert!(
        matches!(reason, LossReason::LeaseExpired | LossReason::SessionEnded),
        "{reason:?}"
    );
    assert!(stopped.elapsed() <= lease + lease / 3 + Duration::from_secs(1));
    assert!(!guard.is_held());
}

/// Not a test on its own: the child process of `killed_holder_frees_the_lock_within_the_lease`.
#[test]
fn child_process_holding_a_lock() {
    let Ok(url) = std::env::var("DLOCK_ETCD_CHILD_URL") else {
        return;
    };
    let prefix = std::env::var("DLOCK_ETCD_CHILD_PREFIX").expect("prefix");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let options = LockOptions::default()
            .lease(Duration::from_secs(2))
            .prefix(prefix);
        let backend = dlock_etcd::connect(&url).await.expect("connect");
        let guard = locker(&backend, &options)
            .acquire("k")
            .await
            .expect("acquire");
        println!("HELD {}", guard.fencing_token());
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_frees_the_lock_within_the_lease() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(2);
    let options = options("kill", lease);
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_process_holding_a_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DLOCK_ETCD_CHILD_URL", server.url())
        .env("DLOCK_ETCD_CHILD_PREFIX", &options.prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the holder process");
    let stdout = child.stdout.take().expect("stdout");
    // libtest prints the test name on the same line, so look for the marker anywhere.
    let reader = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.ok()?;
            if let Some((_, token)) = line.split_once("HELD ") {
                return token.trim().parse::<u64>().ok();
            }
        }
        None
    });
    let token = match timeout(PROMPTLY * 2, reader).await {
        Ok(Ok(Some(token))) => token,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the holder process did not report holding the lock: {other:?}");
        }
    };
    let other = locker(&client(&server).await, &options);
    assert!(other.try_acquire("k").await.expect("try").is_none());

    child.kill().expect("kill -9 the holder");
    let killed = Instant::now();
    child.wait().expect("reap the holder");
    let limit = lease + CRASH_BOUND;
    let next = other
        .acquire_with("k", &options.clone().wait(limit + PROMPTLY))
        .await
        .expect("the killed holder's lock is freed");
    let freed_after = killed.elapsed();
    assert!(freed_after <= limit, "freed {freed_after:?} after the kill");
    assert!(next.fencing_token().get() > token);
    println!("lock freed {freed_after:?} after kill -9 (lease {lease:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_lock_key_is_noticed_by_its_guard() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(3);
    let options = options("delete", lease);
    let backend = client(&server).await;
    let holder = locker(&backend, &options);
    let guard = holder.acquire("k").await.expect("acquire");
    let keep = holder.acquire("other").await.expect("acquire another");
    let key = dlock_etcd::fence::lock_key(&guard).expect("lock key");
    let mut outsider = client(&server).await.client().clone();
    let deleted = Instant::now();
    outsider.delete(key, None).await.expect("delete the key");
    let reason = timeout(lease, guard.lost())
        .await
        .expect("the guard noticed within the lease");
    assert_eq!(reason, LossReason::NotOwner);
    assert!(deleted.elapsed() <= lease / 3 + Duration::from_secs(1));
    assert!(keep.is_held(), "the other lock of the client is untouched");

    // Fencing that etcd enforces: a write guarded by the lost lock is refused.
    let txn = dlock_etcd::fence::fenced_txn(&guard, [])
        .expect("txn")
        .and_then([etcd_client_put("fenced/value")]);
    let mut client = backend.client().clone();
    assert!(!client.txn(txn).await.expect("txn").succeeded());
    let txn = dlock_etcd::fence::fenced_txn(&keep, [])
        .expect("txn")
        .and_then([etcd_client_put("fenced/value")]);
    assert!(client.txn(txn).await.expect("txn").succeeded());
    keep.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_waiters_are_served_in_order_with_one_watch_event_per_handoff() {
    const WAITERS: usize = 64;
    let server = EtcdServer::start();
    let options = options("line", Duration::from_secs(10));
    let holder = locker(&client(&server).await, &options);
    let guard = holder.acquire("k").await.expect("holder acquires");
    let mut backends = Vec::new();
    for _ in 0..8 {
        backends.push(client(&server).await);
    }
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for position in 0..WAITERS {
        let waiter = locker(&backends[position % backends.len()], &options);
        let (queued, in_line) = oneshot::channel();
        let (served, options) = (Arc::clone(&served), options.clone());
        tasks.push(tokio::spawn(async move {
            let guard = waiter
                .acquire_observed("k", &options, Some(queued))
                .await
                .expect("waiter acquires");
            served.lock().unwrap().push(position);
            guard.release().await.expect("waiter releases");
        }));
        timeout(PROMPTLY, in_line)
            .await
            .expect("queued in time")
            .expect("queued");
    }
    let before: u64 = backends
        .iter()
        .map(EtcdBackend::watch_events_received)
        .sum();
    assert_eq!(before, 0, "nothing woke a waiter before the first release");
    guard.release().await.expect("holder releases");
    for task in tasks {
        timeout(PROMPTLY * 4, task)
            .await
            .expect("the line drains")
            .expect("task");
    }
    let served = served.lock().unwrap().clone();
    assert_eq!(
        served,
        (0..WAITERS).collect::<Vec<_>>(),
        "served in arrival order"
    );
    let events: u64 = backends
        .iter()
        .map(EtcdBackend::watch_events_received)
        .sum();
    println!("{events} watch events for {WAITERS} handoffs");
    assert!(
        events <= WAITERS as u64,
        "{events} watch events for {WAITERS} handoffs: releases woke more than the next waiter"
    );
}

fn etcd_client_put(key: &str) -> dlock_etcd::etcd_client::TxnOp {
    dlock_etcd::etcd_client::TxnOp::put(key, "x", None)
}

/// The value of a future if it is ready now.
fn futures_now<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(future).poll(&mut context) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_holder_token_lease_and_waiters() {
    let server = EtcdServer::start();
    let options = options("inspect", Duration::from_secs(10));
    // No outage here: the default request timeout, so a loaded machine's first requests to a
    // fresh server do not time out.
    let backend = dlock_etcd::connect(&server.url()).await.expect("connect");
    let key = dlock_core::LockKey::new("k").expect("key");
    let free = backend.inspect(&key, &options).await.expect("inspect");
    assert!(!free.held);
    assert_eq!(free.waiters, Some(0));
    assert!(backend.ping().await.expect("ping") < PROMPTLY);

    let holder = locker(&backend, &options);
    let guard = holder.acquire("k").await.expect("acquire");
    let waiter = locker(&client(&server).await, &options);
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let (waiter, options) = (waiter.clone(), options.clone());
        tokio::spawn(async move { waiter.acquire_observed("k", &options, Some(queued)).await })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");
    let held = backend.inspect(&key, &options).await.expect("inspect");
    assert!(held.held);
    assert_eq!(held.fencing_token, Some(guard.fencing_token()));
    assert_eq!(held.waiters, Some(1));
    let remaining = held.remaining_lease.expect("remaining lease");
    assert!(
        remaining > Duration::ZERO && remaining <= options.lease,
        "{remaining:?}"
    );
    guard.release().await.expect("release");
    timeout(PROMPTLY, waiting)
        .await
        .expect("handoff")
        .expect("task")
        .expect("waiter acquires")
        .release()
        .await
        .expect("release");
}

/// Issue 9, item 5: the holder's keepalive declares the lock lost on its own clock
/// (`LeaseExpired`) while its etcd lease lives on (its heartbeat keeps it alive). The key
/// must go at once: a waiter gets the lock, and the holder's own re-acquire is not stuck
/// behind its dead key, long before the lease would ever end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_lost_on_the_holders_clock_is_removed_from_the_server() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(5);
    let options = options("lost-on-holder-clock", lease);
    let frozen = FrozenRenewals::new(client(&server).await);
    let holder = Locker::from_backend(Arc::clone(&frozen) as Arc<dyn LockBackend>)
        .with_options(options.clone())
        .expect("valid options");
    let other = locker(&client(&server).await, &options);
    let guard = holder.acquire("k").await.expect("acquire");
    frozen.layer().freeze();
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let other = other.clone();
        let options = options.clone().wait(Duration::from_secs(60));
        tokio::spawn(async move { other.acquire_observed("k", &options, Some(queued)).await })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");

    let reason = timeout(lease + PROMPTLY, guard.lost())
        .await
        .expect("the loss signal");
    assert_eq!(reason, LossReason::LeaseExpired);
    let again = {
        let holder = holder.clone();
        let options = options.clone().wait(Duration::from_secs(60));
        tokio::spawn(async move { holder.acquire_with("k", &options).await })
    };
    // The lease itself lives on for as long as the holder does here: one lease is far below
    // "never", and far above the few round trips the removal takes on a loaded machine.
    let next = timeout(lease, waiting)
        .await
        .expect("the waiter acquires within a lease of the loss")
        .expect("waiter task")
        .expect("the waiter acquires");
    let token = next.fencing_token();
    assert!(token > guard.fencing_token());
    next.release().await.expect("the waiter releases");
    let mine = timeout(lease, again)
        .await
        .expect("the holder acquires again within a lease")
        .expect("holder task")
        .expect("the holder acquires again");
    assert!(mine.fencing_token() > token);
}

/// Issue 9, item 5, the session's side: the holder's clock jumps past its lease (as after a
/// SIGSTOP longer than the lease) while etcd saw no silence and keeps the lease. The client
/// gives the lease up on its own clock, so it must revoke it: the waiter gets the lock at
/// once rather than when etcd expires the lease, and the holder acquires again.
#[tokio::test(flavor = "current_thread")]
async fn clock_jump_past_the_lease_revokes_it() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(10);
    let options = options("clock-jump", lease);
    let holder = locker(&client(&server).await, &options);
    let guard = holder.acquire("k").await.expect("acquire");
    let (queued, in_line) = oneshot::channel();
    // The waiter runs on a runtime of its own, whose clock does not jump.
    let waiting = {
        let url = format!("{}?timeout=1s&connect_timeout=1s", server.url());
        let options = options.clone().wait(Duration::from_secs(60));
        elsewhere().spawn(async move {
            let other = locker(&dlock_etcd::connect(&url).await?, &options);
            let next = other.acquire_observed("k", &options, Some(queued)).await?;
            let acquired = std::time::Instant::now();
            let token = next.fencing_token();
            next.release().await?;
            Ok::<_, LockError>((acquired, token))
        })
    };
    timeout(PROMPTLY, in_line)
        .await
        .expect("queued in time")
        .expect("queued");

    jump_clock(lease + Duration::from_secs(1));
    let reason = timeout(PROMPTLY, guard.lost())
        .await
        .expect("the loss signal");
    let lost = std::time::Instant::now();
    assert!(
        matches!(reason, LossReason::LeaseExpired | LossReason::SessionEnded),
        "{reason:?}"
    );
    // etcd would expire the lease a whole lease after the last keepalive, sent about when
    // the clock jumped; half a lease is far above the round trips a revocation takes.
    let (acquired, token) = timeout(lease / 2, waiting)
        .await
        .expect("the waiter acquires within half a lease of the loss")
        .expect("waiter task")
        .expect("the waiter acquires");
    assert!(token > guard.fencing_token());
    println!(
        "the waiter acquired {:?} after the holder's loss",
        acquired.saturating_duration_since(lost)
    );
    let mine = timeout(
        PROMPTLY,
        holder.acquire_with("k", &options.clone().wait(PROMPTLY)),
    )
    .await
    .expect("the holder acquires again in time")
    .expect("the holder acquires again");
    assert!(mine.fencing_token() > token);
}

/// Issue 9, item 5 (seen once) and the suspected etcd bug: the client's lease is gone on the
/// server (revoked here; expired after a pause alike) and its heartbeat has not noticed yet.
/// An acquire must not fail with "requested lease not found": it starts a new session at
/// once and goes on within its wait limit. So must a `try_acquire`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_on_a_lease_gone_on_the_server_starts_a_new_session() {
    let server = EtcdServer::start();
    // Long enough that the heartbeat (a keepalive every third of it) does not notice the
    // revocation during the test.
    let options = options("lease-not-found", Duration::from_secs(30));
    let backend = client(&server).await;
    let holder = locker(&backend, &options);
    let first = holder.acquire("a").await.expect("acquire");
    let sessions = backend.session_lease_ids().await;
    assert_eq!(sessions.len(), 1, "one lease per client");
    let mut outsider = client(&server).await.client().clone();
    outsider.lease_revoke(sessions[0]).await.expect("revoke");

    let waited = Instant::now();
    let next = timeout(
        PROMPTLY,
        holder.acquire_with("b", &options.clone().wait(PROMPTLY)),
    )
    .await
    .expect("acquire in time")
    .expect("acquire in a new session");
    assert!(waited.elapsed() < PROMPTLY);
    let tried = timeout(PROMPTLY, holder.try_acquire("c"))
        .await
        .expect("try_acquire in time")
        .expect("try_acquire in the new session");
    assert!(tried.is_some(), "nobody holds c");
    assert_ne!(backend.session_lease_ids().await, sessions);
    next.release().await.expect("release b");
    // The first lock went with the revoked lease.
    let reason = timeout(PROMPTLY, first.lost()).await.expect("loss noticed");
    assert!(
        matches!(reason, LossReason::SessionEnded | LossReason::NotOwner),
        "{reason:?}"
    );
}

/// Not a test of its own: the child process of `holder_paused_for_most_of_its_lease`.
#[test]
fn child_process_paused_while_holding() {
    let Ok(url) = std::env::var("DLOCK_ETCD_PAUSED_CHILD_URL") else {
        return;
    };
    let prefix = std::env::var("DLOCK_ETCD_CHILD_PREFIX").expect("prefix");
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let options = LockOptions::default()
            .lease(Duration::from_secs(5))
            .prefix(prefix);
        let backend = dlock_etcd::connect(&url).await.expect("connect");
        // Past the end of the pause below, so a holder that kept its lock releases it.
        hold_through_a_pause(&locker(&backend, &options), Duration::from_secs(7)).await;
    });
}

/// Issue 9, item 5, as reported: a 5 s lease, the holder stopped 3.5 s from 1.3 s after
/// acquiring (5 of 5 runs left the lock taken by nobody until the holder exited, in a client
/// whose keepalive and lease heartbeat were out of step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_paused_for_most_of_its_lease() {
    let server = EtcdServer::start();
    let lease = Duration::from_secs(5);
    let options = options("paused-holder", lease);
    let child = HolderChild::spawn(
        "child_process_paused_while_holding",
        &[
            ("DLOCK_ETCD_PAUSED_CHILD_URL", &server.url()),
            ("DLOCK_ETCD_CHILD_PREFIX", &options.prefix),
        ],
    );
    let other = locker(
        &client(&server).await,
        &options.clone().lease(Duration::from_secs(20)),
    );
    // A holder that kept its lock releases it 7 s after acquiring, 2.2 s after waking; one
    // that lost it frees it at once. One lease is far below "until the holder exits".
    let summary = check_paused_holder(
        child,
        other,
        Duration::from_millis(1300),
        Duration::from_millis(3500),
        lease,
    )
    .await;
    println!("{summary}");
}

/// A client reaching `server` through `proxy`, with request timeouts short enough that a
/// lost request is retried well within the tests' bounds, long enough for a loaded machine.
async fn client_via(proxy: &FaultProxy) -> EtcdBackend {
    let url = format!("etcd://{}?timeout=2s&connect_timeout=2s", proxy.address());
    dlock_etcd::connect(&url)
        .await
        .expect("connect through the proxy")
}

/// Waits until etcd shows `key` held (by anyone).
async fn until_held(backend: &EtcdBackend, key: &str, options: &LockOptions) {
    let key = dlock_core::LockKey::new(key).expect("key");
    loop {
        if backend
            .inspect(&key, options)
            .await
            .is_ok_and(|info| info.held)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `try_acquire` dropped after etcd applied its put, its reply still on the way, must not
/// leave its key holding the lock for as long as its (live) client keeps the session going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_cancelled_after_its_put_leaves_no_key() {
    let server = EtcdServer::start();
    let options = options("cancel-try", Duration::from_secs(5));
    let proxy = FaultProxy::start(server.address().as_str());
    let cancelled = locker(&client_via(&proxy).await, &options);
    // The default request timeout: the observer sees no outage.
    let observer_backend = dlock_etcd::connect(&server.url()).await.expect("connect");
    let observer = locker(&observer_backend, &options);
    // The session and the connection exist before the replies are held back.
    let warm = cancelled.acquire("warm-up").await.expect("warm-up");
    warm.release().await.expect("release the warm-up");

    proxy.stall(Direction::ToClient);
    let mut attempt = Box::pin(cancelled.try_acquire("k"));
    tokio::select! {
        outcome = &mut attempt => panic!("answered through a stalled link: {outcome:?}"),
        seen = timeout(PROMPTLY, until_held(&observer_backend, "k", &options)) => {
            seen.expect("the put reaches etcd");
        }
    }
    drop(attempt);
    proxy.unstall(Direction::ToClient);

    // The cancelled client lives on: only its own clean-up can free the lock.
    let guard = timeout(PROMPTLY, observer.acquire("k"))
        .await
        .expect("the cancelled try_acquire's key was removed")
        .expect("acquire");
    guard.release().await.expect("release");
    drop(cancelled);
}

/// A `release` dropped after its first poll, its request lost with the connection, must
/// still free the lock while its (live) client keeps the session going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_cancelled_in_flight_still_frees_the_lock() {
    let server = EtcdServer::start();
    let options = options("cancel-release", Duration::from_secs(5));
    let proxy = FaultProxy::start(server.address().as_str());
    let cancelled = locker(&client_via(&proxy).await, &options);
    let observer = locker(
        &dlock_etcd::connect(&server.url()).await.expect("connect"),
        &options,
    );
    let guard = cancelled.acquire("k").await.expect("acquire");

    proxy.stall(Direction::ToServer);
    assert!(cancel_at_poll(guard.release(), 2).await.is_none());
    // The held request is lost with the connection; the client reconnects.
    proxy.reset();
    proxy.unstall(Direction::ToServer);

    // Generous: a release retried in the background may wait out a request timeout (2 s)
    // and a reconnection before it goes through, on a loaded machine.
    let guard = timeout(2 * PROMPTLY, observer.acquire("k"))
        .await
        .expect("the cancelled release went through")
        .expect("acquire");
    guard.release().await.expect("release");
    drop(cancelled);
}
