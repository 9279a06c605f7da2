//! dlock beside the Rust peers, on the same local servers, in one process run: the
//! benchmark of issue 14. For each server it prints the raw round trip (the floor), then for
//! dlock and each peer: uncontended acquire+release (ops/s and round trips per operation),
//! and with 8 and 64 clients on one key: handoffs/s, p50/p99/p99.9 acquire wait, the spread
//! of per-client shares, and what the servers did per acquisition (Redis: commands; etcd: gRPC
//! messages, raft writes and range reads; ZooKeeper: packets). Ratios are dlock over
//! the peer, measured in the same run, so machine load cancels out as far as it can.
//!
//! ```text
//! cargo bench -p dlock-integration-tests --features peers --bench peers            # all
//! cargo bench -p dlock-integration-tests --features peers --bench peers -- redis   # one server
//! DLOCK_PEERS_SECONDS=5 cargo bench …                                                # longer runs
//! DLOCK_PEERS_CLIENTS=2,8 cargo bench …                     # other numbers of contending clients
//! cargo bench … -- redis uncontended   # only the uncontended workload (to profile it)
//! DLOCK_PEERS_ROUNDS=20000 DLOCK_PEERS_REPEAT=3 cargo bench … -- redis uncontended
//! ```
//!
//! `DLOCK_PEERS_ROUNDS` sets the uncontended rounds per sample (500 by default; dlock and the
//! peer take turns, one acquire+release each) and `DLOCK_PEERS_REPEAT` how many samples are
//! taken (1): their spread shows how much of a difference is the machine's noise.
//!
//! Peers: `rslock` (single instance and Redlock; dev-dependency of this benchmark only,
//! behind the `peers` feature), `etcd-client`'s `lock()` (etcd's Lock RPC, on a lease per
//! client) and `zookeeper-client`'s lock recipe. It asserts nothing: speed targets live here,
//! never in tests.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dlock_conformance::bench::{histogram, micros, record, Histogram};
use dlock_conformance::server_stats::{sum_of, ServerStats};
use dlock_core::{LockOptions, Locker};
use dlock_test_servers::{EtcdServer, RedisServer, ZooKeeperServer};
use tokio::time::Instant;

const UNCONTENDED_ROUNDS: usize = 500;

/// A number from the environment variable `name`, or `default`.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
const RTT_SAMPLES: usize = 500;

/// How many clients contend in turn: `DLOCK_PEERS_CLIENTS` (comma-separated), or 8 and 64.
fn client_counts() -> Vec<usize> {
    std::env::var("DLOCK_PEERS_CLIENTS")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .filter(|counts: &Vec<usize>| !counts.is_empty())
        .unwrap_or_else(|| vec![8, 64])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a != "uncontended")
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let run = Duration::from_secs(env_number("DLOCK_PEERS_SECONDS", 3));
    if wanted("redis") {
        redis(run).await;
    }
    if wanted("redlock") {
        redlock(run).await;
    }
    if wanted("etcd") {
        etcd(run).await;
    }
    if wanted("zookeeper") {
        zookeeper(run).await;
    }
}

/// One client of a lock implementation, as the workloads use it.
#[async_trait]
trait Contender: Send + Sync + 'static {
    /// Waits for the lock on `key`; returns what releasing it needs.
    async fn acquire(&self, key: &str) -> Box<dyn Any + Send>;
    /// Releases what [`Contender::acquire`] returned.
    async fn release(&self, held: Box<dyn Any + Send>);
}

/// One implementation under test: its name and its clients.
struct Contenders {
    name: &'static str,
    clients: Vec<Arc<dyn Contender>>,
}

async fn redis(run: Duration) {
    let server = RedisServer::start();
    let url = server.url();
    println!("\n== Redis (one local redis-server 7)");
    let rtt = redis_rtt(&url).await;
    let peer = |n| rslock_clients(std::slice::from_ref(&url), n);
    let address = server.address();
    let counted = Counted::Redis(std::slice::from_ref(&address));
    compare(rtt, run, (&url, "redis"), peer, counted).await;
}

async fn redlock(run: Duration) {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let addresses: Vec<String> = servers.iter().map(|s| s.address()).collect();
    let dlock_url = format!("redis+redlock://{}", addresses.join(","));
    println!("\n== Redlock (three local redis-server 7)");
    let rtt = redis_rtt(&urls[0]).await;
    let peer = |n| rslock_clients(&urls, n);
    compare(
        rtt,
        run,
        (&dlock_url, "redlock"),
        peer,
        Counted::Redis(&addresses),
    )
    .await;
}

async fn etcd(run: Duration) {
    let server = EtcdServer::start();
    let address = server.address();
    println!("\n== etcd (one local etcd 3.4)");
    let rtt = etcd_rtt(&address).await;
    let peer = |n| etcd_lock_clients(&address, n);
    compare(
        rtt,
        run,
        (&server.url(), "etcd"),
        peer,
        Counted::Etcd(&address),
    )
    .await;
}

async fn zookeeper(run: Duration) {
    let server = ZooKeeperServer::start();
    let address = server.address();
    println!("\n== ZooKeeper (one local ZooKeeper 3.8)");
    let rtt = zookeeper_rtt(&address).await;
    let peer = |n| recipe_clients(&address, n);
    let counted = Counted::ZooKeeper(&address);
    compare(rtt, run, (&server.url(), "zookeeper"), peer, counted).await;
}

/// Runs every workload on dlock (`dlock`: its URL and name) and on `peer`'s clients and
/// prints them side by side, with what the servers (`counted`) did per acquisition.
async fn compare<P, F>(
    rtt: f64,
    run: Duration,
    dlock: (&str, &'static str),
    peer: P,
    counted: Counted<'_>,
) where
    P: Fn(usize) -> F,
    F: std::future::Future<Output = Contenders>,
{
    let peer = &peer;
    let make = |n| async move { vec![dlock_clients(dlock.0, n, dlock.1).await, peer(n).await] };
    println!("raw round trip (floor of one request): p50 {rtt:.1} µs");
    let singles = make(1).await;
    let rounds = env_number("DLOCK_PEERS_ROUNDS", UNCONTENDED_ROUNDS as u64) as usize;
    for _ in 0..env_number("DLOCK_PEERS_REPEAT", 1) {
        let (mut rates, mut medians) = (Vec::new(), Vec::new());
        let histograms = uncontended(&singles, rounds).await;
        for (one, histogram) in singles.iter().zip(histograms) {
            let p50 = histogram.value_at_quantile(0.5) as f64;
            let rate = 1e6 / histogram.mean();
            rates.push(rate);
            medians.push(p50);
            println!(
                "uncontended  {:<10} {:>8.0} ops/s  p50 {:>9}  {:.2} RTT per acquire+release",
                one.name,
                rate,
                micros(p50 as u64),
                p50 / rtt
            );
        }
        // The rate is the mean's, which a few stalls of a loaded machine move; the medians'
        // ratio is the steadier one.
        println!(
            "  ratio dlock / {}: {:.2}× (of the medians: {:.2}×)",
            singles[1].name,
            rates[0] / rates[1],
            medians[1] / medians[0]
        );
    }
    if std::env::args().any(|a| a == "uncontended") {
        return;
    }
    for clients in client_counts() {
        let all = make(clients).await;
        let mut handoffs = Vec::new();
        for one in &all {
            let before = counted.read().await;
            let result = contended(&one.clients, run).await;
            let per_acquisition = counted.per_acquisition(&before, result.acquisitions).await;
            handoffs.push(result.handoffs_per_second);
            println!(
                "{clients:>3} clients  {:<10} {:>8.0} handoffs/s  wait p50 {:>9} p99 {:>9} p99.9 {:>9}  shares {:.2}–{:.2}  {per_acquisition}",
                one.name,
                result.handoffs_per_second,
                micros(result.wait.value_at_quantile(0.5)),
                micros(result.wait.value_at_quantile(0.99)),
                micros(result.wait.value_at_quantile(0.999)),
                result.shares.0,
                result.shares.1,
            );
        }
        println!(
            "  ratio dlock / {}: {:.2}× handoffs",
            all[1].name,
            handoffs[0] / handoffs[1].max(f64::MIN_POSITIVE)
        );
    }
}

/// Acquire+release latencies of one client of each implementation on a key nobody else
/// wants. The implementations take turns, one acquire+release each (the first alternating),
/// so that both see the same machine: on a machine shared with other work the speed of the
/// loopback changes by several times within seconds, which made consecutive blocks of one
/// and then the other disagree by more than the difference measured.
async fn uncontended(sides: &[Contenders], rounds: usize) -> Vec<Histogram<u64>> {
    for side in sides {
        for _ in 0..50 {
            let held = side.clients[0].acquire("uncontended").await;
            side.clients[0].release(held).await;
        }
    }
    let mut histograms: Vec<Histogram<u64>> = sides.iter().map(|_| histogram()).collect();
    for round in 0..rounds {
        for turn in 0..sides.len() {
            let side = (turn + round) % sides.len();
            let client = &sides[side].clients[0];
            let started = Instant::now();
            let held = client.acquire("uncontended").await;
            client.release(held).await;
            record(&mut histograms[side], started.elapsed());
        }
    }
    histograms
}

/// What [`contended`] measured.
struct Contended {
    acquisitions: u64,
    handoffs_per_second: f64,
    wait: Histogram<u64>,
    /// The least and the most any client got, as fractions of an even share.
    shares: (f64, f64),
}

/// Every client loops acquire → release on one key for `run`.
async fn contended(clients: &[Arc<dyn Contender>], run: Duration) -> Contended {
    let key = format!("contended-{}", clients.len());
    let started = Instant::now();
    let deadline = started + run;
    let last_holder: Arc<Mutex<Option<usize>>> = Arc::default();
    let handoffs = Arc::new(Mutex::new(0u64));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(index, client)| {
            let (client, key) = (Arc::clone(client), key.clone());
            let (last_holder, handoffs) = (Arc::clone(&last_holder), Arc::clone(&handoffs));
            tokio::spawn(async move {
                let (mut wait, mut count) = (histogram(), 0u64);
                while Instant::now() < deadline {
                    let asked = Instant::now();
                    let held = client.acquire(&key).await;
                    record(&mut wait, asked.elapsed());
                    {
                        let mut last = last_holder.lock().unwrap();
                        if last.is_some_and(|last| last != index) {
                            *handoffs.lock().unwrap() += 1;
                        }
                        *last = Some(index);
                    }
                    client.release(held).await;
                    count += 1;
                }
                (wait, count)
            })
        })
        .collect();
    let mut wait = histogram();
    let mut per_client = Vec::new();
    for task in tasks {
        let (w, count) = task.await.expect("a contender panicked");
        wait.add(w).ok();
        per_client.push(count);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acquisitions: u64 = per_client.iter().sum();
    let even = acquisitions as f64 / per_client.len() as f64;
    let least = *per_client.iter().min().unwrap_or(&0) as f64;
    let most = *per_client.iter().max().unwrap_or(&0) as f64;
    let handoffs = *handoffs.lock().unwrap();
    Contended {
        acquisitions,
        handoffs_per_second: handoffs as f64 / elapsed,
        wait,
        shares: if even > 0.0 {
            (least / even, most / even)
        } else {
            (0.0, 0.0)
        },
    }
}

// ---- dlock ----

#[async_trait]
impl Contender for Locker {
    async fn acquire(&self, key: &str) -> Box<dyn Any + Send> {
        Box::new(Locker::acquire(self, key).await.expect("dlock acquire"))
    }

    async fn release(&self, held: Box<dyn Any + Send>) {
        let guard = held
            .downcast::<dlock_core::LockGuard>()
            .expect("a dlock guard");
        guard.release().await.expect("dlock release");
    }
}

/// `n` dlock clients of `url`, as users get them (keepalive on, default lease).
async fn dlock_clients(url: &str, n: usize, name: &'static str) -> Contenders {
    let prefix = format!("peers-{}-{n}", std::process::id());
    let mut clients: Vec<Arc<dyn Contender>> = Vec::new();
    for _ in 0..n {
        let locker = dlock::connect(url)
            .await
            .expect("dlock connect")
            .with_options(LockOptions::default().prefix(prefix.clone()))
            .expect("options");
        clients.push(Arc::new(locker));
    }
    Contenders { name, clients }
}

// ---- rslock ----

struct Rslock(rslock::LockManager);

#[async_trait]
impl Contender for Rslock {
    async fn acquire(&self, key: &str) -> Box<dyn Any + Send> {
        let lock = self
            .0
            .acquire_no_guard(key.as_bytes(), Duration::from_secs(30))
            .await
            .expect("rslock acquire");
        Box::new(lock)
    }

    async fn release(&self, held: Box<dyn Any + Send>) {
        let lock = held.downcast::<rslock::Lock>().expect("an rslock lock");
        self.0.unlock(&lock).await;
    }
}

async fn rslock_clients(urls: &[String], n: usize) -> Contenders {
    let clients = (0..n)
        .map(|_| Arc::new(Rslock(rslock::LockManager::new(urls.to_vec()))) as Arc<dyn Contender>)
        .collect();
    Contenders {
        name: "rslock",
        clients,
    }
}

async fn redis_rtt(url: &str) -> f64 {
    let client = redis::Client::open(url).expect("redis client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut samples = histogram();
    for _ in 0..RTT_SAMPLES {
        let started = Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .expect("PING");
        record(&mut samples, started.elapsed());
    }
    samples.value_at_quantile(0.5) as f64
}

/// The servers of a run whose own counters tell what a workload asked of them.
#[derive(Clone, Copy)]
enum Counted<'a> {
    /// Redis instances' addresses (`INFO`: commands processed).
    Redis(&'a [String]),
    /// An etcd member's client address (`/metrics`: gRPC messages received, raft proposals
    /// committed, key-value range reads).
    Etcd(&'a str),
    /// A ZooKeeper server's address (`mntr`: packets received).
    ZooKeeper(&'a str),
}

impl Counted<'_> {
    /// The counters now, named.
    async fn read(&self) -> Vec<(&'static str, u64)> {
        match *self {
            Counted::Redis(addresses) => {
                let mut commands = 0;
                for address in addresses {
                    let stats = ServerStats::Redis {
                        address: address.clone(),
                        auth: Vec::new(),
                    };
                    commands += stats.sample().await.requests.unwrap_or(0);
                }
                vec![("cmds", commands)]
            }
            Counted::Etcd(address) => {
                let stats = ServerStats::Etcd {
                    address: address.to_owned(),
                };
                let text = stats.text().await.unwrap_or_default();
                let sum = |prefix| sum_of(&text, prefix).unwrap_or(0);
                vec![
                    ("requests", sum("grpc_server_msg_received_total{")),
                    ("writes", sum("etcd_server_proposals_committed_total")),
                    ("ranges", sum("etcd_debugging_mvcc_range_total")),
                ]
            }
            Counted::ZooKeeper(address) => {
                let stats = ServerStats::ZooKeeper {
                    address: address.to_owned(),
                };
                vec![("requests", stats.sample().await.requests.unwrap_or(0))]
            }
        }
    }

    /// What the counters grew by since `before`, per acquisition, as printed.
    async fn per_acquisition(&self, before: &[(&'static str, u64)], acquisitions: u64) -> String {
        let after = self.read().await;
        let each = |(name, value): &(&str, u64), earlier: u64| {
            let per = value.saturating_sub(earlier) as f64 / acquisitions.max(1) as f64;
            format!("{per:.1} {name}/acq")
        };
        after
            .iter()
            .zip(before)
            .map(|(now, (_, earlier))| each(now, *earlier))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

// ---- etcd-client's lock() ----

struct EtcdLock {
    client: etcd_client::Client,
    lease: i64,
}

#[async_trait]
impl Contender for EtcdLock {
    async fn acquire(&self, key: &str) -> Box<dyn Any + Send> {
        let options = etcd_client::LockOptions::new().with_lease(self.lease);
        let response = self
            .client
            .clone()
            .lock(key, Some(options))
            .await
            .expect("etcd lock");
        Box::new(response.key().to_vec())
    }

    async fn release(&self, held: Box<dyn Any + Send>) {
        let key = held.downcast::<Vec<u8>>().expect("an etcd lock key");
        self.client.clone().unlock(*key).await.expect("etcd unlock");
    }
}

async fn etcd_lock_clients(address: &str, n: usize) -> Contenders {
    let mut clients: Vec<Arc<dyn Contender>> = Vec::new();
    for _ in 0..n {
        let mut client = etcd_client::Client::connect([address], None)
            .await
            .expect("etcd connect");
        // One lease per client, kept alive as a user of `lock()` must.
        let lease = client.lease_grant(30, None).await.expect("lease").id();
        let (mut keeper, stream) = client.lease_keep_alive(lease).await.expect("keepalive");
        // Runs for the rest of the benchmark, holding the stream the answers come back on.
        tokio::spawn(async move {
            let _stream = stream;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
            }
        });
        clients.push(Arc::new(EtcdLock { client, lease }));
    }
    Contenders {
        name: "etcd lock()",
        clients,
    }
}

async fn etcd_rtt(address: &str) -> f64 {
    let mut client = etcd_client::Client::connect([address], None)
        .await
        .expect("etcd connect");
    let mut samples = histogram();
    for _ in 0..RTT_SAMPLES {
        let started = Instant::now();
        client.get("peers/rtt", None).await.expect("get");
        record(&mut samples, started.elapsed());
    }
    samples.value_at_quantile(0.5) as f64
}

// ---- zookeeper-client's lock recipe ----

struct Recipe(zookeeper_client::Client);

#[async_trait]
impl Contender for Recipe {
    async fn acquire(&self, key: &str) -> Box<dyn Any + Send> {
        let dir = format!("/peers/{key}");
        let prefix = zookeeper_client::LockPrefix::new_curator(&dir, "lock-").expect("prefix");
        let options = zookeeper_client::LockOptions::new(zookeeper_client::Acls::anyone_all())
            .with_ancestor_options(
                zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .expect("options");
        let lock = self
            .0
            .lock(prefix, b"", options)
            .await
            .expect("recipe lock");
        Box::new(lock.into_owned())
    }

    async fn release(&self, held: Box<dyn Any + Send>) {
        // The recipe releases by dropping (a delete it does not wait for).
        drop(held);
    }
}

async fn recipe_clients(address: &str, n: usize) -> Contenders {
    let mut clients: Vec<Arc<dyn Contender>> = Vec::new();
    for _ in 0..n {
        let client = zookeeper_client::Client::connect(address)
            .await
            .expect("zookeeper connect");
        clients.push(Arc::new(Recipe(client)));
    }
    Contenders {
        name: "zk recipe",
        clients,
    }
}

async fn zookeeper_rtt(address: &str) -> f64 {
    let client = zookeeper_client::Client::connect(address)
        .await
        .expect("zookeeper connect");
    let mut samples = histogram();
    for _ in 0..RTT_SAMPLES {
        let started = Instant::now();
        client.check_stat("/").await.expect("stat");
        record(&mut samples, started.elapsed());
    }
    samples.value_at_quantile(0.5) as f64
}
