//! Exit codes (BSD sysexits, as `crates/dlock-cli/CLI.md` fixes them) and how errors map to them.

use std::process::ExitCode;

use dlock::LockError;

/// Bad usage: options, URL, key, or a key used in another mode than the other clients'.
pub const USAGE: u8 = 64;
/// The backend cannot be reached.
pub const UNAVAILABLE: u8 = 69;
/// The lock was lost while the command ran (or dlock itself failed).
pub const SOFTWARE: u8 = 70;
/// The lock was not acquired within `--wait`.
pub const TEMPFAIL: u8 = 75;
/// The command could not be started (as shells report it).
pub const NOT_FOUND: u8 = 127;

/// Prints a one-line message for a lock error and returns its exit code.
pub fn report(error: &LockError) -> u8 {
    eprintln!("dlock: {error}");
    code_of(error)
}

/// The exit code that stands for `error`.
pub fn code_of(error: &LockError) -> u8 {
    match error {
        LockError::InvalidKey { .. }
        | LockError::InvalidOptions { .. }
        | LockError::InvalidUrl { .. }
        // `--permits 3` on a key others lock as a mutex or with `--permits 2`: fixed by the
        // command line, not by retrying.
        | LockError::IncompatibleMode { .. } => USAGE,
        LockError::Timeout { .. } => TEMPFAIL,
        LockError::NotHeld { .. } => SOFTWARE,
        _ => UNAVAILABLE,
    }
}

/// Help and version go to stdout with exit 0; every other parse error is one line and 64.
pub fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(USAGE)
        }
        _ => {
            let message = error.to_string();
            let line = message
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            eprintln!("dlock: {line} (see dlock --help)");
            ExitCode::from(USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use dlock::LockMode;

    use super::*;

    /// A key used in another mode than the other clients' is the command line's fault: 64, not
    /// "unavailable" (69), which scripts retry.
    #[test]
    fn a_mode_mismatch_is_bad_usage() {
        let mismatch = LockError::IncompatibleMode {
            key: "downloads".to_owned(),
            requested: LockMode::Permit(2),
            found: LockMode::Permit(3),
        };
        assert_eq!(code_of(&mismatch), USAGE);
        let unsupported = LockError::Unsupported {
            backend: "redis",
            operation: "semaphores",
        };
        assert_eq!(code_of(&unsupported), UNAVAILABLE);
    }
}
