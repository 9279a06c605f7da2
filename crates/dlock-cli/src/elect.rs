//! `dlock elect`: campaign to lead an election, run a command while leading, resign when it
//! ends.

use crate::cli::ElectArgs;
use crate::connect::{connect, Overrides};
use crate::exit;
use crate::supervise::{rounded, run_command, Holding, Signals};

/// Campaigns, runs the command while leading, resigns; returns the exit code (as `run`'s).
pub async fn elect(args: ElectArgs) -> u8 {
    let name = match dlock::LockKey::new(args.name.as_str()) {
        Ok(name) => name,
        Err(error) => return exit::report(&error),
    };
    // The value is the leadership's owner description: checked by the same rules, up front.
    let overrides = Overrides {
        ttl: args.ttl,
        wait: args.wait,
        owner: args.value.as_deref(),
    };
    let (locker, options) = match connect(&args.url, overrides).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let election = match locker.election(&name) {
        Ok(election) => election,
        Err(error) => return exit::report(&error),
    };
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let value = options.effective_owner().to_owned();
    tracing::info!(name = %args.name, value, "campaigning");
    let asked = std::time::Instant::now();
    let leadership = tokio::select! {
        won = election.campaign_with(&value, &options) => match won {
            Ok(leadership) => leadership,
            Err(error) => return exit::report(&error),
        },
        code = signals.stopped() => return code,
    };
    let elected = std::time::Instant::now();
    tracing::info!(
        name = %args.name,
        term = %leadership.term(),
        waited = %rounded(elected - asked),
        "leading"
    );
    let code = run_command(
        &locker,
        Holding::Leadership(leadership),
        &args.command,
        args.grace,
        &mut signals,
    )
    .await;
    tracing::info!(name = %args.name, led_for = %rounded(elected.elapsed()), code, "done");
    code
}
