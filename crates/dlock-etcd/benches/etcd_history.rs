//! Does the etcd backend slow down as etcd's history grows? Uncontended acquire+release on
//! one lock, against a private local etcd that is never compacted: the rate when fresh, then
//! again after every batch of acquisitions, up to `DLOCK_BENCH_HISTORY` (default 50,000).
//! At the end, once more after `compact` to the current revision, for comparison.
//!
//! `DLOCK_BENCH_HISTORY=100000 cargo bench -p dlock-etcd --bench etcd_history` (prints a
//! report; asserts nothing).

use std::time::Duration;

use dlock_conformance::bench;
use dlock_core::{LockOptions, Locker};
use dlock_etcd::etcd_client::CompactionOptions;
use dlock_test_servers::EtcdServer;
use tokio::time::Instant;

/// Acquisitions per measurement.
const SAMPLE: usize = 2_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::var("DLOCK_BENCH_HISTORY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let checkpoints = 5;
    let server = EtcdServer::start();
    let url = server.url();
    println!("etcd history benchmark against {url} (local etcd, never compacted)");
    let backend = dlock_etcd::connect(&url).await.expect("connect");
    let locker = Locker::new(backend.clone());
    let options = LockOptions::default()
        .lease(Duration::from_secs(10))
        .prefix("bench/history");

    let fresh = rate(&locker, &options).await;
    println!("fresh:                     {fresh:>7.0} acquire+release/s");
    let mut done = SAMPLE;
    for checkpoint in 1..=checkpoints {
        let target = total * checkpoint / checkpoints;
        while done + SAMPLE < target {
            bench::uncontended(&locker, &options, SAMPLE)
                .await
                .expect("fill");
            done += SAMPLE;
        }
        let now = rate(&locker, &options).await;
        done += SAMPLE;
        println!(
            "after {done:>7} acquisitions: {now:>7.0} acquire+release/s ({:.2}x fresh)",
            now / fresh
        );
    }
    let mut client = backend.client().clone();
    let revision = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let compacted = rate(&locker, &options).await;
    println!(
        "after compaction:          {compacted:>7.0} acquire+release/s ({:.2}x fresh)",
        compacted / fresh
    );
    drop(server);
}

/// Acquire+release pairs per second over one sample.
async fn rate(locker: &Locker, options: &LockOptions) -> f64 {
    let started = Instant::now();
    bench::uncontended(locker, options, SAMPLE)
        .await
        .expect("uncontended");
    SAMPLE as f64 / started.elapsed().as_secs_f64()
}
