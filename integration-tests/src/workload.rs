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

use dlock::{LockError, LockGuard, LockMode, LockOptions, Locker};
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
    /// What the clients take: the mutex, a permit, or the leadership.
    pub primitive: Primitive,
}

/// What workload clients contend for on their one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Primitive {
    /// The key's mutex (`acquire`).
    #[default]
    Mutex,
    /// One of this many permits of a semaphore. Its holders do not write to the fenced
    /// register: several hold at once, each with its own token.
    Semaphore(u32),
    /// The leadership of an election (`campaign` with the client's name, `resign`).
    Election,
}

impl Primitive {
    /// How many clients may be inside at once.
    pub fn capacity(self) -> usize {
        match self {
            Primitive::Semaphore(permits) => permits as usize,
            Primitive::Mutex | Primitive::Election => 1,
        }
    }

    /// The `dlock-workload` flags that ask for it.
    pub fn flags(self) -> Vec<String> {
        match self {
            Primitive::Mutex => Vec::new(),
            Primitive::Semaphore(permits) => vec!["--permits".to_owned(), permits.to_string()],
            Primitive::Election => vec!["--election".to_owned()],
        }
    }
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
            primitive: Primitive::Mutex,
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
        let guard = match take(locker, config, &options).await {
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
        history.record_checked(client, EventKind::Enter, Some(token), || {
            held_or_lost(guard.is_held()).to_owned()
        });
        tokio::time::sleep(config.hold).await;
        // As an application would: write only while the guard says the lock is ours, and
        // let fencing catch what the guard cannot know.
        let held = guard.is_held();
        if held && config.primitive.capacity() == 1 {
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
        let held = held_or_lost(held && guard.is_held());
        history.record(client, EventKind::Exit, Some(token), held);
        let released = match guard.release().await {
            Ok(()) => "ok".to_owned(),
            Err(LockError::NotHeld { .. }) => "not-held".to_owned(),
            Err(error) => error.to_string(),
        };
        history.record(client, EventKind::Released, Some(token), &released);
    }
}

/// The detail of `Enter` and `Exit`: what the guard says.
fn held_or_lost(held: bool) -> &'static str {
    if held {
        "held"
    } else {
        "lost"
    }
}

/// Takes what `config.primitive` names on `config.key`.
async fn take(
    locker: &Locker,
    config: &WorkloadConfig,
    options: &LockOptions,
) -> Result<Held, LockError> {
    let key = config.key.as_str();
    match config.primitive {
        Primitive::Mutex => locker.acquire_with(key, options).await.map(Held::Lock),
        Primitive::Semaphore(permits) => {
            let options = options.clone().mode(LockMode::Permit(permits));
            locker.acquire_with(key, &options).await.map(Held::Lock)
        }
        Primitive::Election => locker
            .election(key)?
            .campaign_with(&config.client, options)
            .await
            .map(Held::Leadership),
    }
}

/// A held lock, permit or leadership, as the loop uses it.
enum Held {
    Lock(LockGuard),
    Leadership(dlock::Leadership),
}

impl Held {
    fn guard(&self) -> &LockGuard {
        match self {
            Held::Lock(guard) => guard,
            Held::Leadership(leadership) => leadership.guard(),
        }
    }

    fn fencing_token(&self) -> dlock::FencingToken {
        self.guard().fencing_token()
    }

    fn is_held(&self) -> bool {
        self.guard().is_held()
    }

    async fn release(self) -> Result<(), LockError> {
        match self {
            Held::Lock(guard) => guard.release().await,
            Held::Leadership(leadership) => leadership.resign().await,
        }
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
