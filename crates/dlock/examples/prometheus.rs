//! dlock's metrics exported to Prometheus: a few workers contend for locks (some give up,
//! one lock is lost), then the exposition a Prometheus server would scrape is printed.
//!
//! `cargo run -p dlock --example prometheus` prints it once. `cargo run -p dlock --example
//! prometheus -- 60` also serves it for 60 s at <http://127.0.0.1:9184/metrics>, on the
//! loopback interface only, for a local Prometheus to scrape. Set `DLOCK_URL` to run it on a
//! server instead (with that backend's feature on).
//!
//! The library records through the `metrics` facade and never picks an exporter: the
//! application installs one, as here, and every dlock metric (`dlock::metrics`) shows up.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dlock::{LockError, LockOptions, Locker};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Lock waits and holds range from a round trip to minutes.
const SECONDS_BUCKETS: &[f64] = &[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_for: Option<u64> = std::env::args().nth(1).map(|s| s.parse()).transpose()?;
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?;
    let handle = match serve_for {
        Some(_) => {
            // Loopback only: the example must not open a port to the network.
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, 9184));
            let (recorder, exporter) = builder.with_http_listener(address).build()?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)?;
            tokio::spawn(exporter);
            handle
        }
        None => builder.install_recorder()?,
    };
    dlock::metrics::describe();

    let url = std::env::var("DLOCK_URL").unwrap_or_else(|_| "memory://?lease=2s".to_owned());
    let locker = dlock::connect(&url).await?.with_prefix_label(true);
    work(&locker).await?;

    print!("{}", handle.render());
    if let Some(seconds) = serve_for {
        eprintln!("serving http://127.0.0.1:9184/metrics for {seconds} s");
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    Ok(())
}

/// Contention, timeouts and a lock that outlives its lease without keepalive.
async fn work(locker: &Locker) -> Result<(), LockError> {
    let mut workers = Vec::new();
    for worker in 0..4 {
        let locker = locker.clone();
        workers.push(tokio::spawn(async move {
            let options = locker.options().clone().wait(Duration::from_millis(150));
            for _ in 0..3 {
                match locker.acquire_with("reports/daily", &options).await {
                    Ok(guard) => {
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        guard.release().await?;
                    }
                    Err(LockError::Timeout { .. }) => eprintln!("worker {worker} gave up"),
                    Err(other) => return Err(other),
                }
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked")?;
    }
    // Without keepalive the lease runs out under the guard: one loss, `lease_expired`.
    let short = LockOptions::default()
        .lease(Duration::from_millis(100))
        .keepalive(false);
    let guard = locker.acquire_with("reports/weekly", &short).await?;
    let reason = guard.lost().await;
    eprintln!("reports/weekly lost: {reason}");
    Ok(())
}
