//! Issue 15's numbers: semaphores, read-write locks and elections on each local server,
//! beside the mutex on the same server in the same run, with the workloads of
//! `dlock_conformance::bench` (the ones `dlock bench` runs).
//!
//! ```text
//! cargo bench -p dlock-integration-tests --bench primitives                 # every backend
//! cargo bench -p dlock-integration-tests --bench primitives -- etcd         # one
//! DLOCK_BENCH_SECONDS=5 cargo bench …                                        # longer runs
//! ```
//!
//! For each backend, 8 clients on one key for a few seconds: the mutex, a semaphore of 2 and
//! of 4 permits, readers and writers (3 readers per writer), and the time an observer takes
//! to see a new leader and a resignation. It asserts nothing.

use std::time::Duration;

use dlock_conformance::bench::{self, micros, Contended, Histogram};
use dlock_core::{LockError, LockMode, LockOptions, Locker};
use dlock_test_servers::{EtcdServer, RedisServer, ZooKeeperServer};

const CLIENTS: usize = 8;
const OBSERVED_ROUNDS: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let seconds = std::env::var("DLOCK_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let run = Duration::from_secs(seconds);
    if wanted("memory") {
        report("memory (in-process)", "memory://", run).await;
    }
    if wanted("redis") {
        let server = RedisServer::start();
        report("Redis (one local redis-server 7)", &server.url(), run).await;
    }
    if wanted("etcd") {
        let server = EtcdServer::start();
        report("etcd (one local etcd 3.4)", &server.url(), run).await;
    }
    if wanted("zookeeper") {
        let server = ZooKeeperServer::start();
        report("ZooKeeper (one local ZooKeeper 3.8)", &server.url(), run).await;
    }
}

/// Every workload against `url`, printed as one table.
async fn report(title: &str, url: &str, run: Duration) {
    println!("\n== {title}, {CLIENTS} clients on one key, {run:?} each");
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>10} {:>14}",
        "workload", "acq/s", "handoffs/s", "p50 wait", "p99 wait", "shares"
    );
    let clients = clients(url).await;
    let run_id: u64 = rand::random();
    let workloads: [(&str, Vec<LockMode>); 4] = [
        ("mutex", vec![LockMode::Exclusive]),
        ("semaphore, 2 permits", vec![LockMode::Permit(2)]),
        ("semaphore, 4 permits", vec![LockMode::Permit(4)]),
        (
            "rw lock, 3 readers : 1 writer",
            vec![
                LockMode::Shared,
                LockMode::Shared,
                LockMode::Shared,
                LockMode::Exclusive,
            ],
        ),
    ];
    for (name, modes) in workloads {
        let options = LockOptions::default()
            .prefix(format!("bench-primitives/{run_id:016x}/{name}"))
            .wait_forever();
        match bench::contended_in_modes(&clients, &options, &modes, 1, run, &|_| {}).await {
            Ok(run) => print_contended(name, &run),
            Err(LockError::Unsupported { .. }) => println!("{name:<28} unsupported"),
            Err(error) => println!("{name:<28} failed: {error}"),
        }
    }
    let prefixed = |client: &Locker| {
        client
            .clone()
            .with_options(
                LockOptions::default().prefix(format!("bench-primitives/{run_id:016x}/election")),
            )
            .expect("options")
    };
    let (leader, observer) = (prefixed(&clients[0]), prefixed(&clients[1]));
    match bench::observed_leader_changes(&leader, &observer, OBSERVED_ROUNDS).await {
        Ok(seen) => print_observed(&seen),
        Err(error) => println!("{:<28} failed: {error}", "election, change observed"),
    }
}

async fn clients(url: &str) -> Vec<Locker> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(dlock::connect(url).await.expect("connect"));
    }
    clients
}

fn print_contended(name: &str, run: &Contended) {
    let (least, most) = run.shares();
    println!(
        "{name:<28} {:>10.0} {:>12.0} {:>10} {:>10} {:>6.2}–{:<6.2}",
        run.acquisitions_per_second(),
        run.handoffs_per_second(),
        micros(run.acquire.value_at_quantile(0.5)),
        micros(run.acquire.value_at_quantile(0.99)),
        least,
        most,
    );
}

fn print_observed(seen: &Histogram<u64>) {
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>10}",
        "election, change observed",
        "",
        "",
        micros(seen.value_at_quantile(0.5)),
        micros(seen.value_at_quantile(0.99)),
    );
}
