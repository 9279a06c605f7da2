//! The command line, exactly as `crates/dlock-cli/CLI.md` describes it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Run commands under locks that hold across machines.
#[derive(Debug, Parser)]
#[command(name = "dlock", version, about, propagate_version = true)]
pub struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire KEY, run COMMAND while holding it, release it when COMMAND ends.
    Run(RunArgs),
    /// Campaign to lead NAME, run COMMAND while leading, resign when COMMAND ends.
    Elect(ElectArgs),
    /// Print NAME's leader, then one line per leader change.
    Observe(ObserveArgs),
    /// Print whether KEY is held (exit 0) or free (exit 1), by whom, since when.
    Status(StatusArgs),
    /// List the locks held or waited for, with their holders, under a key prefix.
    List(ListArgs),
    /// Measure a backend: latency, handoffs and throughput under contention.
    Bench(BenchArgs),
    /// Print a shell completion script (e.g. `dlock completions bash > /etc/bash_completion.d/dlock`).
    Completions(CompletionsArgs),
    /// Print the man page, in roff (e.g. `dlock manpage > /usr/local/share/man/man1/dlock.1`).
    Manpage,
}

/// `dlock completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `dlock run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Backend URL (memory://, redis://, rediss://, redis+redlock://, zookeeper://, zookeepers://, etcd://…).
    #[arg(long, env = "DLOCK_URL", hide_env_values = true)]
    pub url: String,
    /// The lock's key.
    #[arg(long)]
    pub key: String,
    /// Lease length, renewed in the background while COMMAND runs [default: the URL's
    /// `lease`, else 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// How long to wait for the lock; 0 tries once [default: the URL's `wait`, else wait
    /// forever].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// After the lock is lost: SIGTERM to COMMAND, then SIGKILL after this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Who holds the lock, as `dlock status` shows it (at most 256 printable bytes, no
    /// secrets) [default: the URL's `owner`, else host/pid/dlock].
    #[arg(long)]
    pub owner: Option<String>,
    /// Hold one of N permits of KEY (a semaphore: at most N commands at once, every
    /// `dlock run` on KEY giving the same N) instead of KEY's lock [default: the lock].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=dlock::MAX_PERMITS as i64))]
    pub permits: Option<u32>,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `dlock elect`.
#[derive(Debug, Args)]
pub struct ElectArgs {
    /// Backend URL.
    #[arg(long, env = "DLOCK_URL", hide_env_values = true)]
    pub url: String,
    /// The election's name.
    #[arg(long)]
    pub name: String,
    /// The value this candidate publishes while it leads, as `dlock observe` shows it (at
    /// most 256 printable bytes, no secrets) [default: the URL's `owner`, else
    /// host/pid/dlock].
    #[arg(long)]
    pub value: Option<String>,
    /// Lease of the leadership, renewed in the background while COMMAND runs [default: the
    /// URL's `lease`, else 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// How long to campaign; 0 leads only if nobody leads or campaigns [default: the URL's
    /// `wait`, else wait forever].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// After leadership is lost: SIGTERM to COMMAND, then SIGKILL after this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `dlock observe`.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Backend URL.
    #[arg(long, env = "DLOCK_URL", hide_env_values = true)]
    pub url: String,
    /// The election's name.
    #[arg(long)]
    pub name: String,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many lines [default: until interrupted].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// `dlock status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Backend URL.
    #[arg(long, env = "DLOCK_URL", hide_env_values = true)]
    pub url: String,
    /// The lock's key.
    #[arg(long)]
    pub key: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `dlock list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Backend URL.
    #[arg(long, env = "DLOCK_URL", hide_env_values = true)]
    pub url: String,
    /// Only keys that start with this (plain text) [default: all keys].
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// At most this many locks, in key order.
    #[arg(long, default_value_t = dlock::DEFAULT_LIST_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..=dlock::MAX_LIST_LIMIT as u64))]
    pub limit: u64,
    /// Start after this key: the `next` of a previous page.
    #[arg(long)]
    pub after: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `dlock bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backend URL.
    #[arg(long, env = "DLOCK_URL", hide_env_values = true)]
    pub url: String,
    /// Concurrent clients, each with its own connection or session.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Keys the clients contend for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keys: u32,
    /// Instead of contending: one client takes N distinct keys (keepalive as the URL says,
    /// on by default), holds them for --duration, and reports the time to take them all,
    /// its memory per held lock, the cost of one renewal round of all N, any lock lost, and
    /// the time to release them all; on a plain URL to one server also the server's memory
    /// per lock and its requests (Redis INFO, ZooKeeper mntr, etcd /metrics).
    #[arg(long, value_name = "N", conflicts_with_all = ["clients", "keys"],
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub hold: Option<u32>,
    /// How long the contended phase runs, or how long --hold holds.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ErrorKind> {
        Cli::try_parse_from(std::iter::once("dlock").chain(args.iter().copied()))
            .map(|cli| cli.command)
            .map_err(|error| error.kind())
    }

    fn run_with_permits(permits: &str) -> Result<Command, ErrorKind> {
        parse(&[
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--permits",
            permits,
            "--",
            "true",
        ])
    }

    #[test]
    fn permits_are_1_to_max_permits() {
        for bad in ["0", "1025", "-1", "three", ""] {
            assert!(run_with_permits(bad).is_err(), "--permits {bad:?} accepted");
        }
        for (given, expected) in [("1", 1), ("3", 3), ("1024", dlock::MAX_PERMITS)] {
            match run_with_permits(given) {
                Ok(Command::Run(args)) => assert_eq!(args.permits, Some(expected)),
                other => panic!("--permits {given}: {other:?}"),
            }
        }
        match parse(&["run", "--url", "memory://", "--key", "k", "--", "true"]) {
            Ok(Command::Run(args)) => assert_eq!(args.permits, None, "the lock by default"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn elect_needs_a_name_and_a_command() {
        assert_eq!(
            parse(&["elect", "--url", "memory://", "--", "true"]).unwrap_err(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["elect", "--url", "memory://", "--name", "n"]).unwrap_err(),
            ErrorKind::MissingRequiredArgument
        );
        match parse(&[
            "elect",
            "--url",
            "memory://",
            "--name",
            "n",
            "--value",
            "10.0.0.7",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
            "x",
        ]) {
            Ok(Command::Elect(args)) => {
                assert_eq!(args.name, "n");
                assert_eq!(args.value.as_deref(), Some("10.0.0.7"));
                assert_eq!(args.ttl, Some(Duration::from_secs(2)));
                assert_eq!(args.wait, None, "the URL's wait unless given");
                assert_eq!(args.command, ["sh", "-c", "x"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn observe_needs_a_name_and_counts_from_1() {
        assert_eq!(
            parse(&["observe", "--url", "memory://"]).unwrap_err(),
            ErrorKind::MissingRequiredArgument
        );
        assert!(parse(&[
            "observe",
            "--url",
            "memory://",
            "--name",
            "n",
            "--count",
            "0"
        ])
        .is_err());
        match parse(&[
            "observe",
            "--url",
            "memory://",
            "--name",
            "n",
            "--json",
            "--count",
            "2",
        ]) {
            Ok(Command::Observe(args)) => {
                assert!(args.json);
                assert_eq!(args.count, Some(2));
            }
            other => panic!("{other:?}"),
        }
    }
}
