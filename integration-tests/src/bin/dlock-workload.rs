//! One workload client as its own OS process, so a nemesis can pause (SIGSTOP) and kill it:
//! loops acquire → enter → hold → fenced write → exit → release on one key, appending every
//! step to a shared history file, then (with `--stay`) stays connected and idle until its
//! standard input closes.
//!
//! ```text
//! dlock-workload --url URL --key KEY --client NAME --history FILE --register FILE
//!                [--hold 20ms] [--wait 30s] [--iterations N] [--duration 60s] [--stop-file PATH] [--stay]
//!                [--permits N | --election]
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dlock_test_servers::{run_client, EventKind, HistoryWriter, Primitive, WorkloadConfig};

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok((config, history, stay)) => run(config, history, stay),
        Err(message) => {
            eprintln!("dlock-workload: {message}");
            ExitCode::from(64)
        }
    }
}

fn run(config: WorkloadConfig, history: PathBuf, stay: bool) -> ExitCode {
    let history = match HistoryWriter::open(&history) {
        Ok(history) => history,
        Err(error) => {
            eprintln!("dlock-workload: {}: {error}", history.display());
            return ExitCode::from(74);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let give_up = tokio::time::Instant::now() + config.wait;
        let locker = loop {
            match dlock::connect(&config.url).await {
                Ok(locker) => break locker,
                Err(error) => {
                    history.record(&config.client, EventKind::Failed, None, &error.to_string());
                    if tokio::time::Instant::now() >= give_up {
                        return ExitCode::from(69);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let acquisitions = run_client(&locker, &config, &history).await;
        history.record(
            &config.client,
            EventKind::Idle,
            None,
            &format!("{acquisitions} acquisitions"),
        );
        if stay {
            // Idle but alive (and connected) until the test closes our stdin.
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
            })
            .await;
        }
        drop(locker);
        ExitCode::SUCCESS
    })
}

fn parse(args: Vec<String>) -> Result<(WorkloadConfig, PathBuf, bool), String> {
    let mut values = std::collections::HashMap::new();
    let mut stay = false;
    let mut election = false;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "--stay" {
            stay = true;
            continue;
        }
        if flag == "--election" {
            election = true;
            continue;
        }
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}"))?
            .to_owned();
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        values.insert(name, value);
    }
    let mut take = |name: &str| values.remove(name);
    let required = |value: Option<String>, name: &str| value.ok_or(format!("--{name} is required"));
    let duration = |value: String| {
        humantime::parse_duration(&value).map_err(|e| format!("bad duration {value:?}: {e}"))
    };
    let url = required(take("url"), "url")?;
    let key = required(take("key"), "key")?;
    let client = required(take("client"), "client")?;
    let history = PathBuf::from(required(take("history"), "history")?);
    let register = PathBuf::from(required(take("register"), "register")?);
    let mut config = WorkloadConfig::new(&url, &key, &client, &register);
    if let Some(hold) = take("hold") {
        config.hold = duration(hold)?;
    }
    if let Some(wait) = take("wait") {
        config.wait = duration(wait)?;
    }
    config.iterations = match take("iterations") {
        Some(n) => Some(n.parse().map_err(|e| format!("bad --iterations: {e}"))?),
        None => None,
    };
    if let Some(d) = take("duration") {
        config.duration = Some(duration(d)?);
    }
    config.stop_file = take("stop-file").map(PathBuf::from);
    config.primitive = match (take("permits"), election) {
        (None, false) => Primitive::Mutex,
        (None, true) => Primitive::Election,
        (Some(n), false) => {
            Primitive::Semaphore(n.parse().map_err(|e| format!("bad --permits: {e}"))?)
        }
        (Some(_), true) => return Err("--permits and --election exclude each other".to_owned()),
    };
    if config.iterations.is_none() && config.duration.is_none() && config.stop_file.is_none() {
        config.iterations = Some(20);
    }
    if let Some(unknown) = values.keys().next() {
        return Err(format!("unknown option --{unknown}"));
    }
    Ok((config, history, stay))
}
