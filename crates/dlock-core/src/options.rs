//! Options that shape one acquisition: lease, wait limit, keepalive and key prefix.

use std::time::Duration;

use crate::error::{LockError, Result};

/// The shortest lease any backend is asked for.
pub const MIN_LEASE: Duration = Duration::from_millis(10);
/// The longest lease: a lock that must outlive a week is a configuration mistake.
pub const MAX_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;

/// How a lock is taken and kept.
///
/// The defaults match what Redisson and Curator users expect: a 30 s lease renewed in the
/// background every 10 s, waiting without limit, keys under the prefix `dlock`.
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
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lease: Duration::from_secs(30),
            wait: None,
            keepalive: true,
            keepalive_interval: None,
            prefix: "dlock".to_owned(),
        }
    }
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
        Ok(())
    }
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
        ];
        for options in bad {
            assert!(
                matches!(options.validate(), Err(LockError::InvalidOptions { .. })),
                "{options:?} must be rejected"
            );
        }
    }
}
