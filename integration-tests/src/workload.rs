//! The workload: clients that loop acquire → enter (unfenced log) → hold → fenced write →
//! exit → release on one key, recording every step in a [`history`](crate::history).
//!
//! Run it in several OS processes with the `dlock-workload` binary (so the nemesis can
//! pause and kill them), or as tasks of one process with [`run_client`] (the `memory://`
//! backend lives in one process).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dlock::{LockError, LockOptions, Locker};
use tokio::time::Instant;

use crate::history::{EventKind, HistoryWriter};

/// What one workload client does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The backend URL (its query sets the prefix, lease, session timeout…).
    pub url: String,
    /// The one key every client contends for.
    pub key: String,
    /// The client's name in the history.
    pub client: String,
    /// The register file fenced writes go to (shared by every client of the run).
    pub register: PathBuf,
    /// How long a holder stays inside before its fenced write.
    pub hold: Duration,
    /// How long one acquire may wait.
    pub wait: Duration,
    /// Stop after this many acquisitions…
    pub iterations: Option<u64>,
    /// …or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// …or once this file exists.
    pub stop_file: Option<PathBuf>,
}

impl WorkloadConfig {
    /// A client `client` on `url` contending for `key`, writing to `register`: holds 20 ms,
    /// waits up to 30 s per acquire, runs 20 rounds.
    pub fn new(url: &str, key: &str, client: &str, register: &Path) -> WorkloadConfig {
        WorkloadConfig {
            url: url.to_owned(),
            key: key.to_owned(),
            client: client.to_owned(),
            register: register.to_owned(),
            hold: Duration::from_millis(20),
            wait: Duration::from_secs(30),
            iterations: Some(20),
            duration: None,
            stop_file: None,
        }
    }
}

/// Connects to `config.url` (retrying while the server is unreachable, up to `config.wait`)
/// and runs [`run_client`]; connection failures are recorded as `failed` events.
pub async fn connect_and_run(config: &WorkloadConfig, history: &HistoryWriter) -> u64 {
    let give_up = Instant::now() + config.wait;
    let locker = loop {
        match dlock::connect(&config.url).await {
            Ok(locker) => break locker,
            Err(error) => {
                history.record(&config.client, EventKind::Failed, None, &error.to_string());
                if Instant::now() >= give_up {
                    return 0;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    run_client(&locker, config, history).await
}

/// Loops acquire → enter → hold → fenced write (skipped if the guard says the lock was lost)
/// → exit → release until the configured rounds, time or stop file say stop; returns how
/// many acquisitions it made.
pub async fn run_client(locker: &Locker, config: &WorkloadConfig, history: &HistoryWriter) -> u64 {
    let client = config.client.as_str();
    let started = Instant::now();
    let options: LockOptions = locker.options().clone().wait(config.wait);
    let mut acquisitions = 0;
    loop {
        if config.iterations.is_some_and(|n| acquisitions >= n)
            || config.duration.is_some_and(|d| started.elapsed() >= d)
            || config.stop_file.as_ref().is_some_and(|file| file.exists())
        {
            return acquisitions;
        }
        history.record(client, EventKind::Start, None, "");
        let guard = match locker.acquire_with(config.key.as_str(), &options).await {
            Ok(guard) => guard,
            Err(error) => {
                history.record(client, EventKind::Failed, None, &error.to_string());
                // A failing server is retried, but not in a hot loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        acquisitions += 1;
        let token = guard.fencing_token().get();
        history.record(client, EventKind::Acquired, Some(token), "");
        history.record(client, EventKind::Enter, Some(token), "");
        tokio::time::sleep(config.hold).await;
        // As an application would: write only while the guard says the lock is ours, and
        // let fencing catch what the guard cannot know.
        let held = guard.is_held();
        if held {
            let kind = match fenced_write(&config.register, token) {
                Ok(true) => EventKind::WriteOk,
                Ok(false) => EventKind::WriteRefused,
                Err(error) => {
                    history.record(client, EventKind::Failed, Some(token), &error.to_string());
                    EventKind::WriteRefused
                }
            };
            history.record(client, kind, Some(token), "");
        }
        let held = if held && guard.is_held() {
            "held"
        } else {
            "lost"
        };
        history.record(client, EventKind::Exit, Some(token), held);
        let released = match guard.release().await {
            Ok(()) => "ok".to_owned(),
            Err(LockError::NotHeld { .. }) => "not-held".to_owned(),
            Err(error) => error.to_string(),
        };
        history.record(client, EventKind::Released, Some(token), &released);
    }
}

/// Writes `token` to the register at `path` unless a larger token was written before: the
/// storage side of fencing. Returns whether the write was accepted. Processes serialise on
/// an exclusive `flock` of the file.
pub fn fenced_write(path: &Path, token: u64) -> std::io::Result<bool> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a descriptor we own; the lock goes with the descriptor when closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stored = String::new();
    file.read_to_string(&mut stored)?;
    let stored: u64 = stored.trim().parse().unwrap_or(0);
    if token < stored {
        return Ok(false);
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(token.to_string().as_bytes())?;
    Ok(true)
}
