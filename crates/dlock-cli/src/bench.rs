//! `dlock bench`: the backend's latency and throughput, read against its own round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{LockError, Locker};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::cli::BenchArgs;
use crate::exit;

/// Round trips and uncontended acquisitions sampled before the contended phase.
const SAMPLES: usize = 200;

/// Runs the benchmark and prints its report.
pub async fn bench(args: BenchArgs) -> u8 {
    match measure(&args).await {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            0
        }
        Err(error) => exit::report(&error),
    }
}

/// Everything one run measured.
struct Report {
    backend: &'static str,
    clients: u32,
    keys: u32,
    elapsed: Duration,
    round_trip: Option<Histogram<u64>>,
    uncontended: Histogram<u64>,
    acquire: Histogram<u64>,
    handoff: Histogram<u64>,
    per_client: Vec<u64>,
}

async fn measure(args: &BenchArgs) -> Result<Report, LockError> {
    let mut clients = Vec::with_capacity(args.clients as usize);
    for _ in 0..args.clients {
        clients.push(dlock::connect(&args.url).await?);
    }
    let run: u64 = rand::random();
    let prefix = format!("{}/bench-{run:016x}", clients[0].options().prefix);
    let options = clients[0].options().clone().prefix(prefix).wait_forever();
    let backend = clients[0].capabilities().name;

    let round_trip = round_trips(&clients[0]).await?;
    let uncontended = uncontended(&clients[0], &options).await?;
    let (acquire, handoff, per_client, elapsed) = contended(&clients, &options, args).await?;
    Ok(Report {
        backend,
        clients: args.clients,
        keys: args.keys,
        elapsed,
        round_trip,
        uncontended,
        acquire,
        handoff,
        per_client,
    })
}

/// The server round trip the backend's lock operations travel, or `None` if it cannot say.
async fn round_trips(client: &Locker) -> Result<Option<Histogram<u64>>, LockError> {
    let mut histogram = histogram();
    for _ in 0..SAMPLES {
        match client.backend().ping().await {
            Ok(rtt) => record(&mut histogram, rtt),
            Err(LockError::Unsupported { .. }) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
    Ok(Some(histogram))
}

/// Acquire + release of a key nobody else wants.
async fn uncontended(
    client: &Locker,
    options: &dlock::LockOptions,
) -> Result<Histogram<u64>, LockError> {
    let mut histogram = histogram();
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let guard = client.acquire_with("uncontended", options).await?;
        guard.release().await?;
        record(&mut histogram, started.elapsed());
    }
    Ok(histogram)
}

type Contended = (Histogram<u64>, Histogram<u64>, Vec<u64>, Duration);

/// Every client loops acquire → release over the keys until the duration ends.
async fn contended(
    clients: &[Locker],
    options: &dlock::LockOptions,
    args: &BenchArgs,
) -> Result<Contended, LockError> {
    let started = Instant::now();
    let deadline = started + args.duration;
    let last_release: Arc<Mutex<HashMap<u32, (usize, Instant)>>> = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let progress = progress_bar(args);
    let mut tasks = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        let (client, options) = (client.clone(), options.clone());
        let (last_release, total) = (Arc::clone(&last_release), Arc::clone(&total));
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let (mut acquire, mut handoff, mut count) = (histogram(), histogram(), 0u64);
            let mut key = index as u32 % keys;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wait = options.clone().wait(deadline - now);
                let guard = match client.acquire_with(format!("k{key}"), &wait).await {
                    Ok(guard) => guard,
                    Err(LockError::Timeout { .. }) => break,
                    Err(error) => return Err(error),
                };
                let acquired = Instant::now();
                record(&mut acquire, acquired - now);
                if let Some((holder, released)) = last_release.lock().unwrap().get(&key) {
                    if *holder != index {
                        record(&mut handoff, acquired.saturating_duration_since(*released));
                    }
                }
                last_release
                    .lock()
                    .unwrap()
                    .insert(key, (index, Instant::now()));
                guard.release().await?;
                count += 1;
                total.fetch_add(1, Ordering::Relaxed);
                key = (key + 1) % keys;
            }
            Ok::<_, LockError>((acquire, handoff, count))
        }));
    }
    let ticker = tokio::spawn({
        let (progress, total) = (progress.clone(), Arc::clone(&total));
        async move {
            loop {
                progress.set_position(started.elapsed().as_millis() as u64);
                progress.set_message(format!("{} acquisitions", total.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let (mut acquire, mut handoff, mut per_client) = (histogram(), histogram(), Vec::new());
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok((a, h, count))) => {
                acquire.add(a).ok();
                handoff.add(h).ok();
                per_client.push(count);
            }
            Ok(Err(error)) => failure = Some(error),
            Err(panic) => failure = Some(LockError::backend("bench", panic.to_string())),
        }
    }
    ticker.abort();
    progress.finish_and_clear();
    match failure {
        Some(error) => Err(error),
        None => Ok((acquire, handoff, per_client, started.elapsed())),
    }
}

impl Report {
    fn acquisitions(&self) -> u64 {
        self.per_client.iter().sum()
    }

    fn rtt_us(&self) -> Option<f64> {
        self.round_trip
            .as_ref()
            .map(|h| h.value_at_quantile(0.5).max(1) as f64)
    }

    /// The least and most any client got, as fractions of an even share.
    fn fairness(&self) -> (f64, f64) {
        let even = self.acquisitions() as f64 / self.per_client.len() as f64;
        if even == 0.0 {
            return (0.0, 0.0);
        }
        let min = *self.per_client.iter().min().unwrap_or(&0) as f64;
        let max = *self.per_client.iter().max().unwrap_or(&0) as f64;
        (min / even, max / even)
    }

    fn to_table(&self) -> String {
        let rtt = self.rtt_us();
        let times = |us: u64| match rtt {
            Some(rtt) => format!("{:>10}  {:>7.1}×", micros(us), us as f64 / rtt),
            None => format!("{:>10}", micros(us)),
        };
        let mut out = format!(
            "dlock bench: {} backend, {} clients, {} keys, {:.1}s\n",
            self.backend,
            self.clients,
            self.keys,
            self.elapsed.as_secs_f64()
        );
        match &self.round_trip {
            Some(h) => out += &line("server round trip p50", times(h.value_at_quantile(0.5))),
            None => {
                out += &line(
                    "server round trip",
                    "(the backend cannot measure it)".into(),
                )
            }
        }
        for (name, h) in [
            ("uncontended acq+rel", &self.uncontended),
            ("acquire (contended)", &self.acquire),
            ("handoff", &self.handoff),
        ] {
            for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
                out += &line(&format!("{name} {label}"), times(h.value_at_quantile(q)));
            }
        }
        let seconds = self.elapsed.as_secs_f64();
        let (least, most) = self.fairness();
        out += &line(
            "acquisitions/s",
            format!("{:>10.0}", self.acquisitions() as f64 / seconds),
        );
        out += &line(
            "handoffs/s",
            format!("{:>10.0}", self.handoff.len() as f64 / seconds),
        );
        out += &line(
            "per-client share",
            format!("{:>4.0}% … {:.0}% of even", least * 100.0, most * 100.0),
        );
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let quantiles = |h: &Histogram<u64>| {
            serde_json::json!({
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999),
                "samples": h.len(),
                "p50_rtt_multiple": self.rtt_us().map(|rtt| h.value_at_quantile(0.5) as f64 / rtt),
            })
        };
        let seconds = self.elapsed.as_secs_f64();
        let (least, most) = self.fairness();
        serde_json::json!({
            "backend": self.backend,
            "clients": self.clients,
            "keys": self.keys,
            "duration_s": seconds,
            "round_trip": self.round_trip.as_ref().map(quantiles),
            "uncontended_acquire_release": quantiles(&self.uncontended),
            "acquire": quantiles(&self.acquire),
            "handoff": quantiles(&self.handoff),
            "acquisitions": self.acquisitions(),
            "acquisitions_per_s": self.acquisitions() as f64 / seconds,
            "handoffs_per_s": self.handoff.len() as f64 / seconds,
            "per_client": self.per_client,
            "per_client_share_min": least,
            "per_client_share_max": most,
        })
    }
}

/// One row of the table: a label column, then the value.
fn line(label: &str, value: String) -> String {
    format!("  {label:<28}{value}\n")
}

fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(args.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(elapsed.as_micros().max(1) as u64);
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}
