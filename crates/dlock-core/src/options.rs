//! Options that shape one acquisition: lease, wait limit, keepalive, key prefix and owner.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{LockError, Result};
use crate::mode::LockMode;

/// The shortest lease any backend is asked for.
pub const MIN_LEASE: Duration = Duration::from_millis(10);
/// The longest lease: a lock that must outlive a week is a configuration mistake.
pub const MAX_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;
/// The longest owner description, in bytes: enough for a host name, a process id and a
/// program name, small enough to store beside every lock.
pub const MAX_OWNER_LEN: usize = 256;

/// How a lock is taken and kept.
///
/// The defaults match what Redisson and Curator users expect: a 30 s lease renewed in the
/// background every 10 s, waiting without limit, keys under the prefix `dlock`, and this
/// process ([`default_owner`]) named as the owner.
///
/// ```
/// use std::time::Duration;
/// use dlock_core::LockOptions;
///
/// let options = LockOptions::default()
///     .lease(Duration::from_secs(9))
///     .wait(Duration::from_secs(2))
///     .prefix("billing");
/// assert!(options.validate().is_ok());
/// assert_eq!(options.effective_keepalive_interval(), Duration::from_secs(3));
/// assert!(LockOptions::default().lease(Duration::ZERO).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// How long the lock stays held without renewal (the TTL). For session-based backends
    /// (ZooKeeper, etcd) the lease is the client's session and is fixed when it connects.
    pub lease: Duration,
    /// How long `acquire` waits for another holder to let go; `None` waits without limit and
    /// `Some(Duration::ZERO)` tries once.
    pub wait: Option<Duration>,
    /// Renew the lease in the background while the guard lives.
    pub keepalive: bool,
    /// How often to renew; `None` means a third of the lease.
    pub keepalive_interval: Option<Duration>,
    /// The namespace the backend puts keys under, so applications sharing a server do not
    /// collide. At most [`MAX_PREFIX_LEN`] bytes, no control characters.
    pub prefix: String,
    /// Who takes the lock, in words an operator recognises (`dlock status` shows it, and
    /// backends that can store it keep it with the lock); `None` means [`default_owner`].
    /// At most [`MAX_OWNER_LEN`] bytes, not empty, no control characters.
    ///
    /// Anyone who can read the lock can read this: never put a secret in it. It is a
    /// description, not an identity: the server's owner check uses its own unguessable id.
    pub owner: Option<String>,
    /// How the key is shared: alone (the default, a mutex), with other readers, or as one of
    /// N permits. [`Locker::rw_lock`](crate::Locker::rw_lock) and
    /// [`Locker::semaphore`](crate::Locker::semaphore) set it for you.
    pub mode: LockMode,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lease: Duration::from_secs(30),
            wait: None,
            keepalive: true,
            keepalive_interval: None,
            prefix: "dlock".to_owned(),
            owner: None,
            mode: LockMode::Exclusive,
        }
    }
}

/// This process's owner description: `host name/process id/program name`, say
/// `web-3/4711/billing-worker`, cut to [`MAX_OWNER_LEN`] bytes with any control character
/// replaced by `?`. Computed once.
///
/// ```
/// let owner = dlock_core::default_owner();
/// assert!(owner.contains(&format!("/{}/", std::process::id())));
/// assert!(dlock_core::LockOptions::default().owner(owner).validate().is_ok());
/// ```
pub fn default_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let host = gethostname::gethostname();
        let program = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|path| path.file_name().map(|name| name.to_owned()))
            .unwrap_or_default();
        let owner = format!(
            "{}/{}/{}",
            host.to_string_lossy(),
            std::process::id(),
            program.to_string_lossy()
        );
        printable(&owner, MAX_OWNER_LEN)
    })
}

/// `text` with control characters replaced by `?`, cut at a character boundary to at most
/// `limit` bytes: what the system reports (a host name, argv\[0\]) is not ours to trust.
fn printable(text: &str, limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit));
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > limit {
            break;
        }
        out.push(c);
    }
    out
}

impl LockOptions {
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the wait limit.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Waits without limit.
    pub fn wait_forever(mut self) -> Self {
        self.wait = None;
        self
    }

    /// Turns background renewal on or off.
    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    /// Sets the renewal interval.
    pub fn keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = Some(interval);
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the owner description (see [`LockOptions::owner`](#structfield.owner)).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets how the key is shared (see [`LockMode`]).
    pub fn mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// The owner description in force: the one set, or [`default_owner`].
    pub fn effective_owner(&self) -> &str {
        match &self.owner {
            Some(owner) => owner,
            None => default_owner(),
        }
    }

    /// The renewal interval in force: the one set, or a third of the lease.
    pub fn effective_keepalive_interval(&self) -> Duration {
        self.keepalive_interval.unwrap_or(self.lease / 3)
    }

    /// Checks every option, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        if self.lease < MIN_LEASE {
            return Err(LockError::invalid_options(format!(
                "lease {:?} is shorter than the minimum {MIN_LEASE:?}",
                self.lease
            )));
        }
        if self.lease > MAX_LEASE {
            return Err(LockError::invalid_options(format!(
                "lease {:?} is longer than the maximum {MAX_LEASE:?}",
                self.lease
            )));
        }
        if let Some(interval) = self.keepalive_interval {
            if interval.is_zero() {
                return Err(LockError::invalid_options("keepalive interval is zero"));
            }
            if interval >= self.lease {
                return Err(LockError::invalid_options(format!(
                    "keepalive interval {interval:?} is not shorter than the lease {:?}: \
                     the lock would expire between renewals",
                    self.lease
                )));
            }
        }
        if let Some(wait) = self.wait {
            if wait > MAX_LEASE {
                return Err(LockError::invalid_options(format!(
                    "wait limit {wait:?} is longer than {MAX_LEASE:?}; leave it unset to wait forever"
                )));
            }
        }
        if self.prefix.len() > MAX_PREFIX_LEN {
            return Err(LockError::invalid_options(format!(
                "key prefix is {} bytes long, the limit is {MAX_PREFIX_LEN}",
                self.prefix.len()
            )));
        }
        if self.prefix.chars().any(char::is_control) {
            return Err(LockError::invalid_options(
                "key prefix contains a control character",
            ));
        }
        if let Some(owner) = &self.owner {
            check_owner(owner)?;
        }
        self.mode.validate()
    }
}

/// The owner description rules: stored with the lock and shown to operators, so bounded and
/// printable.
pub(crate) fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Err(LockError::invalid_options("owner description is empty"));
    }
    if owner.len() > MAX_OWNER_LEN {
        return Err(LockError::invalid_options(format!(
            "owner description is {} bytes long, the limit is {MAX_OWNER_LEN}",
            owner.len()
        )));
    }
    if let Some(c) = owner.chars().find(|c| c.is_control()) {
        return Err(LockError::invalid_options(format!(
            "owner description contains the control character {c:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(LockOptions::default().validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_values() {
        let bad = [
            LockOptions::default().lease(Duration::ZERO),
            LockOptions::default().lease(Duration::from_secs(8 * 24 * 3600)),
            LockOptions::default().keepalive_interval(Duration::ZERO),
            LockOptions::default().keepalive_interval(Duration::from_secs(30)),
            LockOptions::default().prefix("x".repeat(MAX_PREFIX_LEN + 1)),
            LockOptions::default().prefix("a\nb"),
            LockOptions::default().wait(Duration::from_secs(8 * 24 * 3600)),
            LockOptions::default().owner(""),
            LockOptions::default().owner("x".repeat(MAX_OWNER_LEN + 1)),
            LockOptions::default().owner("é".repeat(MAX_OWNER_LEN / 2 + 1)),
            LockOptions::default().owner("ops\nroot"),
            LockOptions::default().owner("bell\u{7}"),
            LockOptions::default().owner("esc\u{1b}[31m"),
            LockOptions::default().owner("del\u{7f}"),
            LockOptions::default().owner("c1\u{85}"),
            LockOptions::default().mode(LockMode::Permit(0)),
        ];
        for options in bad {
            assert!(
                matches!(options.validate(), Err(LockError::InvalidOptions { .. })),
                "{options:?} must be rejected"
            );
        }
    }

    #[test]
    fn owner_descriptions_within_the_rules_are_accepted() {
        for owner in [
            "x".repeat(MAX_OWNER_LEN),
            "é".repeat(MAX_OWNER_LEN / 2),
            "web-3/4711/billing worker (eu-west)".to_owned(),
        ] {
            let options = LockOptions::default().owner(owner.clone());
            assert!(options.validate().is_ok(), "{owner:?} must be accepted");
            assert_eq!(options.effective_owner(), owner);
        }
    }

    #[test]
    fn the_default_owner_names_this_process_and_keeps_the_rules() {
        let owner = default_owner();
        assert_eq!(LockOptions::default().effective_owner(), owner);
        assert!(check_owner(owner).is_ok(), "{owner:?}");
        let parts: Vec<&str> = owner.splitn(3, '/').collect();
        assert_eq!(parts.len(), 3, "{owner:?} is host/pid/program");
        assert_eq!(parts[1], std::process::id().to_string());
    }

    #[test]
    fn printable_replaces_control_characters_and_cuts_at_a_character() {
        assert_eq!(printable("a\tb\u{1b}", 10), "a?b?");
        assert_eq!(printable("ééé", 5), "éé");
        assert_eq!(printable("abc", 3), "abc");
    }
}
