//! `dlock bench`: the backend's latency and throughput, read against its own round trip.

use dlock::LockError;
use dlock_conformance::bench::{self, micros, Contended, Histogram};
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
    round_trip: Option<Histogram<u64>>,
    uncontended: Histogram<u64>,
    contended: Contended,
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

    let round_trip = bench::round_trips(&clients[0], SAMPLES).await?;
    let uncontended = bench::uncontended(&clients[0], &options, SAMPLES).await?;
    let progress = progress_bar(args);
    let started = Instant::now();
    let contended = bench::contended(&clients, &options, args.keys, args.duration, &|total| {
        progress.set_position(started.elapsed().as_millis() as u64);
        progress.set_message(format!("{total} acquisitions"));
    })
    .await;
    progress.finish_and_clear();
    Ok(Report {
        backend,
        clients: args.clients,
        keys: args.keys,
        round_trip,
        uncontended,
        contended: contended?,
    })
}

impl Report {
    fn rtt_us(&self) -> Option<f64> {
        self.round_trip
            .as_ref()
            .map(|h| h.value_at_quantile(0.5).max(1) as f64)
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
            self.contended.elapsed.as_secs_f64()
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
            ("acquire (contended)", &self.contended.acquire),
            ("handoff", &self.contended.handoff),
        ] {
            for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
                out += &line(&format!("{name} {label}"), times(h.value_at_quantile(q)));
            }
        }
        let (least, most) = self.contended.shares();
        out += &line(
            "acquisitions/s",
            format!("{:>10.0}", self.contended.acquisitions_per_second()),
        );
        out += &line(
            "handoffs/s",
            format!("{:>10.0}", self.contended.handoffs_per_second()),
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
        let run = &self.contended;
        let (least, most) = run.shares();
        serde_json::json!({
            "backend": self.backend,
            "clients": self.clients,
            "keys": self.keys,
            "duration_s": run.elapsed.as_secs_f64(),
            "round_trip": self.round_trip.as_ref().map(quantiles),
            "uncontended_acquire_release": quantiles(&self.uncontended),
            "acquire": quantiles(&run.acquire),
            "handoff": quantiles(&run.handoff),
            "acquisitions": run.acquisitions(),
            "acquisitions_per_s": run.acquisitions_per_second(),
            "handoffs_per_s": run.handoffs_per_second(),
            "per_client": run.per_client,
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
