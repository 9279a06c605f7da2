//! `dlock run`: hold a lock (or one permit of a semaphore) while a command runs.

use crate::cli::RunArgs;
use crate::connect::{connect, Overrides};
use crate::exit;
use crate::supervise::{rounded, run_command, Holding, Signals};

/// Acquires the lock, runs the command, releases the lock; returns the exit code.
pub async fn run(args: RunArgs) -> u8 {
    let key = match dlock::LockKey::new(args.key.as_str()) {
        Ok(key) => key,
        Err(error) => return exit::report(&error),
    };
    let overrides = Overrides {
        ttl: args.ttl,
        wait: args.wait,
        owner: args.owner.as_deref(),
    };
    let (locker, options) = match connect(&args.url, overrides).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    tracing::info!(
        key = %args.key,
        owner = options.effective_owner(),
        permits = args.permits,
        "waiting for the lock"
    );
    let asked = std::time::Instant::now();
    let acquiring = async {
        match args.permits {
            // A semaphore of one is still a semaphore: its own mode, not the key's mutex.
            Some(permits) => {
                let semaphore = locker.semaphore(&key, permits)?;
                semaphore.acquire_with(&options).await
            }
            None => locker.acquire_with(&key, &options).await,
        }
    };
    let guard = tokio::select! {
        acquired = acquiring => match acquired {
            Ok(guard) => guard,
            Err(error) => return exit::report(&error),
        },
        code = signals.stopped() => return code,
    };
    let acquired = std::time::Instant::now();
    tracing::info!(
        key = %args.key,
        token = %guard.fencing_token(),
        waited = %rounded(acquired - asked),
        "lock acquired"
    );
    let code = run_command(
        &locker,
        Holding::Lock(guard),
        &args.command,
        args.grace,
        &mut signals,
    )
    .await;
    tracing::info!(key = %args.key, held_for = %rounded(acquired.elapsed()), code, "done");
    code
}
