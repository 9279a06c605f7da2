//! The backend and lock options of a command that holds a lock (`run`, `elect`): the URL's
//! options, overridden only by the flags the user gave.

use std::time::Duration;

use dlock::{LockOptions, Locker};

use crate::exit;

/// The flags that override the URL's lock options; `None` = not given.
pub struct Overrides<'a> {
    /// `--ttl`.
    pub ttl: Option<Duration>,
    /// `--wait`.
    pub wait: Option<Duration>,
    /// `--owner` (or `elect --value`).
    pub owner: Option<&'a str>,
}

/// Connects to `url` and returns the locker with the options to lock under; on failure the
/// message is printed and the exit code returned.
pub async fn connect(url: &str, overrides: Overrides<'_>) -> Result<(Locker, LockOptions), u8> {
    let locker = dlock::connect(url)
        .await
        .map_err(|error| exit::report(&error))?;
    // The URL's options stand unless the user gave the flag: a default must not override them.
    let mut options = locker.options().clone();
    if let Some(ttl) = overrides.ttl {
        options.lease = ttl;
    }
    if let Some(wait) = overrides.wait {
        options.wait = Some(wait);
    }
    if let Some(owner) = overrides.owner {
        options.owner = Some(owner.to_owned());
    }
    options.validate().map_err(|error| exit::report(&error))?;
    if locker.capabilities().name == "memory" {
        eprintln!(
            "dlock: note: memory:// locks live inside this one dlock process and exclude nothing \
             across processes; use a server URL to lock across processes or machines"
        );
    }
    Ok((locker, options))
}
