//! `dlock bench`: the backend's latency and throughput, read against its own round trip.

use dlock::LockError;
use dlock_conformance::bench::{self, micros, Contended, Histogram, Hold};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::cli::BenchArgs;
use crate::exit;
use crate::server_stats;

/// Round trips and uncontended acquisitions sampled before the contended phase.
const SAMPLES: usize = 200;

/// Runs the benchmark (contended, or one client holding `--hold` locks) and prints its report.
pub async fn bench(args: BenchArgs) -> u8 {
    let printed = match args.hold {
        Some(count) => measure_hold(&args, count)
            .await
            .map(|report| (report.to_table(), report.to_json())),
        None => measure(&args)
            .await
            .map(|report| (report.to_table(), report.to_json())),
    };
    match printed {
        Ok((table, json)) => {
            if args.json {
                println!("{json}");
            } else {
                print!("{table}");
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

/// The options of one run: the client's own (as the URL gives them), under a prefix of the
/// run's own so that runs never meet.
fn run_options(client: &dlock::Locker) -> dlock::LockOptions {
    let run: u64 = rand::random();
    let prefix = format!("{}/bench-{run:016x}", client.options().prefix);
    client.options().clone().prefix(prefix)
}

async fn measure(args: &BenchArgs) -> Result<Report, LockError> {
    let mut clients = Vec::with_capacity(args.clients as usize);
    for _ in 0..args.clients {
        clients.push(dlock::connect(&args.url).await?);
    }
    let options = run_options(&clients[0]).wait_forever();
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

/// What `dlock bench --hold` measured.
struct HoldReport {
    backend: &'static str,
    keepalive: bool,
    round_trip: Option<Histogram<u64>>,
    server_measure: Option<&'static str>,
    hold: Hold,
}

async fn measure_hold(args: &BenchArgs, count: u32) -> Result<HoldReport, LockError> {
    let client = dlock::connect(&args.url).await?;
    let options = run_options(&client);
    let backend = client.capabilities().name;
    // A backend whose lease is its session renews every lock whatever the option says.
    let keepalive = options.keepalive || client.capabilities().session_lease;
    let round_trip = bench::round_trips(&client, SAMPLES).await?;
    let stats = server_stats::for_url(&args.url);
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    progress.set_message(format!(
        "taking {count} locks, holding them for {}",
        humantime::format_duration(args.duration)
    ));
    progress.enable_steady_tick(std::time::Duration::from_millis(100));
    let hold = bench::hold(&client, &options, count as usize, args.duration, || {
        stats.sample()
    })
    .await;
    progress.finish_and_clear();
    let hold = hold?;
    let server_measure = hold.server_bytes_per_lock().and(stats.memory_measure());
    Ok(HoldReport {
        backend,
        keepalive,
        round_trip,
        server_measure,
        hold,
    })
}

impl HoldReport {
    fn to_table(&self) -> String {
        let hold = &self.hold;
        let seconds = |d: std::time::Duration| micros(d.as_micros() as u64);
        let mut out = format!(
            "dlock bench: {} backend, one client holding {} locks for {:.1}s ({})\n",
            self.backend,
            hold.count,
            hold.held_for.as_secs_f64(),
            if self.keepalive {
                format!(
                    "renewed every {}",
                    humantime::format_duration(hold.keepalive_interval)
                )
            } else {
                "keepalive off".to_string()
            }
        );
        if let Some(h) = &self.round_trip {
            out += &line("server round trip p50", micros(h.value_at_quantile(0.5)));
        }
        out += &line(
            "take all",
            format!(
                "{} ({:.0} locks/s)",
                seconds(hold.taken_in),
                hold.count as f64 / hold.taken_in.as_secs_f64()
            ),
        );
        if let Some(requests) = hold.requests_per_acquire() {
            out += &line("server requests per lock", format!("{requests:.1}"));
        }
        out += &line(
            "client memory per lock",
            format!(
                "{:.0} B (RSS +{} KiB, /proc/self/statm)",
                hold.rss_bytes_per_lock(),
                hold.rss_kib.1.saturating_sub(hold.rss_kib.0)
            ),
        );
        if let (Some(bytes), Some(measure)) = (hold.server_bytes_per_lock(), self.server_measure) {
            out += &line(
                "server memory per lock",
                format!("{bytes:.0} B ({measure})"),
            );
        }
        let requests = hold
            .requests_per_round()
            .map_or(String::new(), |r| format!(", {r} server requests"));
        out += &line(
            "one renewal round of all",
            format!("{}{requests}", seconds(hold.renewal_round)),
        );
        if let Some(requests) = hold.requests_per_interval() {
            out += &line("keepalive requests/interval", format!("{requests:.1}"));
        }
        out += &line("lost while held", hold.lost.to_string());
        out += &line("lost at release", hold.lost_at_release.to_string());
        out += &line("release all", seconds(hold.released_in));
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let hold = &self.hold;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        serde_json::json!({
            "backend": self.backend,
            "mode": "hold",
            "locks": hold.count,
            "keepalive": self.keepalive,
            "keepalive_interval_ms": ms(hold.keepalive_interval),
            "held_s": hold.held_for.as_secs_f64(),
            "round_trip_p50_us": self.round_trip.as_ref().map(|h| h.value_at_quantile(0.5)),
            "take_all_ms": ms(hold.taken_in),
            "locks_per_s": hold.count as f64 / hold.taken_in.as_secs_f64(),
            "server_requests_per_lock": hold.requests_per_acquire(),
            "rss_kib_before": hold.rss_kib.0,
            "rss_kib_held": hold.rss_kib.1,
            "client_bytes_per_lock": hold.rss_bytes_per_lock(),
            "server_bytes_per_lock": hold.server_bytes_per_lock(),
            "server_memory_measure": self.server_measure,
            "renewal_round_ms": ms(hold.renewal_round),
            "renewal_round_server_requests": hold.requests_per_round(),
            "keepalive_server_requests_per_interval": hold.requests_per_interval(),
            "lost_while_held": hold.lost,
            "lost_at_release": hold.lost_at_release,
            "release_all_ms": ms(hold.released_in),
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
