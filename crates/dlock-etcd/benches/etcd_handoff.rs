//! Numbers for the etcd backend, against a private local etcd started for the run:
//! the raw transaction round trip, uncontended acquire+release as a multiple of it, handoff
//! latency and rate with 8 and 64 contending clients, and the cost of holding 10,000 keys.
//!
//! `cargo bench -p dlock-etcd --bench etcd_handoff` (prints a report; asserts nothing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_core::{LockBackend, LockOptions, Locker};
use dlock_etcd::etcd_client::{Txn, TxnOp};
use dlock_etcd::EtcdBackend;
use dlock_test_servers::EtcdServer;
use hdrhistogram::Histogram;
use tokio::time::Instant;

const ROUND_TRIPS: usize = 1_000;
const UNCONTENDED: usize = 1_000;
const CONTENDED_FOR: Duration = Duration::from_secs(4);
const MANY_KEYS: usize = 10_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = EtcdServer::start();
    let url = server.url();
    println!("etcd backend benchmark against {url} (local etcd, one member)");

    let read = raw_round_trip(&url, TxnOp::get("bench/rtt", None)).await;
    println!(
        "raw read txn round trip:     p50 {:>8.1} µs  p99 {:>8.1} µs",
        us(read.value_at_quantile(0.5)),
        us(read.value_at_quantile(0.99))
    );
    // Acquire, release and handoffs write (a raft commit with a WAL fsync): compare them
    // with the same kind of request.
    let rtt = raw_round_trip(&url, TxnOp::put("bench/rtt", "x", None)).await;
    println!(
        "raw write txn round trip:    p50 {:>8.1} µs  p99 {:>8.1} µs  (the unit below)",
        us(rtt.value_at_quantile(0.5)),
        us(rtt.value_at_quantile(0.99))
    );
    let rtt_p50 = rtt.value_at_quantile(0.5) as f64;

    let uncontended = uncontended(&url).await;
    println!(
        "acquire+release, uncontended: p50 {:>8.1} µs  p99 {:>8.1} µs  = {:.2} raw round trips",
        us(uncontended.value_at_quantile(0.5)),
        us(uncontended.value_at_quantile(0.99)),
        uncontended.value_at_quantile(0.5) as f64 / rtt_p50
    );

    for clients in [8, 64] {
        let run = contended(&url, clients).await;
        let shares: Vec<f64> = run
            .per_client
            .iter()
            .map(|n| *n as f64 * clients as f64 / run.handoffs as f64)
            .collect();
        let worst = shares.iter().map(|s| (s - 1.0).abs()).fold(0.0, f64::max);
        println!(
            "{clients:>2} clients: {:>6.0} handoffs/s  handoff p50 {:>8.1} µs ({:.2} RTT)  p99 {:>8.1} µs  \
             worst client share {:+.0}% of even  watch events/handoff {:.2}",
            run.handoffs as f64 / CONTENDED_FOR.as_secs_f64(),
            us(run.latency.value_at_quantile(0.5)),
            run.latency.value_at_quantile(0.5) as f64 / rtt_p50,
            us(run.latency.value_at_quantile(0.99)),
            worst * 100.0,
            run.watch_events as f64 / run.handoffs.max(1) as f64,
        );
    }

    many_keys(&url).await;
    drop(server);
}

/// Round trips of a transaction with the one operation `op`.
async fn raw_round_trip(url: &str, op: TxnOp) -> Histogram<u64> {
    let backend = dlock_etcd::connect(url).await.expect("connect");
    let mut client = backend.client().clone();
    let mut histogram = histogram();
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        client
            .txn(Txn::new().and_then([op.clone()]))
            .await
            .expect("txn");
        record(&mut histogram, started);
    }
    histogram
}

async fn uncontended(url: &str) -> Histogram<u64> {
    let locker = Locker::new(dlock_etcd::connect(url).await.expect("connect"))
        .with_options(options("uncontended"))
        .expect("options");
    let mut histogram = histogram();
    for _ in 0..UNCONTENDED {
        let started = Instant::now();
        let guard = locker.acquire("k").await.expect("acquire");
        guard.release().await.expect("release");
        record(&mut histogram, started);
    }
    histogram
}

struct Contended {
    handoffs: u64,
    latency: Histogram<u64>,
    per_client: Vec<u64>,
    watch_events: u64,
}

/// `clients` clients (each its own connection and session) take and give back one key in a
/// loop; a handoff is the time from a holder starting its release to the next holder
/// having the lock.
async fn contended(url: &str, clients: usize) -> Contended {
    let options = options(&format!("contended-{clients}"));
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let latency = Arc::new(Mutex::new(histogram()));
    let handoffs = Arc::new(AtomicU64::new(0));
    let mut backends = Vec::new();
    for _ in 0..clients {
        backends.push(dlock_etcd::connect(url).await.expect("connect"));
    }
    let end = Instant::now() + CONTENDED_FOR;
    let mut tasks = Vec::new();
    for backend in &backends {
        let locker = Locker::new(backend.clone())
            .with_options(options.clone())
            .expect("options");
        let (released_at, latency, handoffs) = (
            Arc::clone(&released_at),
            Arc::clone(&latency),
            Arc::clone(&handoffs),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = 0u64;
            while Instant::now() < end {
                let guard = locker.acquire("k").await.expect("acquire");
                if let Some(released) = released_at.lock().unwrap().take() {
                    record(&mut latency.lock().unwrap(), released);
                    handoffs.fetch_add(1, Ordering::Relaxed);
                    mine += 1;
                }
                *released_at.lock().unwrap() = Some(Instant::now());
                guard.release().await.expect("release");
            }
            mine
        }));
    }
    let mut per_client = Vec::new();
    for task in tasks {
        per_client.push(task.await.expect("client task"));
    }
    let latency = latency.lock().unwrap().clone();
    Contended {
        handoffs: handoffs.load(Ordering::Relaxed),
        latency,
        per_client,
        watch_events: backends
            .iter()
            .map(EtcdBackend::watch_events_received)
            .sum(),
    }
}

/// One client holding 10,000 keys: time to take them, memory, one renewal of all of them.
async fn many_keys(url: &str) {
    let backend = dlock_etcd::connect(url).await.expect("connect");
    let locker = Locker::new(backend.clone())
        .with_options(options("many"))
        .expect("options");
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut guards = Vec::with_capacity(MANY_KEYS);
    for chunk in (0..MANY_KEYS).collect::<Vec<_>>().chunks(200) {
        let taken = futures::future::join_all(
            chunk
                .iter()
                .map(|i| locker.try_acquire(format!("many/{i}"))),
        )
        .await;
        for guard in taken {
            guards.push(guard.expect("try").expect("free"));
        }
    }
    let took = started.elapsed();
    let rss_after = rss_kib();
    let leases: Vec<&dlock_core::Lease> = guards.iter().map(|g| g.lease()).collect();
    let started = Instant::now();
    let renewals = backend.renew(&leases).await.expect("renew");
    let renewed = started.elapsed();
    assert_eq!(renewals.len(), MANY_KEYS);
    println!(
        "{MANY_KEYS} keys held by one client: taken in {:.2} s, client memory +{} KiB \
         ({:.1} KiB/lock), one renewal check of all = 1 request in {:.1} ms, \
         keepalive traffic = 1 lease keepalive per lease/3",
        took.as_secs_f64(),
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / MANY_KEYS as f64,
        renewed.as_secs_f64() * 1e3,
    );
    let started = Instant::now();
    let mut released = Vec::with_capacity(MANY_KEYS);
    let mut guards = guards.into_iter().peekable();
    while guards.peek().is_some() {
        let chunk: Vec<_> = guards.by_ref().take(200).collect();
        released.extend(futures::future::join_all(chunk.into_iter().map(|g| g.release())).await);
    }
    let failed: Vec<_> = released.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        println!(
            "{} of {MANY_KEYS} releases failed, first: {first}",
            failed.len()
        );
    }
    println!("released them in {:.2} s", started.elapsed().as_secs_f64());
}

fn options(name: &str) -> LockOptions {
    LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix(format!("bench/{name}"))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

fn record(histogram: &mut Histogram<u64>, since: Instant) {
    let micros = since.elapsed().as_micros().clamp(1, 60_000_000) as u64;
    histogram.record(micros).expect("in range");
}

fn us(micros: u64) -> f64 {
    micros as f64
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}
