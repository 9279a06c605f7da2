//! Numbers for the etcd backend, against a private local etcd started for the run:
//! the raw transaction round trip, uncontended acquire+release as a multiple of it, handoff
//! latency and rate with 8 and 64 contending clients, and the cost of holding 10,000 keys.
//!
//! `cargo bench -p dlock-etcd --bench etcd_handoff` (prints a report; asserts nothing).

use std::time::Duration;

use dlock_conformance::bench::{self, Histogram};
use dlock_core::{LockOptions, Locker};
use dlock_etcd::etcd_client::{Txn, TxnOp};
use dlock_etcd::EtcdBackend;
use dlock_test_servers::EtcdServer;
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

    let locker = locker(&url).await;
    let uncontended = bench::uncontended(&locker, &options("uncontended"), UNCONTENDED)
        .await
        .expect("uncontended");
    println!(
        "acquire+release, uncontended: p50 {:>8.1} µs  p99 {:>8.1} µs  = {:.2} raw round trips",
        us(uncontended.value_at_quantile(0.5)),
        us(uncontended.value_at_quantile(0.99)),
        uncontended.value_at_quantile(0.5) as f64 / rtt_p50
    );

    for clients in [8, 64] {
        let mut backends = Vec::new();
        for _ in 0..clients {
            backends.push(dlock_etcd::connect(&url).await.expect("connect"));
        }
        let lockers: Vec<Locker> = backends.iter().cloned().map(Locker::new).collect();
        let options = options(&format!("contended-{clients}"));
        let run = bench::contended(&lockers, &options, 1, CONTENDED_FOR, &|_| {})
            .await
            .expect("contended");
        let watch_events: u64 = backends
            .iter()
            .map(EtcdBackend::watch_events_received)
            .sum();
        let (least, most) = run.shares();
        println!(
            "{clients:>2} clients: {:>6.0} handoffs/s  handoff p50 {:>8.1} µs ({:.2} RTT)  p99 {:>8.1} µs  \
             acquire wait p99 {:>8.1} µs  client shares {:.0}%…{:.0}% of even  watch events/handoff {:.2}",
            run.handoffs_per_second(),
            us(run.handoff.value_at_quantile(0.5)),
            run.handoff.value_at_quantile(0.5) as f64 / rtt_p50,
            us(run.handoff.value_at_quantile(0.99)),
            us(run.acquire.value_at_quantile(0.99)),
            least * 100.0,
            most * 100.0,
            watch_events as f64 / run.handoff.len().max(1) as f64,
        );
    }

    let many = bench::many_keys(&locker, &options("many"), MANY_KEYS)
        .await
        .expect("many keys");
    println!(
        "{MANY_KEYS} keys held by one client: taken in {:.2} s, client memory +{} KiB \
         ({:.1} KiB/lock), one renewal check of all = 1 request in {:.1} ms, \
         keepalive traffic = 1 lease keepalive per lease/3; released in {:.2} s",
        many.taken_in.as_secs_f64(),
        many.memory_kib,
        many.memory_kib as f64 / MANY_KEYS as f64,
        many.renewed_in.as_secs_f64() * 1e3,
        many.released_in.as_secs_f64(),
    );
    drop(server);
}

async fn locker(url: &str) -> Locker {
    Locker::new(dlock_etcd::connect(url).await.expect("connect"))
}

/// Round trips of a transaction with the one operation `op`.
async fn raw_round_trip(url: &str, op: TxnOp) -> Histogram<u64> {
    let backend = dlock_etcd::connect(url).await.expect("connect");
    let mut client = backend.client().clone();
    let mut histogram = bench::histogram();
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        client
            .txn(Txn::new().and_then([op.clone()]))
            .await
            .expect("txn");
        bench::record(&mut histogram, started.elapsed());
    }
    histogram
}

fn options(name: &str) -> LockOptions {
    LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix(format!("bench/{name}"))
}

fn us(micros: u64) -> f64 {
    micros as f64
}
