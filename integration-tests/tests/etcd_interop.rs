//! `layout=etcd-concurrency` against etcd's own lock recipe, for real: `etcdctl lock NAME`
//! (Go's `concurrency.Mutex`, one process and session each, Debian's `etcd-client`) and the
//! server's Lock RPC (`v3lock`: the same Mutex, run by the server, reached with the
//! `etcd-client` crate). dlock and they exclude each other both ways, wait in one line in
//! arrival order, and a crashed holder on either side frees the lock for the other within
//! its lease. Elections: a dlock election in this layout is what `etcdctl elect` sees, and
//! the other way round.

use std::any::Any;
use std::time::{Duration, Instant};

use dlock_core::{LockOptions, Locker};
use dlock_etcd::EtcdBackend;
use dlock_test_servers::{etcdctl_count, etcdctl_observe, shared_etcd, EtcdctlLock, RpcSession};
use tokio::task::JoinHandle;

/// The lease of both sides in the crash tests: etcd's minimum TTL.
const SESSION: Duration = Duration::from_secs(2);
/// The lease of both sides elsewhere.
const LONG: Duration = Duration::from_secs(10);

fn endpoint() -> &'static str {
    &shared_etcd().address
}

/// A lock name no other test uses, as `etcdctl lock NAME` is given it.
fn unique_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let id = nanos ^ u64::from(std::process::id()) << 32;
    format!("dlock-interop/{test}-{id:016x}/lock")
}

/// A dlock client in etcd's concurrency layout.
async fn concurrency_layout() -> Locker {
    let url = format!("{}?layout=etcd-concurrency", shared_etcd().url);
    Locker::new(
        dlock_etcd::connect(&url)
            .await
            .expect("a concurrency-layout client"),
    )
}

fn backend(locker: &Locker) -> &EtcdBackend {
    let backend: &dyn Any = locker.backend().as_ref();
    backend
        .downcast_ref::<EtcdBackend>()
        .expect("an etcd backend")
}

/// The create revision of `key` (0 if absent), read from outside.
async fn create_revision(key: &str) -> i64 {
    let mut client = etcd_client::Client::connect([endpoint()], None)
        .await
        .expect("a plain client");
    let found = client.get(key, None).await.expect("get");
    found.kvs().first().map_or(0, |kv| kv.create_revision())
}

/// Waits until `waiters` contenders stand behind the holder of `name`.
async fn wait_for_waiters(locker: &Locker, name: &str, waiters: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = locker.inspect(name).await.expect("inspect");
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

/// Which of etcd's own clients plays the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Foreign {
    /// `etcdctl lock NAME` processes.
    Etcdctl,
    /// The server's Lock RPC through `etcd-client`.
    Rpc,
}

/// One contender of theirs: a session of its own, waiting for or holding the lock.
struct Them {
    etcdctl: Option<EtcdctlLock>,
    rpc: Option<(RpcSession, Option<JoinHandle<String>>)>,
    key: Option<String>,
}

impl Them {
    /// Starts a contender that queues for `name` at once.
    async fn start(foreign: Foreign, name: &str, ttl: Duration) -> Them {
        match foreign {
            Foreign::Etcdctl => Them {
                etcdctl: Some(EtcdctlLock::start(endpoint(), name, ttl)),
                rpc: None,
                key: None,
            },
            Foreign::Rpc => {
                let session = RpcSession::start(endpoint(), ttl).await;
                let locking = tokio::spawn(session.lock(name));
                Them {
                    etcdctl: None,
                    rpc: Some((session, Some(locking))),
                    key: None,
                }
            }
        }
    }

    /// Starts a contender and waits until it holds; returns it and its key.
    async fn hold(foreign: Foreign, name: &str, ttl: Duration) -> (Them, String) {
        let mut them = Them::start(foreign, name, ttl).await;
        let key = them.wait_held().await;
        (them, key)
    }

    /// Waits until it holds the lock; its key.
    async fn wait_held(&mut self) -> String {
        let key = if let Some(mut lock) = self.etcdctl.take() {
            let (lock, key) = tokio::task::spawn_blocking(move || {
                let key = lock.wait_held();
                (lock, key)
            })
            .await
            .expect("etcdctl holds");
            self.etcdctl = Some(lock);
            key
        } else {
            let (_, locking) = self.rpc.as_mut().expect("a contender");
            locking
                .take()
                .expect("waited for once")
                .await
                .expect("the Lock RPC task")
        };
        self.key = Some(key.clone());
        key
    }

    /// Whether its Lock RPC has returned (etcdctl: unknown, `false`).
    fn rpc_returned(&self) -> bool {
        self.rpc
            .as_ref()
            .and_then(|(_, locking)| locking.as_ref())
            .is_some_and(JoinHandle::is_finished)
    }

    /// Releases the lock: SIGTERM to etcdctl, the Unlock RPC.
    async fn release(mut self) {
        if let Some(lock) = self.etcdctl.take() {
            tokio::task::spawn_blocking(move || lock.release())
                .await
                .expect("etcdctl released");
        } else if let Some((session, _)) = self.rpc.take() {
            session.unlock(self.key.as_deref().expect("held")).await;
            session.close().await;
        }
    }

    /// Crashes: SIGKILL to etcdctl, the RPC client's keepalive stopped. The key stays until
    /// its lease expires.
    fn crash(mut self) {
        if let Some(lock) = self.etcdctl.take() {
            lock.kill();
        } else if let Some((session, _)) = self.rpc.take() {
            session.crash();
        }
    }
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
            async fn dlocks_own_layout_does_not_exclude_them() {
                super::dlocks_own_layout_does_not_exclude_them($foreign).await;
            }
        }
    };
}

interop_tests!(etcdctl, Foreign::Etcdctl);
interop_tests!(lock_rpc, Foreign::Rpc);

/// They hold: dlock's try fails, `inspect` names their key (their value is empty) and its
/// create revision as the token, and a waiting dlock acquire queues in their line and gets
/// the lock as soon as they release it, with a greater token.
async fn they_hold_and_dlock_waits_its_turn(foreign: Foreign) {
    let name = unique_name("they-hold");
    let (them, key) = Them::hold(foreign, &name, LONG).await;
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    let their_revision = create_revision(&key).await;
    let locker = concurrency_layout().await;
    assert!(
        locker
            .try_acquire(name.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took {name} while {foreign:?} holds it"
    );
    let report = locker.inspect(name.as_str()).await.expect("inspect");
    assert!(report.info.held, "{report:?}");
    assert_eq!(
        report.info.fencing_token.map(|t| t.get()),
        Some(their_revision as u64),
        "{report:?}"
    );
    assert_eq!(report.owner.as_deref(), Some(key.as_str()), "{report:?}");
    assert_eq!(report.info.waiters, Some(0), "{report:?}");
    let waiter = {
        let (locker, name) = (locker.clone(), name.clone());
        tokio::spawn(async move {
            locker
                .acquire_with(
                    name.as_str(),
                    &LockOptions::default().wait(Duration::from_secs(60)),
                )
                .await
        })
    };
    wait_for_waiters(&locker, &name, 1).await;
    them.release().await;
    let guard = waiter
        .await
        .expect("the waiter task")
        .expect("dlock gets the lock they released");
    assert!(guard.fencing_token().get() > their_revision as u64);
    guard.release().await.expect("release");
}

/// dlock holds: a contender of theirs queues behind dlock's key and gets the lock only when
/// dlock releases it; then dlock's try fails.
async fn dlock_holds_and_they_wait_their_turn(foreign: Foreign) {
    let name = unique_name("dlock-holds");
    let locker = concurrency_layout().await;
    let guard = locker.acquire(name.as_str()).await.expect("acquire");
    // dlock's key is the one Go's Mutex would put for this lease: NAME/<lease id, hex>.
    let ours = dlock_etcd::fence::lock_key(&guard).expect("an etcd guard");
    let leases = backend(&locker).session_lease_ids().await;
    assert!(
        leases.iter().any(|id| ours == format!("{name}/{id:x}")),
        "{ours} is not {name}/<one of {leases:x?}>"
    );
    let mut them = Them::start(foreign, &name, LONG).await;
    wait_for_waiters(&locker, &name, 1).await;
    assert!(!them.rpc_returned(), "{foreign:?} got the lock dlock holds");
    let report = locker.inspect(name.as_str()).await.expect("inspect");
    assert_eq!(report.info.fencing_token, Some(guard.fencing_token()));
    guard.release().await.expect("release");
    let key = them.wait_held().await;
    assert!(
        create_revision(&key).await > 0,
        "their key {key} exists while they hold"
    );
    assert!(
        locker
            .try_acquire(name.as_str())
            .await
            .expect("asked")
            .is_none(),
        "dlock took the lock back from {foreign:?}"
    );
    them.release().await;
    let again = locker.try_acquire(name.as_str()).await.expect("asked");
    again
        .expect("free once they released")
        .release()
        .await
        .expect("release");
}

/// Their holder crashed (SIGKILL; keepalive stopped): dlock gets the lock once etcd expires
/// their lease, within its TTL plus the backend's declared bound.
async fn their_crashed_holder_frees_the_lock_for_dlock(foreign: Foreign) {
    let name = unique_name("they-crash");
    let (them, _) = Them::hold(foreign, &name, SESSION).await;
    let locker = concurrency_layout().await;
    let bound = SESSION + locker.capabilities().crash_release_bound + Duration::from_secs(1);
    let crashed = Instant::now();
    them.crash();
    let guard = locker
        .acquire_with(
            name.as_str(),
            &LockOptions::default().wait(bound + Duration::from_secs(5)),
        )
        .await
        .expect("dlock gets the crashed holder's lock");
    let took = crashed.elapsed();
    assert!(took <= bound, "freed after {took:?}, bound {bound:?}");
    guard.release().await.expect("release");
}

/// A dlock holder whose process "crashes" (sessions abandoned: no revoke, no keepalive):
/// their waiter gets the lock within the lease plus the declared bound.
async fn a_crashed_dlock_holder_frees_the_lock_for_them(foreign: Foreign) {
    let name = unique_name("dlock-crash");
    let locker = concurrency_layout().await;
    let guard = locker
        .acquire_with(name.as_str(), &LockOptions::default().lease(SESSION))
        .await
        .expect("acquire");
    let mut them = Them::start(foreign, &name, LONG).await;
    wait_for_waiters(&locker, &name, 1).await;
    let bound = SESSION + locker.capabilities().crash_release_bound + Duration::from_secs(1);
    guard.abandon();
    let crashed = Instant::now();
    backend(&locker).abandon_sessions().await;
    them.wait_held().await;
    let took = crashed.elapsed();
    assert!(took <= bound, "freed after {took:?}, bound {bound:?}");
    them.release().await;
}

/// One line for both sides, in arrival order: behind a dlock holder, a waiter of theirs
/// (second) and a dlock waiter of the same dlock client (third); then, behind them, another
/// of theirs (fourth). Each is served in turn and nobody overtakes.
async fn waiters_of_both_sides_are_served_in_arrival_order(foreign: Foreign) {
    let name = unique_name("arrival-order");
    let locker = concurrency_layout().await;
    let first = locker.acquire(name.as_str()).await.expect("acquire");
    let mut second = Them::start(foreign, &name, LONG).await;
    wait_for_waiters(&locker, &name, 1).await;
    let third = {
        let (locker, name) = (locker.clone(), name.clone());
        tokio::spawn(async move { locker.acquire(name.as_str()).await })
    };
    wait_for_waiters(&locker, &name, 2).await;
    let mut fourth = Them::start(foreign, &name, LONG).await;
    wait_for_waiters(&locker, &name, 3).await;
    first.release().await.expect("release");
    second.wait_held().await;
    // They hold now; the dlock waiter that came after them and their later one still wait.
    wait_for_waiters(&locker, &name, 2).await;
    assert!(!third.is_finished(), "the later dlock waiter overtook them");
    assert!(
        !fourth.rpc_returned(),
        "their last waiter overtook everyone"
    );
    second.release().await;
    let third = third
        .await
        .expect("the waiter task")
        .expect("the dlock waiter is served third");
    wait_for_waiters(&locker, &name, 1).await;
    assert!(!fourth.rpc_returned(), "their last waiter overtook dlock's");
    third.release().await.expect("release");
    fourth.wait_held().await;
    fourth.release().await;
}

/// Without the layout, dlock's keys are not their contenders: the reason the layout must
/// be asked for.
async fn dlocks_own_layout_does_not_exclude_them(foreign: Foreign) {
    let name = unique_name("own-layout");
    let locker = Locker::new(
        dlock_etcd::connect(&shared_etcd().url)
            .await
            .expect("connect"),
    );
    let guard = locker.acquire(name.as_str()).await.expect("acquire");
    let (them, _) = tokio::time::timeout(Duration::from_secs(30), Them::hold(foreign, &name, LONG))
        .await
        .expect("they take the lock at once beside dlock's own layout");
    them.release().await;
    guard.release().await.expect("release");
}

/// Two shells running `etcdctl lock NAME sh -c …` 8 times each, two Lock RPC sessions and
/// two dlock clients each increment one counter file 8 times under the lock, with a pause
/// between the read and the write: any overlap loses an increment, so the file must end at
/// 48.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_crowd_never_overlaps() {
    const ROUNDS: u32 = 8;
    let name = unique_name("crowd");
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("counter");
    std::fs::write(&file, "0").expect("the counter");
    let shells: Vec<_> = (0..2)
        .map(|_| etcdctl_count(endpoint(), &name, &file, ROUNDS))
        .collect();
    let increment = |file: &std::path::Path| {
        let value: u32 = std::fs::read_to_string(file)
            .expect("read")
            .trim()
            .parse()
            .expect("a number");
        value
    };
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let session = RpcSession::start(endpoint(), LONG).await;
        let (name, file) = (name.clone(), file.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let key = session.lock(&name).await;
                let value = increment(&file);
                tokio::time::sleep(Duration::from_millis(10)).await;
                std::fs::write(&file, (value + 1).to_string()).expect("write");
                session.unlock(&key).await;
            }
            session.close().await;
        }));
    }
    for _ in 0..2 {
        let locker = concurrency_layout().await;
        let (name, file) = (name.clone(), file.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = locker.acquire(name.as_str()).await.expect("acquire");
                let value = increment(&file);
                tokio::time::sleep(Duration::from_millis(10)).await;
                std::fs::write(&file, (value + 1).to_string()).expect("write");
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client");
    }
    for shell in shells {
        let output = tokio::task::spawn_blocking(move || shell.wait_with_output())
            .await
            .expect("joined")
            .expect("the etcdctl shell");
        assert!(output.status.success(), "etcdctl shell: {}", output.status);
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "counted");
    }
    let total = std::fs::read_to_string(&file).expect("read");
    assert_eq!(total.trim(), (6 * ROUNDS).to_string(), "lost increments");
}

/// Tasks of one dlock client contending for one name each get a key of their own lease
/// (Go's Mutex has one key per lease per name), so they exclude each other and stand in
/// the one line with everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_client_take_a_lease_each_for_one_name() {
    let name = unique_name("one-client");
    let locker = concurrency_layout().await;
    let first = locker.acquire(name.as_str()).await.expect("acquire");
    assert!(
        locker
            .try_acquire(name.as_str())
            .await
            .expect("asked")
            .is_none(),
        "a second task of the holder's client got the lock too"
    );
    let second = {
        let (locker, name) = (locker.clone(), name.clone());
        tokio::spawn(async move { locker.acquire(name.as_str()).await })
    };
    wait_for_waiters(&locker, &name, 1).await;
    let leases = backend(&locker).session_lease_ids().await;
    assert_eq!(
        leases.len(),
        2,
        "one lease per contender of the name: {leases:?}"
    );
    let first_key = dlock_etcd::fence::lock_key(&first).expect("key");
    first.release().await.expect("release");
    let second = second
        .await
        .expect("task")
        .expect("the second task is served");
    let second_key = dlock_etcd::fence::lock_key(&second).expect("key");
    assert_ne!(first_key, second_key, "two leases, two keys");
    for key in [&first_key, &second_key] {
        assert!(
            leases.iter().any(|id| *key == format!("{name}/{id:x}")),
            "{key} is not {name}/<one of {leases:x?}>"
        );
    }
    second.release().await.expect("release");
}

/// A dlock election in this layout is a Go `concurrency.Election`: `etcdctl elect --listen`
/// sees the dlock leader's key and value; a leader elected by `etcdctl elect NAME VALUE` is
/// dlock's leader with that value, and a dlock candidate waits until it resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_are_etcds_elections() {
    let name = unique_name("election");
    let locker = concurrency_layout().await;
    let election = locker.election(name.as_str()).expect("an election");
    let leadership = election
        .campaign("dlock at 10.0.0.7")
        .await
        .expect("campaign");
    let mut observer = etcdctl_observe(endpoint(), &name);
    // A thread of its own, not the runtime's blocking pool: if no leader ever shows (the
    // failure this checks for), the test fails at the timeout instead of waiting for it.
    let (sender, observed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let key = observer.line();
        let value = observer.line();
        drop(observer);
        let _ = sender.send((key, value));
    });
    let (key, value) = tokio::time::timeout(Duration::from_secs(30), observed)
        .await
        .expect("etcdctl elect --listen sees a leader")
        .expect("etcdctl observed");
    assert!(key.starts_with(&format!("{name}/")), "{key}");
    assert_eq!(value, "dlock at 10.0.0.7");
    leadership.resign().await.expect("resign");

    let mut them = EtcdctlLock::campaign(endpoint(), &name, "go at 10.0.0.8");
    let (them, their_key) = tokio::task::spawn_blocking(move || {
        let key = them.wait_held();
        (them, key)
    })
    .await
    .expect("etcdctl leads");
    let leader = election
        .leader()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(leader.value, "go at 10.0.0.8");
    assert_eq!(
        leader.term.map(|t| t.get()),
        Some(create_revision(&their_key).await as u64)
    );
    let candidate = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign("dlock again").await })
    };
    wait_for_waiters(&locker, &name, 1).await;
    assert!(
        !candidate.is_finished(),
        "dlock led beside etcdctl's leader"
    );
    tokio::task::spawn_blocking(move || them.release())
        .await
        .expect("etcdctl resigned");
    let leadership = candidate
        .await
        .expect("task")
        .expect("dlock leads after etcdctl resigned");
    let leader = election
        .leader()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(leader.value, "dlock again");
    leadership.resign().await.expect("resign");
}
