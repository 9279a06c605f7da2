//! Fault tests of the Redis backend, each on private `redis-server` processes it kills, pauses,
//! restarts or tampers with; plus regression tests named after known failures of other Redis
//! lock libraries, and password and TLS set-ups.

use std::time::Duration;

use dlock_core::{LockError, LockGuard, LockKey, LockOptions, Locker};
use dlock_redis::RedisBackend;
use dlock_test_servers::{Direction, FaultProxy, RedisServer};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

mod redis_support;
use redis_support::command;

const PROMPTLY: Duration = Duration::from_secs(5);
/// How long a network fault lasts when a test needs the client's own timeouts to run out
/// during it (tests that cut a link use 200 ms client timeouts).
const CUT: Duration = Duration::from_millis(1500);

fn options(test: &str, lease: Duration) -> LockOptions {
    let run: u64 = rand_u64();
    LockOptions::default()
        .lease(lease)
        .prefix(format!("redis-faults/{test}/{run:016x}"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish()
}

async fn locker(url: &str, options: &LockOptions) -> Locker {
    Locker::new(dlock_redis::connect(url).await.expect("connect"))
        .with_options(options.clone())
        .expect("options")
}

async fn backend(url: &str) -> RedisBackend {
    dlock_redis::connect(url).await.expect("connect")
}

fn address(server: &RedisServer) -> String {
    format!("127.0.0.1:{}", server.port())
}

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

/// A waiter task for `key`, returned once it stands in line.
async fn queued_waiter(
    locker: &Locker,
    key: &str,
    options: LockOptions,
) -> tokio::task::JoinHandle<Result<LockGuard, LockError>> {
    let (queued, in_line) = oneshot::channel();
    let (locker, key) = (locker.clone(), key.to_owned());
    let task =
        tokio::spawn(async move { locker.acquire_observed(key, &options, Some(queued)).await });
    timeout(PROMPTLY, in_line)
        .await
        .expect("the waiter queued in time")
        .expect("the waiter reported it queued");
    task
}

/// kill -9 of the server while a lock is held and a waiter waits: the holder's guard signals
/// loss, the waiter gets an error or the lock after the restart, nothing hangs past its
/// limit, and the token after the restart is still greater.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_while_held_and_waited_for() {
    let mut server = RedisServer::start();
    let lease = Duration::from_millis(900);
    let opts = options("kill9", lease);
    let (holder, waiter) = (
        locker(&server.url(), &opts).await,
        locker(&server.url(), &opts).await,
    );
    let guard = holder.acquire("k").await.expect("acquire");
    let token = guard.fencing_token();
    let wait = Duration::from_secs(4);
    let waiting = queued_waiter(&waiter, "k", opts.clone().wait(wait)).await;
    let started = Instant::now();
    server.process().kill();
    let reason = timeout(lease + PROMPTLY, guard.lost())
        .await
        .expect("the holder's guard signals loss");
    assert!(!guard.is_held(), "lost for {reason}");
    server.process().restart();
    let outcome = timeout(wait + PROMPTLY, waiting)
        .await
        .expect("the waiter returns within its wait limit")
        .expect("waiter task");
    assert!(started.elapsed() <= wait + dlock_core::WAIT_LIMIT_GRACE + Duration::from_secs(1));
    match outcome {
        Ok(next) => assert!(next.fencing_token() > token, "tokens grow across a restart"),
        Err(LockError::Connection { .. } | LockError::Timeout { .. }) => {
            let next = waiter
                .acquire_with("k", &opts.clone().wait(PROMPTLY))
                .await
                .expect("the lock is free after the restart");
            assert!(next.fencing_token() > token, "tokens grow across a restart");
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        guard.release().await,
        Err(LockError::NotHeld { .. })
    ));
}

/// A server that stops answering (SIGSTOP): the holder's guard signals loss on its own clock,
/// calls fail with typed errors within their limits, and all is well once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_gives_errors_not_hangs() {
    let mut server = RedisServer::start();
    let lease = Duration::from_millis(900);
    let opts = options("frozen", lease);
    let (holder, other) = (
        locker(&server.url(), &opts).await,
        locker(&server.url(), &opts).await,
    );
    let guard = holder.acquire("k").await.expect("acquire");
    server.process().pause();
    timeout(lease + PROMPTLY, guard.lost())
        .await
        .expect("loss signalled on the holder's own clock");
    let wait = Duration::from_millis(500);
    let started = Instant::now();
    let waited = other.acquire_with("k", &opts.clone().wait(wait)).await;
    assert!(
        matches!(
            waited,
            Err(LockError::Timeout { .. } | LockError::Connection { .. })
        ),
        "{waited:?}"
    );
    assert!(started.elapsed() <= wait + dlock_core::WAIT_LIMIT_GRACE + Duration::from_millis(100));
    let tried = timeout(PROMPTLY, other.try_acquire("k"))
        .await
        .expect("try_acquire gives up within the response timeout");
    assert!(
        matches!(tried, Err(LockError::Connection { .. })),
        "{tried:?}"
    );
    server.process().resume();
    // The holder's lease has run out on the server too: the lock is free again.
    let next = other
        .acquire_with("k", &opts.clone().wait(PROMPTLY))
        .await
        .expect("acquire after the server answers again");
    assert!(next.fencing_token() > guard.fencing_token());
}

/// Regression (Redisson-style watchdogs that re-create a lock after a restart): a holder whose
/// server restarted empty learns it lost the lock and never re-acquires it silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_no_silent_reacquire_after_server_restart() {
    let mut server = RedisServer::start();
    let lease = Duration::from_millis(900);
    let opts = options("restart", lease);
    let holder = locker(&server.url(), &opts).await;
    let guard = holder.acquire("k").await.expect("acquire");
    server.process().restart();
    timeout(lease + PROMPTLY, guard.lost())
        .await
        .expect("loss is signalled after the restart");
    let name = backend(&server.url())
        .await
        .lock_key_name(&opts.prefix, &key("k"));
    // Several keepalive intervals later the key is still absent: nobody re-created it.
    tokio::time::sleep(lease).await;
    assert_eq!(
        command(&address(&server), &["EXISTS", &name])
            .await
            .unwrap(),
        "0"
    );
    let other = locker(&server.url(), &opts).await;
    let next = other.try_acquire("k").await.expect("try").expect("free");
    assert!(next.fencing_token() > guard.fencing_token());
}

/// A holder whose renewals stop (its process paused) loses the lock to a waiter when the
/// lease ends, and its guard reports the loss once it runs again; its late release leaves the
/// new holder alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holder_loses_the_lock_to_a_waiter() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let opts = options("paused", lease);
    let url = server.url();
    // The holder lives in a runtime of its own on its own thread, so it can be frozen whole.
    let (to_holder, holder_gets) = std::sync::mpsc::channel::<()>();
    let (from_holder, holder_says) = tokio::sync::mpsc::unbounded_channel::<String>();
    let holder_opts = opts.clone();
    let holder_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let holder = locker(&url, &holder_opts).await;
            let guard = holder.acquire("k").await.expect("holder acquires");
            from_holder.send("held".into()).unwrap();
            // The pause: the whole runtime (keepalive included) stops for three leases.
            holder_gets.recv().unwrap();
            std::thread::sleep(lease * 3);
            let lost = timeout(PROMPTLY, guard.lost()).await;
            from_holder
                .send(format!("lost={} held={}", lost.is_ok(), guard.is_held()))
                .unwrap();
            let released = guard.release().await;
            from_holder
                .send(format!(
                    "release={}",
                    matches!(released, Err(LockError::NotHeld { .. }))
                ))
                .unwrap();
        });
    });
    let mut holder_says = holder_says;
    assert_eq!(holder_says.recv().await.unwrap(), "held");
    let waiter = locker(&server.url(), &opts).await;
    let waiting = queued_waiter(&waiter, "k", opts.clone().wait(PROMPTLY)).await;
    to_holder.send(()).unwrap();
    let guard = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiter gets the lock when the paused holder's lease ends")
        .unwrap()
        .expect("waiter acquires");
    assert_eq!(holder_says.recv().await.unwrap(), "lost=true held=false");
    assert_eq!(holder_says.recv().await.unwrap(), "release=true");
    assert!(
        guard.is_held(),
        "the late release left the new holder alone"
    );
    holder_thread.join().unwrap();
    guard.release().await.expect("release");
}

/// The lock's key deleted by someone else is noticed within a keepalive interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_key_is_noticed() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(900);
    let opts = options("deleted", lease);
    let holder = locker(&server.url(), &opts).await;
    let guard = holder.acquire("k").await.expect("acquire");
    let name = backend(&server.url())
        .await
        .lock_key_name(&opts.prefix, &key("k"));
    let deleted = Instant::now();
    command(&address(&server), &["DEL", &name]).await.unwrap();
    timeout(PROMPTLY, guard.lost()).await.expect("loss noticed");
    let noticed = deleted.elapsed();
    assert!(
        noticed <= lease / 3 + Duration::from_millis(300),
        "noticed after {noticed:?}"
    );
}

/// Regression (watchdogs that keep renewing after unlock): after release, no renewal of the
/// old holder touches the key, so a new holder's lease (without keepalive) runs out on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_renewal_does_not_outlive_release() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let opts = options("renew-after-release", lease);
    let (alice, bob) = (
        locker(&server.url(), &opts).await,
        locker(&server.url(), &opts).await,
    );
    let guard = alice.acquire("k").await.expect("alice acquires");
    guard.release().await.expect("alice releases");
    let bobs = bob
        .acquire_with("k", &opts.clone().keepalive(false))
        .await
        .expect("bob acquires");
    assert_eq!(alice.held_count(), 0, "alice renews nothing any more");
    let started = Instant::now();
    timeout(lease + PROMPTLY, bobs.lost())
        .await
        .expect("bob's lease runs out");
    assert!(
        started.elapsed() < lease * 2,
        "someone kept renewing bob's key"
    );
    let name = backend(&server.url())
        .await
        .lock_key_name(&opts.prefix, &key("k"));
    assert_eq!(
        command(&address(&server), &["EXISTS", &name])
            .await
            .unwrap(),
        "0"
    );
}

/// A key of another type where the lock should be is a typed error, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_of_another_type_is_a_typed_error() {
    let server = RedisServer::start();
    let opts = options("wrongtype", Duration::from_secs(10));
    let client = locker(&server.url(), &opts).await;
    let name = backend(&server.url())
        .await
        .lock_key_name(&opts.prefix, &key("k"));
    command(&address(&server), &["LPUSH", &name, "not a lock"])
        .await
        .unwrap();
    let tried = client.try_acquire("k").await;
    assert!(
        matches!(tried, Err(LockError::Protocol { .. })),
        "{tried:?}"
    );
    let waited = timeout(
        PROMPTLY,
        client.acquire_with("k", &opts.clone().wait(PROMPTLY)),
    )
    .await
    .expect("no hang");
    assert!(
        matches!(waited, Err(LockError::Protocol { .. })),
        "{waited:?}"
    );
    // The fence counter holding another type is a typed error too.
    command(&address(&server), &["DEL", &name]).await.unwrap();
    let fence = backend(&server.url())
        .await
        .fence_key_name(&opts.prefix, &key("k"));
    command(&address(&server), &["SADD", &fence, "x"])
        .await
        .unwrap();
    let tried = client.try_acquire("k").await;
    assert!(
        matches!(
            tried,
            Err(LockError::Backend { .. } | LockError::Protocol { .. })
        ),
        "{tried:?}"
    );
}

/// `SCRIPT FLUSH` between calls: the scripts are loaded again transparently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_scripts_are_reloaded() {
    let server = RedisServer::start();
    let opts = options("flush", Duration::from_secs(10));
    let client = locker(&server.url(), &opts).await;
    let guard = client.acquire("k").await.expect("acquire");
    command(&address(&server), &["SCRIPT", "FLUSH"])
        .await
        .unwrap();
    guard.extend(Duration::from_secs(10)).await.expect("extend");
    command(&address(&server), &["SCRIPT", "FLUSH"])
        .await
        .unwrap();
    guard.release().await.expect("release");
    command(&address(&server), &["SCRIPT", "FLUSH"])
        .await
        .unwrap();
    let again = client.try_acquire("k").await.expect("try").expect("free");
    again.release().await.expect("release");
}

/// Three independent instances for Redlock tests.
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
}

/// Redlock with one instance down still grants, releases and fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_with_one_instance_down_still_works() {
    let mut trio = Trio::start();
    let opts = options("redlock-one-down", Duration::from_secs(5));
    let client = locker(&trio.url(), &opts).await;
    trio.servers[2].process().kill();
    let mut last = None;
    for _ in 0..3 {
        let guard = client.acquire("k").await.expect("acquire with 2 of 3");
        if let Some(last) = last {
            assert!(guard.fencing_token() > last);
        }
        last = Some(guard.fencing_token());
        guard.release().await.expect("release");
    }
    // A client that starts while the instance is down works too.
    let late = locker(&trio.url(), &opts).await;
    late.try_acquire("k").await.expect("try").expect("free");
}

/// Redlock with two of three instances down fails cleanly and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_with_two_instances_down_fails_cleanly() {
    let mut trio = Trio::start();
    let opts = options("redlock-two-down", Duration::from_secs(5));
    let client = locker(&trio.url(), &opts).await;
    trio.servers[1].process().kill();
    trio.servers[2].process().kill();
    let tried = timeout(PROMPTLY, client.try_acquire("k"))
        .await
        .expect("no hang");
    assert!(
        matches!(tried, Err(LockError::Connection { .. })),
        "{tried:?}"
    );
    let wait = Duration::from_millis(500);
    let started = Instant::now();
    let waited = timeout(PROMPTLY, client.acquire_with("k", &opts.clone().wait(wait)))
        .await
        .expect("no hang");
    assert!(
        matches!(
            waited,
            Err(LockError::Connection { .. } | LockError::Timeout { .. })
        ),
        "{waited:?}"
    );
    assert!(started.elapsed() <= wait + dlock_core::WAIT_LIMIT_GRACE);
    let name = backend(&format!("redis://{}", address(&trio.servers[0])))
        .await
        .lock_key_name(&opts.prefix, &key("k"));
    assert_eq!(
        command(&address(&trio.servers[0]), &["EXISTS", &name])
            .await
            .unwrap(),
        "0",
        "a failed Redlock acquisition gives back its partial grant"
    );
}

/// Redlock fencing tokens only grow, even when the instances' counters start far apart and
/// the instance with the highest counter goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_tokens_grow_with_counters_far_apart() {
    let mut trio = Trio::start();
    let opts = options("redlock-fence", Duration::from_secs(5));
    let fence = backend(&trio.url())
        .await
        .fence_key_name(&opts.prefix, &key("k"));
    for (server, start) in trio.servers.iter().zip(["7", "9000000000000000", "42"]) {
        command(&address(server), &["SET", &fence, start])
            .await
            .unwrap();
    }
    let client = locker(&trio.url(), &opts).await;
    let first = client.acquire("k").await.expect("acquire");
    let first_token = first.fencing_token();
    // The token is the highest counter of the majority that granted first (the third
    // instance's grant may land later), and the instances of that majority that were behind
    // were raised to it before it was returned.
    let mut at_token = 0;
    for server in &trio.servers {
        let counter = command(&address(server), &["GET", &fence]).await.unwrap();
        if counter.parse::<u64>().unwrap() >= first_token.get() {
            at_token += 1;
        }
    }
    assert!(at_token >= 2, "only {at_token} instances at the token");
    first.release().await.expect("release");
    // The instance with the highest counter goes away: any majority left still overlaps
    // the one that issued the first token.
    trio.servers[1].process().kill();
    let second = client.acquire("k").await.expect("acquire with 2 of 3");
    assert!(second.fencing_token() > first_token);
    second.release().await.expect("release");
}

/// Regression (Redlock libraries whose failed extend released the lock): an extend that
/// misses the quorum fails and gives nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_extend_missing_quorum_releases_nothing() {
    let mut trio = Trio::start();
    let opts = options("redlock-extend", Duration::from_secs(10)).keepalive(false);
    let client = locker(&trio.url(), &opts).await;
    let guard = client.acquire("k").await.expect("acquire");
    trio.servers[1].process().kill();
    trio.servers[2].process().kill();
    let extended = timeout(PROMPTLY, guard.extend(Duration::from_secs(10)))
        .await
        .expect("no hang");
    assert!(
        matches!(extended, Err(LockError::Connection { .. })),
        "{extended:?}"
    );
    let name = backend(&format!("redis://{}", address(&trio.servers[0])))
        .await
        .lock_key_name(&opts.prefix, &key("k"));
    assert_eq!(
        command(&address(&trio.servers[0]), &["EXISTS", &name])
            .await
            .unwrap(),
        "1",
        "the failed extend kept the lock where it still was"
    );
    assert!(guard.is_held(), "a failed extend is not a loss by itself");
}

/// `redis://:password@…` against a server with `requirepass`, and an ACL user; wrong
/// credentials are a connection error that never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_auth() {
    let server = RedisServer::start_with(&[
        "--requirepass",
        "s3cret-pw",
        "--user",
        "locker",
        "on",
        ">l0cker-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    let opts = options("auth", Duration::from_secs(5));
    for url in [
        format!("redis://:s3cret-pw@127.0.0.1:{port}"),
        format!("redis://locker:l0cker-pw@127.0.0.1:{port}"),
    ] {
        let client = locker(&url, &opts).await;
        let guard = client.acquire("k").await.expect("acquire");
        assert!(!format!("{client:?}").contains("pw"), "{client:?}");
        guard.release().await.expect("release");
    }
    for (url, secret) in [
        (format!("redis://:wrong-pw@127.0.0.1:{port}"), "wrong-pw"),
        (format!("redis://locker:bad-pw@127.0.0.1:{port}"), "bad-pw"),
        (format!("redis://127.0.0.1:{port}"), "s3cret"),
    ] {
        let error = dlock_redis::connect(&url).await.unwrap_err();
        assert!(matches!(error, LockError::Connection { .. }), "{error:?}");
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// `rediss://` against a TLS-only server with a CA made for this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = |name: &str| dir.path().join(name).display().to_string();
    dlock_test_servers::make_test_certificates(dir.path());
    let server = RedisServer::start_with(&[
        "--tls-port",
        "0",
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-pw",
    ]);
    let url = format!(
        "rediss://:tls-pw@127.0.0.1:{}?tls_ca={}",
        server.port(),
        path("ca.pem")
    );
    let opts = options("tls", Duration::from_secs(5));
    let client = locker(&url, &opts).await;
    let guard = client.acquire("k").await.expect("acquire over TLS");
    let waiter = locker(&url, &opts).await;
    let waiting = queued_waiter(&waiter, "k", opts.clone().wait(PROMPTLY)).await;
    guard.release().await.expect("release");
    timeout(PROMPTLY, waiting)
        .await
        .expect("woken over TLS")
        .unwrap()
        .expect("acquire");
    // Plain text to the TLS port, or TLS without trusting the CA, is a connection error.
    let plain = dlock_redis::connect(&format!("redis://:tls-pw@127.0.0.1:{}", server.port())).await;
    assert!(
        matches!(plain, Err(LockError::Connection { .. })),
        "{plain:?}"
    );
    let untrusted =
        dlock_redis::connect(&format!("rediss://:tls-pw@127.0.0.1:{}", server.port())).await;
    assert!(
        matches!(untrusted, Err(LockError::Connection { .. })),
        "{untrusted:?}"
    );

    // A server that checks clients (`tls-auth-clients yes`): the client certificate of
    // `?cert=&key=`, named as for every backend, lets a client in; without it, `Connection`.
    let checking = RedisServer::start_with(&[
        "--tls-port",
        "0",
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "yes",
    ]);
    let base = format!(
        "rediss://127.0.0.1:{}?ca={}",
        checking.port(),
        path("ca.pem")
    );
    let with_cert = format!(
        "{base}&cert={}&key={}",
        path("client.pem"),
        path("client.key")
    );
    let client = locker(&with_cert, &opts).await;
    let guard = client
        .acquire("k")
        .await
        .expect("acquire with a client certificate");
    guard.release().await.expect("release");
    let without_cert = dlock_redis::connect(&base).await;
    assert!(
        matches!(without_cert, Err(LockError::Connection { .. })),
        "{without_cert:?}"
    );
}

/// Regression (found by the faults harness, `redlock_lost_replies`): a waiter cancelled while
/// its link is cut can neither leave the line nor stop listening then; once the link is
/// back, its client must still do both. Before, the client gave up at the first error, and
/// its connection, on reconnecting, listened again for the gone waiter (the unsubscribe was
/// never confirmed): its entry counted as alive, a release handed the lock to nobody, and
/// the next waiter waited out that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_waiter_cancelled_on_a_cut_link_leaves_the_line() {
    let server = RedisServer::start();
    let opts = options("cancel-cut", Duration::from_secs(20));
    let proxy = FaultProxy::start(address(&server));
    let alice = locker(&server.url(), &opts).await;
    // Short timeouts, so the clean-up's first tries fail well within the cut.
    let bob_url = format!(
        "redis://{}?connect_timeout=200ms&response_timeout=200ms",
        proxy.address()
    );
    let bob = locker(&bob_url, &opts).await;
    let carol = locker(&server.url(), &opts).await;
    let guard = alice.acquire("k").await.expect("alice acquires");
    let bobs = queued_waiter(&bob, "k", opts.clone()).await;
    let carols = queued_waiter(&carol, "k", opts.clone()).await;

    proxy.blackhole();
    let sent_before = proxy.received_bytes(Direction::ToServer);
    bobs.abort();
    let _ = bobs.await;
    // Bob's clean-up (leaving the line) is on the wire, held by the cut link…
    let deadline = Instant::now() + PROMPTLY;
    while proxy.received_bytes(Direction::ToServer) == sent_before {
        assert!(Instant::now() < deadline, "bob's client sent no clean-up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // …lost with the connection, and the link stays cut for several of bob's timeouts.
    proxy.reset();
    tokio::time::sleep(CUT).await;
    proxy.heal();
    let deadline = Instant::now() + PROMPTLY;
    while bob.backend().ping().await.is_err() {
        assert!(Instant::now() < deadline, "bob's client did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    guard.release().await.expect("alice releases");
    let carol_guard = timeout(PROMPTLY, carols)
        .await
        .expect("carol is served, not held up by bob's gone waiter")
        .unwrap()
        .expect("carol");
    carol_guard.release().await.expect("carol releases");
}
