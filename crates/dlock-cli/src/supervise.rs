//! Running a command while a lock is held: the one place that starts the child, passes
//! dlock's signals on to it, stops it when the lock is lost, and releases the lock when it
//! ends. `dlock run` (a lock or a semaphore's permit) and `dlock elect` (a leadership) both
//! end here, so a command behaves the same under all of them.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use dlock::{Leadership, LockError, LockGuard, Locker};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit;

/// SIGINT and SIGTERM to dlock, listened for from before the lock is asked for, so that a
/// signal that arrives while waiting is not lost.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts listening; on failure, the message is printed and the exit code returned.
    pub fn listen() -> Result<Signals, u8> {
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(interrupt), Ok(terminate)) => Ok(Signals {
                interrupt,
                terminate,
            }),
            (Err(error), _) | (_, Err(error)) => {
                eprintln!("dlock: cannot listen for signals: {error}");
                Err(exit::SOFTWARE)
            }
        }
    }

    /// The next SIGINT or SIGTERM dlock receives.
    pub async fn next(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }

    /// Waits for the next signal and returns the exit code of a dlock it stopped before the
    /// command started (128 + the signal, as shells report it).
    pub async fn stopped(&mut self) -> u8 {
        128 + self.next().await as u8
    }
}

/// What the command runs under.
pub enum Holding {
    /// A lock, or one permit of a semaphore.
    Lock(LockGuard),
    /// The leadership of an election.
    Leadership(Leadership),
}

impl Holding {
    fn guard(&self) -> &LockGuard {
        match self {
            Holding::Lock(guard) => guard,
            Holding::Leadership(leadership) => leadership.guard(),
        }
    }

    /// What the messages call it.
    fn noun(&self) -> &'static str {
        match self {
            Holding::Lock(_) => "lock",
            Holding::Leadership(_) => "leadership of",
        }
    }

    async fn release(self, locker: &Locker) -> Result<(), LockError> {
        let key = self.guard().key().to_string();
        let noun = self.noun();
        let released = match self {
            Holding::Lock(guard) => guard.release().await,
            Holding::Leadership(leadership) => leadership.resign().await,
        };
        match &released {
            Ok(()) => tracing::info!(key, locks_held = locker.held_count(), "{noun} released"),
            Err(LockError::NotHeld { .. }) => {}
            Err(error) => eprintln!(
                "dlock: releasing {noun} `{key}` failed: {error}; it frees itself when its lease ends"
            ),
        }
        released
    }
}

/// Runs `command` with `DLOCK_KEY` and `DLOCK_FENCING_TOKEN` in its environment while
/// `holding` lasts, then releases it; returns dlock's exit code (see `CLI.md`, `dlock run`).
pub async fn run_command(
    locker: &Locker,
    holding: Holding,
    command: &[String],
    grace: Duration,
    signals: &mut Signals,
) -> u8 {
    let guard = holding.guard();
    let child = Command::new(&command[0])
        .args(&command[1..])
        .env("DLOCK_KEY", guard.key().as_str())
        .env("DLOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn();
    match child {
        Ok(child) => supervise(child, locker, holding, grace, signals).await,
        Err(error) => {
            eprintln!("dlock: cannot run {:?}: {error}", command[0]);
            let _ = holding.release(locker).await;
            exit::NOT_FOUND
        }
    }
}

/// Waits for the child, passing signals on; terminates it if the lock is lost.
async fn supervise(
    mut child: Child,
    locker: &Locker,
    holding: Holding,
    grace: Duration,
    signals: &mut Signals,
) -> u8 {
    let lost = holding.guard().lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => {
                // Read before releasing: a lease that ran out while the command finished (a
                // paused dlock, renewals cut off) means the command did not run under the lock
                // throughout, whatever its own status.
                let held_throughout = holding.guard().is_held();
                let code = match status {
                    Ok(status) => code_of(status),
                    Err(error) => {
                        eprintln!("dlock: lost track of the command: {error}");
                        exit::SOFTWARE
                    }
                };
                let key = holding.guard().key().to_string();
                let noun = holding.noun();
                let released = holding.release(locker).await;
                if !held_throughout || matches!(released, Err(LockError::NotHeld { .. })) {
                    eprintln!("dlock: {noun} `{key}` was lost before the command ended");
                    return exit::SOFTWARE;
                }
                return code;
            }
            signal = signals.next() => send(&child, signal),
            reason = &mut lost => {
                eprintln!(
                    "dlock: {} `{}` lost ({reason}); terminating the command",
                    holding.noun(),
                    holding.guard().key()
                );
                stop(&mut child, grace).await;
                return exit::SOFTWARE;
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    send(child, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

fn send(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// The child's exit code, or 128 + the signal that ended it.
fn code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => exit::SOFTWARE,
    }
}

/// Milliseconds: what an operator reads in a log line.
pub fn rounded(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64))
}
