//! Benchmarks of the Redis backend against a private local `redis-server`, all in one run so
//! the numbers read as multiples of the same server's round trip.
//!
//! `cargo bench -p dlock-redis --bench redis_bench` prints:
//! 1. uncontended acquire+release latency against a raw `SET NX PX` + `DEL` pair;
//! 2. handoffs per second, handoff latency, per-client shares and Redis commands per handoff
//!    with 8 and with 64 clients on one key;
//! 3. renewing 10,000 held locks: calls, round trips and CPU time per renewal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock_conformance::bench;
use dlock_core::{LockBackend, LockOptions, Locker};
use dlock_test_servers::RedisServer;

const UNCONTENDED_ROUNDS: usize = 2_000;
const HANDOFF_RUN: Duration = Duration::from_secs(3);
const HELD_LOCKS: usize = 10_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let url = server.url();
    let others = [RedisServer::start(), RedisServer::start()];
    let redlock = format!(
        "redis+redlock://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        server.port(),
        others[0].port(),
        others[1].port()
    );
    runtime.block_on(async {
        let rtt = uncontended(&url, &redlock).await;
        println!("(one raw round trip: {rtt:.1} µs)");
        for clients in [8, 64] {
            handoffs(&url, clients).await;
        }
        renewals(&url).await;
        println!("== Redlock over 3 local instances");
        handoffs(&redlock, 8).await;
    });
    drop(others);
    drop(server);
}

/// Median of a sample, in microseconds.
fn median(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// Times raw `SET NX PX` + `DEL` pairs, single-instance and Redlock acquire+release,
/// interleaved round by round so that all three see the same machine load. Returns the median
/// raw round trip (one command), in microseconds.
async fn uncontended(url: &str, redlock: &str) -> f64 {
    let client = redis::Client::open(url).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let options = LockOptions::default().prefix("bench-uncontended");
    let single = Locker::new(dlock_redis::connect(url).await.expect("connect"))
        .with_options(options.clone())
        .expect("options");
    let quorum = Locker::new(dlock_redis::connect(redlock).await.expect("connect"))
        .with_options(options)
        .expect("options");
    let (mut raws, mut singles, mut quorums) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..UNCONTENDED_ROUNDS + 200 {
        let started = Instant::now();
        let _: Option<String> = redis::cmd("SET")
            .arg("bench:raw")
            .arg("me")
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut raw)
            .await
            .expect("SET");
        let _: i64 = redis::cmd("DEL")
            .arg("bench:raw")
            .query_async(&mut raw)
            .await
            .expect("DEL");
        let raw_pair = started.elapsed();
        let started = Instant::now();
        let guard = single.acquire("k").await.expect("acquire");
        guard.release().await.expect("release");
        let single_pair = started.elapsed();
        let started = Instant::now();
        let guard = quorum.acquire("k").await.expect("acquire");
        guard.release().await.expect("release");
        let quorum_pair = started.elapsed();
        if round >= 200 {
            raws.push(raw_pair);
            singles.push(single_pair);
            quorums.push(quorum_pair);
        }
    }
    let (raw_pair, single_pair, quorum_pair) = (
        median(&mut raws),
        median(&mut singles),
        median(&mut quorums),
    );
    println!("== uncontended acquire+release ({UNCONTENDED_ROUNDS} interleaved rounds, medians)");
    println!("raw SET NX PX + DEL:              {raw_pair:8.1} µs");
    println!(
        "dlock acquire + release:          {single_pair:8.1} µs = {:.2}× raw",
        single_pair / raw_pair
    );
    println!(
        "Redlock (3 instances) acq + rel:  {quorum_pair:8.1} µs = {:.2}× raw",
        quorum_pair / raw_pair
    );
    raw_pair / 2.0
}

async fn handoffs(url: &str, clients: usize) {
    let addresses = addresses(url);
    let rtt_us = round_trip(&addresses[0]).await;
    let options = LockOptions::default()
        .prefix(format!("bench-handoff-{clients}"))
        .lease(Duration::from_secs(10));
    let mut lockers = Vec::new();
    for _ in 0..clients {
        lockers.push(Locker::new(
            dlock_redis::connect(url).await.expect("connect"),
        ));
    }
    let stats_before = command_stats_all(&addresses).await;
    let run = bench::contended(&lockers, &options, 1, HANDOFF_RUN, &|_| {})
        .await
        .expect("handoffs");
    let stats_after = command_stats_all(&addresses).await;
    let by_command: Vec<(String, u64)> = stats_after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, calls)| {
            let before = stats_before.get(name).copied().unwrap_or(0);
            (name.clone(), calls - before)
        })
        .filter(|(_, calls)| *calls > 0)
        .collect();
    let commands: u64 = by_command.iter().map(|(_, calls)| calls).sum();
    let handoffs = run.handoff.len().max(1);
    let p50 = run.handoff.value_at_quantile(0.5) as f64;
    let p99 = run.handoff.value_at_quantile(0.99) as f64;
    let (least, most) = run.shares();
    println!("== {clients} clients on one key for {HANDOFF_RUN:?}");
    println!(
        "handoffs: {} ({:.0}/s), acquisitions: {}",
        run.handoff.len(),
        run.handoffs_per_second(),
        run.acquisitions()
    );
    println!(
        "handoff latency (release started → next holder has it): p50 {p50:.1} µs = {:.2} round trips of {rtt_us:.1} µs, p99 {p99:.1} µs",
        p50 / rtt_us
    );
    println!(
        "per-client share: {:.0}% … {:.0}% of even",
        least * 100.0,
        most * 100.0
    );
    println!(
        "Redis commands: {commands} = {:.2} per handoff; by command: {by_command:?}",
        commands as f64 / handoffs as f64,
    );
}

async fn renewals(url: &str) {
    let address = url.trim_start_matches("redis://").to_owned();
    let backend: Arc<dyn LockBackend> = Arc::new(dlock_redis::connect(url).await.expect("connect"));
    let options = LockOptions::default()
        .prefix("bench-renew")
        .lease(Duration::from_secs(60))
        .keepalive(false);
    let locker = Locker::from_backend(Arc::clone(&backend))
        .with_options(options)
        .expect("options");
    let mut guards = Vec::with_capacity(HELD_LOCKS);
    for chunk in (0..HELD_LOCKS).collect::<Vec<_>>().chunks(500) {
        let acquired =
            futures::future::join_all(chunk.iter().map(|i| locker.try_acquire(format!("k{i}"))))
                .await;
        for guard in acquired {
            guards.push(guard.expect("try").expect("free"));
        }
    }
    let leases: Vec<&dlock_core::Lease> = guards.iter().map(|g| g.lease()).collect();
    let before = command_stats(&address).await;
    let server_cpu_before = server_cpu(&address).await;
    let cpu_before = process_cpu();
    let rounds = 10;
    let mut times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let renewed = backend.renew(&leases).await.expect("renew");
        times.push(started.elapsed());
        assert_eq!(renewed.len(), HELD_LOCKS);
    }
    let client_cpu = process_cpu() - cpu_before;
    let server_cpu = server_cpu(&address).await - server_cpu_before;
    let after = command_stats(&address).await;
    let calls: u64 = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, calls)| calls - before.get(name).copied().unwrap_or(0))
        .sum();
    println!("== renewing {HELD_LOCKS} held locks ({rounds} renewals)");
    println!(
        "Redis commands per renewal: {:.1} (one script call = one round trip)",
        calls as f64 / rounds as f64
    );
    println!(
        "wall time per renewal: median {:.1} ms",
        median(&mut times) / 1000.0
    );
    println!(
        "CPU per renewal: client {:.1} ms, server {:.1} ms",
        client_cpu * 1000.0 / rounds as f64,
        server_cpu * 1000.0 / rounds as f64
    );
    for guard in guards {
        guard.abandon();
    }
}

/// The median of 500 raw `PING`s to `address`, in microseconds, measured now so handoff
/// latencies read against the load of the moment.
async fn round_trip(address: &str) -> f64 {
    let client = redis::Client::open(format!("redis://{address}")).expect("client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let mut samples = Vec::with_capacity(500);
    for _ in 0..500 {
        let started = Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .expect("PING");
        samples.push(started.elapsed());
    }
    median(&mut samples)
}

/// `host:port` of every instance in a `redis://` or `redis+redlock://` URL.
fn addresses(url: &str) -> Vec<String> {
    let hosts = url.split_once("://").map_or(url, |(_, rest)| rest);
    hosts.split(',').map(str::to_owned).collect()
}

/// `INFO commandstats` summed over several instances.
async fn command_stats_all(addresses: &[String]) -> HashMap<String, u64> {
    let mut total = HashMap::new();
    for address in addresses {
        for (name, calls) in command_stats(address).await {
            *total.entry(name).or_default() += calls;
        }
    }
    total
}

/// `INFO commandstats` as (command, calls).
async fn command_stats(address: &str) -> HashMap<String, u64> {
    let info = info(address, "commandstats").await;
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The server's used CPU (user + system), in seconds.
async fn server_cpu(address: &str) -> f64 {
    let info = info(address, "cpu").await;
    info.lines()
        .filter(|line| line.starts_with("used_cpu_sys:") || line.starts_with("used_cpu_user:"))
        .filter_map(|line| line.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

async fn info(address: &str, section: &str) -> String {
    let client = redis::Client::open(format!("redis://{address}")).expect("client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut connection)
        .await
        .expect("INFO")
}

/// This process's CPU time (user + system), in seconds, from /proc.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}
