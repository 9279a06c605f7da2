//! Fault tests of the ZooKeeper backend, each on its own ZooKeeper process: outages shorter
//! and longer than the session, a session ended from outside, a holder process killed, and
//! a long line of waiters, locks lost on the holder's clock while the server kept them.

mod session_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_core::{LockBackend, LockError, LockGuard, LockOptions, Locker, LossReason};
use dlock_test_servers::ZooKeeperServer;
use dlock_zookeeper::zookeeper_client::Client;
use dlock_zookeeper::{ZooKeeperBackend, ZooKeeperConfig};
use session_support::{
    check_paused_holder, elsewhere, hold_through_a_pause, jump_clock, FrozenRenewals, HolderChild,
    ReplyDropper,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Generous bound for anything that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(15);

fn prefix(test: &str) -> String {
    format!("dlock-faults/{test}/{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

async fn client(url: &str, session: Duration, prefix: &str) -> (Locker, ZooKeeperBackend) {
    let config = ZooKeeperConfig::from_url(url)
        .expect("valid URL")
        .session_timeout(session);
    let backend = ZooKeeperBackend::connect(config).await.expect("connect");
    let options = LockOptions::default().lease(session).prefix(prefix);
    let locker = Locker::new(backend.clone())
        .with_options(options)
        .expect("valid options");
    (locker, backend)
}

async fn within<T>(limit: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("waited {limit:?} for {what}"))
}

fn is_pending(guard: &LockGuard) -> bool {
    use std::future::Future;
    let lost = guard.lost();
    tokio::pin!(lost);
    let waker = std::task::Waker::noop();
    lost.as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
        .is_pending()
}

/// The server stops and comes back well within the session timeout: the session survives,
/// the lock stays held, no guard is signalled, and the holder can still release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_shorter_than_the_session_keeps_locks() {
    let mut server = ZooKeeperServer::start();
    let session = Duration::from_secs(20);
    let prefix = prefix("short-outage");
    let (holder, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let token = guard.fencing_token();

    let stopped = Instant::now();
    server.process().stop();
    server.process().restart();
    let outage = stopped.elapsed();
    assert!(
        outage < session / 2,
        "the restart took {outage:?}: too slow for this test to mean anything"
    );

    let (other, _) = client(&server.url(), session, &prefix).await;
    assert!(
        other.try_acquire("k").await.expect("try").is_none(),
        "the lock node did not survive the restart"
    );
    assert!(guard.is_held());
    assert!(
        is_pending(&guard),
        "a guard was signalled during a short outage"
    );
    // Releasing goes through the holder's own session, which must have come back.
    within(SOON, "the release", guard.release())
        .await
        .expect("the holder's session survived and releases");
    let next = other
        .acquire_with("k", &other.options().clone().wait(SOON))
        .await
        .expect("free after release");
    assert!(next.fencing_token() > token);
}

/// The server stays away longer than the session timeout: the holder's guard is signalled
/// lost on its own clock, and once the server is back the waiter gets the lock, without
/// waiting for the server to expire the holder's old session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_session_loses_locks_then_waiters_acquire() {
    let mut server = ZooKeeperServer::start();
    let session = Duration::from_secs(6);
    let prefix = prefix("long-outage");
    let (holder, _) = client(&server.url(), session, &prefix).await;
    let (waiter, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let token = guard.fencing_token();
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let waiter = waiter.clone();
        let options = waiter.options().clone().wait(Duration::from_secs(60));
        tokio::spawn(async move { waiter.acquire_observed("k", &options, Some(queued)).await })
    };
    within(SOON, "the waiter to queue", in_line)
        .await
        .expect("queued");

    server.process().stop();
    let stopped = Instant::now();
    let reason = within(session + SOON, "the loss signal", guard.lost()).await;
    let noticed = stopped.elapsed();
    assert!(
        matches!(reason, LossReason::LeaseExpired | LossReason::SessionEnded),
        "{reason:?}"
    );
    assert!(
        noticed <= session + session / 3 + Duration::from_secs(1),
        "loss noticed after {noticed:?}"
    );
    assert!(!guard.is_held());
    assert!(
        !waiting.is_finished(),
        "the waiter cannot get the lock while the server is down"
    );

    server.process().restart();
    let restarted = Instant::now();
    let next = within(SOON + session * 2, "the waiter to acquire", waiting)
        .await
        .expect("waiter task")
        .expect("the waiter acquires once the old session is gone");
    assert!(next.fencing_token() > token);
    // The holder's client closes its given-up session once the server is back, rather than
    // leaving the server to expire it a whole session timeout after its restart.
    let after = restarted.elapsed();
    assert!(
        after < session,
        "the waiter got the lock {after:?} after the restart"
    );
    assert!(matches!(
        guard.release().await,
        Err(LockError::NotHeld { .. })
    ));
}

/// Someone takes over the holder's session and closes it: the guard hears the session ended
/// and the waiter gets the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_closed_from_outside_passes_the_lock_on() {
    let server = ZooKeeperServer::start();
    let session = Duration::from_secs(10);
    let prefix = prefix("closed-session");
    let (holder, holder_backend) = client(&server.url(), session, &prefix).await;
    let (waiter, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let waiter = waiter.clone();
        let options = waiter.options().clone();
        tokio::spawn(async move { waiter.acquire_observed("k", &options, Some(queued)).await })
    };
    within(SOON, "the waiter to queue", in_line)
        .await
        .expect("queued");

    let info = holder_backend.session_info().await.expect("a live session");
    // The holder's client reconnects the moment the server moves its session away, so a
    // takeover can lose that race (its connect times out, or its close reaches a connection
    // that no longer owns the session). Try again until the holder hears of it, as
    // Curator's KillSession does.
    let lost = guard.lost();
    tokio::pin!(lost);
    let mut outcome = None;
    let mut started = Instant::now();
    for _attempt in 0..10 {
        let takeover = Client::connector()
            .with_session_timeout(session)
            .with_connection_timeout(Duration::from_secs(2))
            .with_session(info.clone())
            .connect(&server.address())
            .await;
        started = Instant::now();
        drop(takeover); // not detached: closes the session on the server
        if let Ok(reason) = tokio::time::timeout(Duration::from_secs(3), &mut lost).await {
            outcome = Some(reason);
            break;
        }
    }
    let reason = outcome.expect("the holder heard its session end");
    // Which the holder hears first depends on the race between its reconnection and the
    // close: its node's deletion, or the session's end.
    assert!(
        matches!(reason, LossReason::SessionEnded | LossReason::NotOwner),
        "{reason:?}"
    );
    let next = within(SOON, "the waiter to acquire", waiting)
        .await
        .expect("waiter task")
        .expect("waiter acquires");
    assert!(next.fencing_token() > guard.fencing_token());
    assert!(
        started.elapsed() < session,
        "the lock passed on only after {:?}, as if by expiry",
        started.elapsed()
    );
    // The holder's client opens a new session for what comes next.
    let again = holder
        .try_acquire("other")
        .await
        .expect("a new session works");
    assert!(again.is_some());
}

/// The environment variables that turn this test binary into a lock-holding child.
const CHILD_URL: &str = "DLOCK_ZK_TEST_CHILD_URL";
const CHILD_PREFIX: &str = "DLOCK_ZK_TEST_CHILD_PREFIX";

/// Not a test of its own: the child process of
/// `holder_process_killed_frees_the_lock_within_the_session`, holding a lock until killed.
#[tokio::test]
async fn child_process_holding_a_lock() {
    let (Ok(url), Ok(prefix)) = (std::env::var(CHILD_URL), std::env::var(CHILD_PREFIX)) else {
        return;
    };
    // Die with the parent: it holds our stdin, which closes when it exits.
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let (holder, _) = client(&url, Duration::from_secs(2), &prefix).await;
    let guard = holder.acquire("k").await.expect("child acquires");
    println!("HELD {}", guard.fencing_token());
    std::future::pending::<()>().await;
}

/// A process holding a lock is killed with SIGKILL: the lock frees within the session
/// timeout (plus the server's expiry tick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_process_killed_frees_the_lock_within_the_session() {
    let server = ZooKeeperServer::start();
    let prefix = prefix("killed-holder");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "child_process_holding_a_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, server.url())
        .env(CHILD_PREFIX, &prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the holder process");
    let stdout = child.stdout.take().expect("piped stdout");
    let token: u64 = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // The harness may print the test's name on the same line first.
            .find_map(|line| {
                let (_, token) = line.split_once("HELD ")?;
                Some(token.trim().parse().expect("a token"))
            })
            .expect("the child reports it holds the lock")
    })
    .await
    .expect("reader");

    let (waiter, _) = client(&server.url(), Duration::from_secs(10), &prefix).await;
    assert!(waiter.try_acquire("k").await.expect("try").is_none());
    child.kill().expect("SIGKILL the holder");
    let killed = Instant::now();
    child.wait().expect("reap the holder");
    let session = Duration::from_secs(2);
    let bound = session + waiter.capabilities().crash_release_bound;
    let next = waiter
        .acquire_with("k", &waiter.options().clone().wait(bound + SOON))
        .await
        .expect("the dead holder's lock frees");
    let freed = killed.elapsed();
    assert!(next.fencing_token().get() > token);
    assert!(
        freed <= bound + Duration::from_secs(1),
        "freed after {freed:?}"
    );
}

/// 64 waiters on one key, each its own client: served in arrival order, and each release
/// wakes exactly one waiter (one watch event). Each re-reads the line once, except the
/// first: it joined next in line and watched its own node too, so the event alone gave it
/// the turn; the others cannot know from the event whether the node that left held the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_waiters_are_served_in_order_one_wakeup_per_release() {
    const WAITERS: usize = 64;
    let server = ZooKeeperServer::start();
    let prefix = prefix("contention");
    let session = Duration::from_secs(20);
    let (holder, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("holder acquires");
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for position in 0..WAITERS {
        let (locker, backend) = client(&server.url(), session, &prefix).await;
        backends.push(backend);
        let (queued, in_line) = oneshot::channel();
        let served = Arc::clone(&served);
        tasks.push(tokio::spawn(async move {
            let options = locker.options().clone();
            let guard = locker
                .acquire_observed("k", &options, Some(queued))
                .await
                .expect("waiter acquires");
            served.lock().unwrap().push(position);
            guard.release().await.expect("waiter releases");
        }));
        within(SOON, "a waiter to queue", in_line)
            .await
            .expect("queued");
    }
    guard.release().await.expect("holder releases");
    for task in tasks {
        within(SOON * 2, "the line to drain", task)
            .await
            .expect("waiter task");
    }
    let served = served.lock().unwrap().clone();
    assert_eq!(
        served,
        (0..WAITERS).collect::<Vec<_>>(),
        "not first come, first served"
    );
    for (position, backend) in backends.iter().enumerate() {
        assert_eq!(
            backend.wakeups(),
            1,
            "waiter {position} was woken {} times",
            backend.wakeups()
        );
        assert_eq!(
            backend.rechecks(),
            u64::from(position > 0),
            "waiter {position} re-read the line {} times",
            backend.rechecks()
        );
    }
}

/// Issue 9, item 5: the holder's keepalive declares the lock lost on its own clock
/// (`LeaseExpired`) while its session lives on the server. What the server still holds for
/// the lock must go at once: a waiter gets the lock, and the holder's own re-acquire is not
/// stuck behind its dead node, long before the holder's session would ever end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_lost_on_the_holders_clock_is_removed_from_the_server() {
    let server = ZooKeeperServer::start();
    let session = Duration::from_secs(4);
    let prefix = prefix("lost-on-holder-clock");
    let config = ZooKeeperConfig::from_url(&server.url())
        .expect("valid URL")
        .session_timeout(session);
    let backend = ZooKeeperBackend::connect(config).await.expect("connect");
    let frozen = FrozenRenewals::new(backend.clone());
    let holder = Locker::from_backend(Arc::clone(&frozen) as Arc<dyn LockBackend>)
        .with_options(LockOptions::default().lease(session).prefix(&prefix))
        .expect("valid options");
    let (other, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    frozen.layer().freeze();
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let other = other.clone();
        let options = other.options().clone().wait(Duration::from_secs(60));
        tokio::spawn(async move { other.acquire_observed("k", &options, Some(queued)).await })
    };
    within(SOON, "the waiter to queue", in_line)
        .await
        .expect("queued");

    let reason = within(session + SOON, "the loss signal", guard.lost()).await;
    assert_eq!(reason, LossReason::LeaseExpired);
    assert!(!guard.is_held());
    let again = {
        let holder = holder.clone();
        let options = holder.options().clone().wait(Duration::from_secs(60));
        tokio::spawn(async move { holder.acquire_with("k", &options).await })
    };
    // The session itself lives on forever here: one session timeout is far below "never",
    // and far above the few round trips the removal takes on a loaded machine.
    let next = within(session, "the waiter to acquire after the loss", waiting)
        .await
        .expect("waiter task")
        .expect("the waiter acquires");
    let token = next.fencing_token();
    assert!(token > guard.fencing_token());
    next.release().await.expect("the waiter releases");
    let mine = within(session, "the holder to acquire again", again)
        .await
        .expect("holder task")
        .expect("the holder acquires again");
    assert!(mine.fencing_token() > token);
}

/// Issue 9, item 5, the session's side: the holder's clock jumps past its session's deadline
/// (as after a SIGSTOP longer than the session) while the server saw no silence and keeps
/// the session. The client gives the session up on its own clock, so it must end it on the
/// server too: the waiter gets the lock at once, and the holder acquires again.
#[tokio::test(flavor = "current_thread")]
async fn clock_jump_past_the_session_ends_it_on_the_server() {
    let server = ZooKeeperServer::start();
    let session = Duration::from_secs(4);
    let prefix = prefix("clock-jump");
    let (holder, _holder_backend) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let (queued, in_line) = oneshot::channel();
    // The waiter runs on a runtime of its own, whose clock does not jump.
    let waiting = {
        let (url, prefix) = (server.url(), prefix.clone());
        elsewhere().spawn(async move {
            let (other, _backend) = client(&url, session, &prefix).await;
            let options = other.options().clone().wait(Duration::from_secs(60));
            let next = other.acquire_observed("k", &options, Some(queued)).await?;
            let acquired = std::time::Instant::now();
            let token = next.fencing_token();
            next.release().await?;
            Ok::<_, LockError>((acquired, token))
        })
    };
    within(SOON, "the waiter to queue", in_line)
        .await
        .expect("queued");

    jump_clock(session + Duration::from_secs(1));
    let reason = within(SOON, "the loss signal", guard.lost()).await;
    let lost = std::time::Instant::now();
    assert!(
        matches!(reason, LossReason::LeaseExpired | LossReason::SessionEnded),
        "{reason:?}"
    );
    // As above: the server would keep the session for as long as the holder lives.
    let (acquired, token) = within(session, "the waiter to acquire after the loss", waiting)
        .await
        .expect("waiter task")
        .expect("the waiter acquires");
    assert!(token > guard.fencing_token());
    println!(
        "the waiter acquired {:?} after the holder's loss",
        acquired.saturating_duration_since(lost)
    );
    let mine = within(
        SOON,
        "the holder to acquire again",
        holder.acquire_with("k", &holder.options().clone().wait(SOON)),
    )
    .await
    .expect("the holder acquires again");
    assert!(mine.fencing_token() > token);
}

/// Issue 9, suspected: a waiter's wait limit passes while the server is down, so its
/// `withdraw` (the deletion of its node) cannot reach the server before the core cuts the
/// acquire off at the limit plus its grace. The node must still go once the server is back,
/// not stay in line for as long as the waiter's client (and so its session) lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_cut_off_during_a_server_restart_leaves_nothing_behind() {
    let mut server = ZooKeeperServer::start();
    // Long enough that no session ends during the restart: only the withdraw can free the line.
    let session = Duration::from_secs(30);
    let prefix = prefix("withdraw-restart");
    let (holder, _) = client(&server.url(), session, &prefix).await;
    let (waiter, _waiter_backend) = client(&server.url(), session, &prefix).await;
    let (third, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let token = guard.fencing_token();
    let wait = Duration::from_secs(2);
    let (queued, in_line) = oneshot::channel();
    let waiting = {
        let waiter = waiter.clone();
        let options = waiter.options().clone().wait(wait);
        tokio::spawn(async move { waiter.acquire_observed("k", &options, Some(queued)).await })
    };
    within(SOON, "the waiter to queue", in_line)
        .await
        .expect("queued");

    server.process().stop();
    let outcome = within(
        wait + dlock_core::WAIT_LIMIT_GRACE + SOON,
        "the waiter to give up",
        waiting,
    )
    .await
    .expect("waiter task");
    assert!(
        matches!(outcome, Err(LockError::Timeout { .. })),
        "{outcome:?}"
    );
    server.process().restart();

    within(SOON, "the release", guard.release())
        .await
        .expect("the holder's session survived the restart and releases");
    // The waiter's session lives on: with its node left behind, the third client would wait
    // forever. SOON covers the clients' reconnection after the restart on a loaded machine.
    let next = within(
        SOON,
        "the third client to acquire",
        third.acquire_with("k", &third.options().clone().wait(SOON * 2)),
    )
    .await
    .expect("nothing of the waiter's is left in line");
    assert!(next.fencing_token() > token);
}

/// Issue 9, suspected: the holder's delete of its node is done by the server, but the
/// answer is lost with the connection. The retried delete finds no node, which is the
/// release having worked, not `NotHeld`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_whose_answer_was_lost_succeeds() {
    let server = ZooKeeperServer::start();
    let proxy = ReplyDropper::start(server.address()).await;
    let session = Duration::from_secs(20);
    let prefix = prefix("lost-delete-answer");
    let (holder, _) = client(&format!("zk://{}", proxy.address()), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let node = ZooKeeperBackend::node_path(guard.lease())
        .expect("a ZooKeeper lease")
        .to_owned();
    let observer = Client::connect(&server.address()).await.expect("observer");
    let (stat, deleted) = observer
        .check_and_watch_stat(&node)
        .await
        .expect("watch the lock node");
    assert!(stat.is_some());

    proxy.drop_replies(true);
    let releasing = tokio::spawn(guard.release());
    within(SOON, "the server to delete the node", deleted.changed()).await;
    proxy.drop_replies(false);
    proxy.cut();
    let released = within(SOON, "the release to return", releasing)
        .await
        .expect("release task");
    assert!(released.is_ok(), "{released:?}");
}

const PAUSED_CHILD_URL: &str = "DLOCK_ZK_TEST_PAUSED_CHILD_URL";

/// Not a test of its own: the child process of `holder_paused_for_most_of_its_session`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_paused_while_holding() {
    let (Ok(url), Ok(prefix)) = (std::env::var(PAUSED_CHILD_URL), std::env::var(CHILD_PREFIX))
    else {
        return;
    };
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let (holder, _backend) = client(&url, Duration::from_secs(4), &prefix).await;
    // Past the end of the pause below, so a holder that kept its lock releases it.
    hold_through_a_pause(&holder, Duration::from_secs(6)).await;
}

/// Issue 9, item 5, as reported: a 4 s session, the holder stopped 2.8 s from 1.3 s after
/// acquiring (5 of 5 runs left the lock taken by nobody until the holder exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_paused_for_most_of_its_session() {
    let server = ZooKeeperServer::start();
    let prefix = prefix("paused-holder");
    let session = Duration::from_secs(4);
    let child = HolderChild::spawn(
        "child_process_paused_while_holding",
        &[(PAUSED_CHILD_URL, &server.url()), (CHILD_PREFIX, &prefix)],
    );
    let (other, _other_backend) = client(&server.url(), Duration::from_secs(20), &prefix).await;
    // A holder that kept its lock releases it 6 s after acquiring, 1.9 s after waking; one
    // that lost it frees it at once. One session is far below "until the holder exits".
    let summary = check_paused_holder(
        child,
        other,
        Duration::from_millis(1300),
        Duration::from_millis(2800),
        session,
    )
    .await;
    println!("{summary}");
}

/// The waiter's connection drops right after its node joined the line, while it asks where
/// it stands (found on a 3-server ensemble when the waiter's server died): the client
/// reconnects within the session and the node is still in line, so the acquire must go on
/// waiting, not fail with a connection loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_whose_connection_drops_right_after_it_joined_keeps_waiting() {
    use dlock_test_servers::{zookeeper_leftovers, Direction, FaultProxy, Faults};

    let server = ZooKeeperServer::start();
    let session = Duration::from_secs(10);
    let prefix = format!("dropped-after-join-{:016x}", rand_u64());
    let (holder, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let proxy = FaultProxy::start(server.address());
    let (waiter, _) = client(
        &format!("zookeeper://{}", proxy.address()),
        session,
        &prefix,
    )
    .await;
    // Slow answers: the waiter's node shows on the server well before the waiter hears of it,
    // and its next requests go out before their answers come back.
    proxy.set_faults(Faults {
        latency_to_client: Duration::from_millis(300),
        ..Faults::default()
    });
    let waiting = tokio::spawn(async move { waiter.acquire("k").await });
    let address = server.address();
    let joined = within(SOON, "the waiter's node", async {
        loop {
            let nodes = zookeeper_leftovers(&address, &prefix).await.unwrap();
            if nodes.len() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    joined.await;
    // The create's answer reached the waiter once it sends again (its list and watch).
    let sent = proxy.forwarded_bytes(Direction::ToServer);
    within(SOON, "the waiter's next requests", async {
        while proxy.forwarded_bytes(Direction::ToServer) == sent {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    proxy.reset();
    proxy.heal();
    let token = guard.fencing_token();
    guard.release().await.expect("release");
    let next = within(SOON, "the waiter", waiting)
        .await
        .unwrap()
        .expect("the waiter keeps waiting through the reconnect and gets the lock");
    assert!(next.fencing_token() > token);
    next.release().await.expect("release");
}

/// A proxy that reads the ZooKeeper protocol a client sends and records each request as
/// `(opcode name, path)`, leaving out pings and the session's own heartbeat (`exists /`):
/// what the lock operations themselves ask of the server.
struct RequestLog {
    address: String,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl RequestLog {
    async fn start(upstream: String) -> RequestLog {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let address = listener.local_addr().expect("address").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = async move {
                        let mut pending = Vec::new();
                        let mut connected = false;
                        let mut buffer = vec![0; 64 * 1024];
                        while let Ok(n) = client_read.read(&mut buffer).await {
                            if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            pending.extend_from_slice(&buffer[..n]);
                            while pending.len() >= 4 {
                                let length =
                                    u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                                if pending.len() < 4 + length {
                                    break;
                                }
                                let frame: Vec<u8> = pending.drain(..4 + length).skip(4).collect();
                                // The first frame is the connect request: no header.
                                if std::mem::replace(&mut connected, true) {
                                    if let Some(request) = describe(&frame) {
                                        log.lock().unwrap().push(request);
                                    }
                                }
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let downstream = async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        RequestLog { address, log }
    }

    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// `(opcode, path)` of a request frame (after its length), `None` for pings and `exists /`.
fn describe(frame: &[u8]) -> Option<(String, String)> {
    let int = |at: usize| {
        frame
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
    };
    let opcode = int(4)?;
    let name = match opcode {
        1 => "create",
        2 => "delete",
        3 => "exists",
        4 => "getData",
        5 => "setData",
        8 => "getChildren",
        9 => "sync",
        11 => return None,
        12 => "getChildren2",
        13 => "check",
        14 => "multi",
        15 => "create2",
        19 => "createContainer",
        21 => "createTTL",
        101 => "setWatches",
        105 => "setWatches2",
        106 => "addWatch",
        other => return Some((format!("op{other}"), String::new())),
    };
    let path = match int(8) {
        Some(length) if length >= 0 => {
            String::from_utf8_lossy(frame.get(12..12 + length as usize).unwrap_or_default())
                .into_owned()
        }
        _ => String::new(),
    };
    if name == "exists" && path == "/" {
        return None;
    }
    Some((name.to_owned(), path))
}

/// Issue 14: an uncontended acquire+release (and try_acquire+release) in dlock's default
/// layout, with the default options (keepalive on), asks the server for three things and no
/// more, in two round trips: create with getChildren pipelined behind it (where the node
/// stands), then delete. A lock released within the watch grace never sets the watch on its
/// node (the `exists` a longer hold sends). Counted request by request at the protocol level,
/// after a warm-up that makes the key's parents. Before issue 14: four requests (an
/// exists-watch on the own node, pipelined with the getChildren after the create's answer)
/// in three round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_acquire_and_release_send_the_fewest_requests() {
    let server = ZooKeeperServer::start();
    let proxy = RequestLog::start(server.address()).await;
    let backend = dlock_zookeeper::connect(&format!("zookeeper://{}", proxy.address))
        .await
        .expect("connect");
    let locker = Locker::new(backend);
    locker
        .acquire("k")
        .await
        .expect("warm-up")
        .release()
        .await
        .expect("release");
    proxy.take();
    const ROUNDS: usize = 10;
    for _ in 0..ROUNDS {
        locker
            .acquire("k")
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let acquired = proxy.take();
    for _ in 0..ROUNDS {
        let guard = locker.try_acquire("k").await.expect("try").expect("free");
        guard.release().await.expect("release");
    }
    let tried = proxy.take();
    for (what, requests) in [("acquire", &acquired), ("try_acquire", &tried)] {
        assert_eq!(
            requests.len(),
            3 * ROUNDS,
            "{what}+release: {} requests per round, not 3: {requests:?}",
            requests.len() as f64 / ROUNDS as f64
        );
        for round in requests.chunks(3) {
            let ops: Vec<&str> = round.iter().map(|(op, _)| op.as_str()).collect();
            assert_eq!(
                ops,
                ["create2", "getChildren", "delete"],
                "{what}: {round:?}"
            );
        }
    }

    // A lock held past the grace has its node watched: one `exists`, and a deletion from
    // outside is signalled.
    let guard = locker.acquire("k").await.expect("acquire");
    let node = ZooKeeperBackend::node_path(guard.lease())
        .expect("a zookeeper lease")
        .to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watched: Vec<_> = proxy
        .take()
        .into_iter()
        .filter(|(op, path)| op == "exists" && *path == node)
        .collect();
    assert_eq!(watched.len(), 1, "the held node is watched once");
    let admin = Client::connect(&server.address()).await.expect("admin");
    admin
        .delete(&node, None)
        .await
        .expect("delete from outside");
    within(SOON, "the loss signal", guard.lost()).await;
    assert!(!guard.is_held());
}

/// The waiter next in line learns its turn from the holder's deletion event alone, without
/// reading the line again; its own node is watched for that. If that node was deleted from
/// outside while it waited, the release must not hand it the turn with a node that is gone:
/// it queues again and holds a node that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_in_line_whose_node_was_deleted_queues_again() {
    let server = ZooKeeperServer::start();
    let prefix = prefix("next-deleted");
    let session = Duration::from_secs(20);
    let (holder, _) = client(&server.url(), session, &prefix).await;
    let guard = holder.acquire("k").await.expect("holder acquires");
    let held = ZooKeeperBackend::node_path(guard.lease())
        .expect("a zookeeper lease")
        .to_owned();
    let dir = held.rsplit_once('/').expect("a parent").0.to_owned();
    let (waiter, _) = client(&server.url(), session, &prefix).await;
    let (queued, in_line) = oneshot::channel();
    let waiting = tokio::spawn(async move {
        let options = waiter.options().clone();
        waiter.acquire_observed("k", &options, Some(queued)).await
    });
    within(SOON, "the waiter to queue", in_line)
        .await
        .expect("queued");
    let admin = Client::connect(&server.address()).await.expect("admin");
    let children = admin.list_children(&dir).await.expect("the line");
    let own = children
        .iter()
        .map(|name| format!("{dir}/{name}"))
        .find(|node| *node != held)
        .expect("the waiter's node");
    // Its watch on its own node is in place (the server lists it), so the deletion reaches
    // the waiter as an event, before the holder's.
    within(SOON, "the waiter to watch its node", async {
        while !watched_paths(&server.address()).contains(&own) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let deleted = admin
        .check_stat(&own)
        .await
        .expect("stat")
        .expect("the waiter's node");
    admin.delete(&own, None).await.expect("delete from outside");
    guard.release().await.expect("holder releases");
    let next = within(SOON, "the waiter's turn", waiting)
        .await
        .expect("task")
        .expect("the waiter acquires");
    let node = ZooKeeperBackend::node_path(next.lease())
        .expect("a zookeeper lease")
        .to_owned();
    assert_ne!(node, own, "held with the deleted node");
    assert!(admin.check_stat(&node).await.expect("stat").is_some());
    assert!(next.fencing_token().get() > deleted.czxid as u64);
    next.release().await.expect("release");
}

/// The paths the server has watches on (`wchp`).
fn watched_paths(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect for wchp");
    stream.write_all(b"wchp").expect("send wchp");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read wchp");
    text
}
