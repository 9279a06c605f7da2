//! `dlock`: run a command under a distributed lock, a semaphore's permit or an election's
//! leadership, follow an election, inspect and list locks, benchmark a backend.
//!
//! The interface is `crates/dlock-cli/CLI.md`; scripts depend on its options and exit codes.
#![deny(missing_docs)]

mod bench;
mod cli;
mod connect;
mod docs;
mod elect;
mod exit;
mod list;
mod observe;
mod run;
mod server_stats;
mod status;
mod supervise;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return exit::usage_error(error),
    };
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dlock: cannot start the async runtime: {error}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Elect(args) => elect::elect(args).await,
            Command::Observe(args) => observe::observe(args).await,
            Command::Status(args) => status::status(args).await,
            Command::List(args) => list::list(args).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Completions(args) => docs::completions(args.shell),
            Command::Manpage => docs::manpage(),
        }
    });
    // Background releases of dropped guards get a moment to reach the server.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}

/// Diagnostics go to stderr: `RUST_LOG` if set, else `-v` (info) or `-vv` (debug).
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
