//! `dlock run`: hold a lock while a command runs.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use dlock::{LockError, LockGuard, Locker};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::RunArgs;
use crate::exit;

/// Acquires the lock, runs the command, releases the lock; returns the exit code.
pub async fn run(args: RunArgs) -> u8 {
    let key = match dlock::LockKey::new(args.key.as_str()) {
        Ok(key) => key,
        Err(error) => return exit::report(&error),
    };
    let locker = match dlock::connect(&args.url).await {
        Ok(locker) => locker,
        Err(error) => return exit::report(&error),
    };
    // The URL's options stand unless the user gave the flag: a default must not override them.
    let mut options = locker.options().clone();
    if let Some(ttl) = args.ttl {
        options.lease = ttl;
    }
    if let Some(wait) = args.wait {
        options.wait = Some(wait);
    }
    if let Some(owner) = &args.owner {
        options.owner = Some(owner.clone());
    }
    if let Err(error) = options.validate() {
        return exit::report(&error);
    }
    if locker.capabilities().name == "memory" {
        eprintln!(
            "dlock: note: memory:// locks live inside this one dlock process and exclude nothing \
             across processes; use a server URL to lock across processes or machines"
        );
    }
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("dlock: cannot listen for signals: {error}");
            return exit::SOFTWARE;
        }
    };
    tracing::info!(key = %args.key, owner = options.effective_owner(), "waiting for the lock");
    let asked = std::time::Instant::now();
    let guard = tokio::select! {
        acquired = locker.acquire_with(&key, &options) => match acquired {
            Ok(guard) => guard,
            Err(error) => return exit::report(&error),
        },
        _ = interrupt.recv() => return 128 + libc::SIGINT as u8,
        _ = terminate.recv() => return 128 + libc::SIGTERM as u8,
    };
    let acquired = std::time::Instant::now();
    tracing::info!(
        key = %args.key,
        token = %guard.fencing_token(),
        waited = %rounded(acquired - asked),
        "lock acquired"
    );
    let child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("DLOCK_KEY", &args.key)
        .env("DLOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            eprintln!("dlock: cannot run {:?}: {error}", args.command[0]);
            let _ = release(&locker, guard).await;
            return exit::NOT_FOUND;
        }
    };
    let code = supervise(
        child,
        &locker,
        guard,
        args.grace,
        &mut interrupt,
        &mut terminate,
    )
    .await;
    tracing::info!(key = %args.key, held_for = %rounded(acquired.elapsed()), code, "done");
    code
}

/// Milliseconds: what an operator reads in a log line.
fn rounded(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64))
}

/// Waits for the child, passing signals on; terminates it if the lock is lost.
async fn supervise(
    mut child: Child,
    locker: &Locker,
    guard: LockGuard,
    grace: Duration,
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) -> u8 {
    let lost = guard.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => {
                // Read before releasing: a lease that ran out while the command finished (a
                // paused dlock, renewals cut off) means the command did not run under the lock
                // throughout, whatever its own status.
                let held_throughout = guard.is_held();
                let code = match status {
                    Ok(status) => code_of(status),
                    Err(error) => {
                        eprintln!("dlock: lost track of the command: {error}");
                        exit::SOFTWARE
                    }
                };
                let key = guard.key().to_string();
                let released = release(locker, guard).await;
                if !held_throughout || matches!(released, Err(LockError::NotHeld { .. })) {
                    eprintln!("dlock: lock `{key}` was lost before the command ended");
                    return exit::SOFTWARE;
                }
                return code;
            }
            _ = interrupt.recv() => send(&child, libc::SIGINT),
            _ = terminate.recv() => send(&child, libc::SIGTERM),
            reason = &mut lost => {
                eprintln!(
                    "dlock: lock `{}` lost ({reason}); terminating the command",
                    guard.key()
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

async fn release(locker: &Locker, guard: LockGuard) -> Result<(), LockError> {
    let key = guard.key().to_string();
    let released = guard.release().await;
    match &released {
        Ok(()) => tracing::info!(key, locks_held = locker.held_count(), "lock released"),
        Err(LockError::NotHeld { .. }) => {}
        Err(error) => eprintln!(
            "dlock: releasing `{key}` failed: {error}; it frees itself when its lease ends"
        ),
    }
    released
}

/// The child's exit code, or 128 + the signal that ended it.
fn code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => exit::SOFTWARE,
    }
}
