//! Numbers for the ZooKeeper backend, against one private local server, in one run:
//!
//! 1. uncontended acquire+release as a multiple of the raw operations it needs
//!    (create + getChildren + delete on the plain client) and of one round trip;
//! 2. handoffs with 8 and 64 contending clients: rate, latency, writes per handoff (from the
//!    server's zxid), fairness;
//! 3. one client holding 10,000 keys: time, memory, and what keeping them costs the server.
//!
//! `CARGO_TARGET_DIR=… cargo bench -p dlock-zookeeper --bench zookeeper`

use std::time::Duration;

use dlock_conformance::bench;
use dlock_core::{LockOptions, Locker};
use dlock_test_servers::ZooKeeperServer;
use dlock_zookeeper::zookeeper_client::{
    Acls, Client, CreateMode, LockOptions as RecipeOptions, LockPrefix,
};
use dlock_zookeeper::{ZooKeeperBackend, ZooKeeperConfig};
use futures::future::join_all;
use tokio::time::Instant;

const ROUNDS: usize = 2_000;
const CONTENTION_TIME: Duration = Duration::from_secs(4);
const MANY_KEYS: usize = 10_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = ZooKeeperServer::start();
    println!("ZooKeeper at {}", server.url());
    uncontended(&server).await;
    recipe_contention(&server, 8).await;
    for clients in [8, 64] {
        contention(&server, clients).await;
    }
    many_keys(&server).await;
}

async fn locker(server: &ZooKeeperServer, session: Duration, prefix: &str) -> Locker {
    let config = ZooKeeperConfig::from_url(&server.url())
        .expect("URL")
        .session_timeout(session);
    Locker::new(ZooKeeperBackend::connect(config).await.expect("connect"))
        .with_options(LockOptions::default().lease(session).prefix(prefix))
        .expect("options")
}

async fn uncontended(server: &ZooKeeperServer) {
    let raw = Client::connect(&server.address())
        .await
        .expect("raw client");
    raw.create(
        "/raw",
        b"",
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .ok();
    // Warm up both paths (JIT, connections).
    let locker = locker(server, Duration::from_secs(10), "bench-uncontended").await;
    for _ in 0..200 {
        raw.check_stat("/").await.expect("stat");
        locker
            .acquire("k")
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }

    let started = Instant::now();
    for _ in 0..ROUNDS {
        raw.check_stat("/").await.expect("stat");
    }
    let round_trip = started.elapsed() / ROUNDS as u32;

    let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let (_, sequence) = raw.create("/raw/n-", b"", &options).await.expect("create");
        raw.list_children("/raw").await.expect("children");
        raw.delete(&format!("/raw/n-{sequence}"), None)
            .await
            .expect("delete");
    }
    let raw_cycle = started.elapsed() / ROUNDS as u32;

    let started = Instant::now();
    for _ in 0..ROUNDS {
        let guard = locker.acquire("k").await.expect("acquire");
        guard.release().await.expect("release");
    }
    let locked = started.elapsed() / ROUNDS as u32;
    println!("\n== uncontended acquire+release ({ROUNDS} rounds)");
    println!("round trip (exists /):                 {round_trip:?}");
    println!("raw create+getChildren+delete:         {raw_cycle:?}");
    println!(
        "dlock acquire+release:                 {locked:?} = {:.2} x raw ops = {:.2} round trips",
        locked.as_secs_f64() / raw_cycle.as_secs_f64(),
        locked.as_secs_f64() / round_trip.as_secs_f64()
    );
}

async fn contention(server: &ZooKeeperServer, clients: usize) {
    let prefix = format!("bench-contention-{clients}");
    let mut lockers = Vec::new();
    for _ in 0..clients {
        lockers.push(locker(server, Duration::from_secs(20), &prefix).await);
    }
    let options = lockers[0].options().clone();
    // Warm-up round so every key node and session exists.
    bench::uncontended(&lockers[0], &options, 1)
        .await
        .expect("warm-up");
    let zxid_before = zxid(server);
    let run = bench::contended(&lockers, &options, 1, CONTENTION_TIME, &|_| {})
        .await
        .expect("contention");
    let writes = zxid(server) - zxid_before;
    let (least, most) = run.shares();
    println!("\n== {clients} clients contending for one key for {CONTENTION_TIME:?}");
    println!(
        "acquisitions: {} = {:.0}/s; writes (zxids) per acquisition: {:.2}",
        run.acquisitions(),
        run.acquisitions_per_second(),
        writes as f64 / run.acquisitions().max(1) as f64
    );
    println!(
        "handoff latency (release start -> next acquired): p50 {}, p99 {}, max {}",
        bench::micros(run.handoff.value_at_quantile(0.50)),
        bench::micros(run.handoff.value_at_quantile(0.99)),
        bench::micros(run.handoff.max())
    );
    println!(
        "per-client share: min {:.0}% max {:.0}% of even",
        100.0 * least,
        100.0 * most
    );
}

/// The baseline: `zookeeper-client`'s own lock recipe, same load, no fencing or loss signal.
async fn recipe_contention(server: &ZooKeeperServer, clients: usize) {
    let raw = Client::connect(&server.address())
        .await
        .expect("raw client");
    raw.mkdir(
        "/recipe/k",
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("recipe dir");
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(Client::connect(&server.address()).await.expect("client"));
    }
    let zxid_before = zxid(server);
    let stop = Instant::now() + CONTENTION_TIME;
    let mut tasks = Vec::new();
    for client in sessions {
        tasks.push(tokio::spawn(async move {
            let mut count = 0usize;
            while Instant::now() < stop {
                let prefix = LockPrefix::new_curator("/recipe/k", "lock-").expect("prefix");
                let lock = client
                    .lock(prefix, b"", RecipeOptions::new(Acls::anyone_all()))
                    .await
                    .expect("recipe lock");
                count += 1;
                let path = lock.lock_path().to_owned();
                std::mem::forget(lock.into_owned());
                client.delete(&path, None).await.expect("recipe unlock");
            }
            count
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.expect("client task"));
    }
    let total: usize = counts.iter().sum();
    let writes = zxid(server) - zxid_before;
    let even = total as f64 / clients as f64;
    println!("\n== baseline: zookeeper-client's recipe, {clients} clients, {CONTENTION_TIME:?}");
    println!(
        "acquisitions: {total} = {:.0}/s; writes (zxids) per acquisition: {:.2}; share min {:.0}% max {:.0}% of even",
        total as f64 / CONTENTION_TIME.as_secs_f64(),
        writes as f64 / total as f64,
        100.0 * *counts.iter().min().unwrap() as f64 / even,
        100.0 * *counts.iter().max().unwrap() as f64 / even,
    );
}

async fn many_keys(server: &ZooKeeperServer) {
    let session = Duration::from_secs(6);
    let locker = locker(server, session, "bench-many").await;
    // What the server receives from every session while this client holds nothing.
    let quiet = session * 2;
    let packets_before = packets_received(server);
    tokio::time::sleep(quiet).await;
    let idle_packets = packets_received(server) - packets_before;
    let rss_before = bench::rss_kib();
    let started = Instant::now();
    let mut guards = Vec::with_capacity(MANY_KEYS);
    for chunk in (0..MANY_KEYS).collect::<Vec<_>>().chunks(200) {
        let tries = chunk.iter().map(|i| locker.try_acquire(format!("k{i}")));
        for guard in join_all(tries).await {
            guards.push(guard.expect("try").expect("free"));
        }
    }
    let took = started.elapsed();
    let rss_held = bench::rss_kib();
    let packets_before = packets_received(server);
    tokio::time::sleep(quiet).await;
    let packets = packets_received(server) - packets_before;
    assert!(guards.iter().all(|g| g.is_held()));
    let started = Instant::now();
    join_all(guards.into_iter().map(|g| g.release())).await;
    let released = started.elapsed();
    println!("\n== one client holding {MANY_KEYS} keys (session {session:?})");
    println!(
        "acquired in {took:?} ({:.0}/s), released in {released:?}",
        MANY_KEYS as f64 / took.as_secs_f64()
    );
    println!(
        "client memory: {} KiB more ({} bytes per held lock)",
        rss_held.saturating_sub(rss_before),
        rss_held.saturating_sub(rss_before) * 1024 / MANY_KEYS as u64
    );
    println!(
        "server packets in {quiet:?} (all sessions): {idle_packets} holding nothing, \
         {packets} holding {MANY_KEYS} locks"
    );
}

/// The server's last zxid: one per write.
fn zxid(server: &ZooKeeperServer) -> u64 {
    let answer = server.command("srvr").expect("srvr");
    let hex = answer
        .lines()
        .find_map(|line| line.strip_prefix("Zxid: 0x"))
        .expect("a Zxid line");
    u64::from_str_radix(hex.trim(), 16).expect("hex zxid") & 0xffff_ffff
}

fn packets_received(server: &ZooKeeperServer) -> u64 {
    let answer = server.command("mntr").expect("mntr");
    answer
        .lines()
        .find_map(|line| line.strip_prefix("zk_packets_received"))
        .and_then(|value| value.trim().parse().ok())
        .expect("zk_packets_received")
}
