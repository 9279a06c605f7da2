//! What operators read about locks: one lock's holder ([`LockReport`]), the locks under a
//! prefix ([`ListRequest`], [`ListPage`]) and what a backend can tell ([`Introspection`]).
//!
//! These live beside [`LockInfo`] rather than in it: backends build `LockInfo` with struct
//! literals, so a new field there breaks every backend at once. The new types are
//! `#[non_exhaustive]` with setters, so they can grow without breaking anyone.

use std::time::SystemTime;

use crate::backend::LockInfo;
use crate::error::{LockError, Result};
use crate::key::{LockKey, MAX_KEY_LEN};

/// How many locks one [`ListRequest`] returns unless told otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The most locks one [`ListRequest`] may ask for: a page is one bounded request to the
/// server, however many locks exist.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Everything the server knows of one lock: [`LockInfo`] plus who holds it and since when.
///
/// [`LockBackend::report`](crate::LockBackend::report) reads it;
/// [`Locker::inspect`](crate::Locker::inspect) is the way applications ask.
///
/// ```
/// use dlock_core::{LockInfo, LockReport};
///
/// let report = LockReport::from(LockInfo { held: true, ..LockInfo::default() })
///     .with_owner("web-3/4711/billing");
/// assert!(report.info.held);
/// assert_eq!(report.owner.as_deref(), Some("web-3/4711/billing"));
/// assert_eq!(report.acquired_at, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockReport {
    /// Held, token, remaining lease, waiters.
    pub info: LockInfo,
    /// The holder's owner description ([`LockOptions::owner`](crate::LockOptions::owner)),
    /// if the lock is held and the backend stores it.
    pub owner: Option<String>,
    /// When the holder took the lock, on the server's (or the holder's) wall clock, if the
    /// backend records it.
    pub acquired_at: Option<SystemTime>,
}

impl LockReport {
    /// Sets the holder's owner description.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets when the holder took the lock.
    pub fn with_acquired_at(mut self, at: SystemTime) -> Self {
        self.acquired_at = Some(at);
        self
    }

    /// Whether `other` tells of the same holding as this report: held or not, the same
    /// token, owner description and acquisition time. The remaining lease moves on its own
    /// and the waiters are not the holder's, so neither counts: this is the change an
    /// [`Election`](crate::Election)'s observers wait for
    /// ([`LockBackend::wait_for_change`](crate::LockBackend::wait_for_change)).
    pub fn same_holder(&self, other: &LockReport) -> bool {
        self.info.held == other.info.held
            && self.info.fencing_token == other.info.fencing_token
            && self.owner == other.owner
            && self.acquired_at == other.acquired_at
    }
}

impl From<LockInfo> for LockReport {
    fn from(info: LockInfo) -> Self {
        LockReport {
            info,
            ..LockReport::default()
        }
    }
}

/// Which locks to list: those whose key starts with `key_prefix` (under the lock options'
/// [`prefix`](crate::LockOptions::prefix) namespace), in key order, after the cursor, at
/// most `limit` of them.
///
/// ```
/// use dlock_core::ListRequest;
///
/// let first = ListRequest::new("jobs/").limit(50);
/// assert!(first.validate().is_ok());
/// // The next page starts after the cursor the previous one returned.
/// let next = first.clone().after("jobs/0042");
/// assert_eq!(next.after.as_deref(), Some("jobs/0042"));
/// assert!(ListRequest::new("").limit(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListRequest {
    /// Only keys that start with this (plain text, not a pattern); empty lists all.
    pub key_prefix: String,
    /// Only keys after this one in byte order: the [`ListPage::next`] of the previous page.
    pub after: Option<String>,
    /// At most this many locks, 1 to [`MAX_LIST_LIMIT`].
    pub limit: usize,
}

impl ListRequest {
    /// The first page of locks whose key starts with `key_prefix`, [`DEFAULT_LIST_LIMIT`]
    /// at a time.
    pub fn new(key_prefix: impl Into<String>) -> Self {
        ListRequest {
            key_prefix: key_prefix.into(),
            after: None,
            limit: DEFAULT_LIST_LIMIT,
        }
    }

    /// Starts after `cursor` (a previous page's [`ListPage::next`]).
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.after = Some(cursor.into());
        self
    }

    /// Returns at most `limit` locks.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Checks the limit and the bounds of the prefix and cursor (the key rules' length, no
    /// control characters), naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_LIST_LIMIT).contains(&self.limit) {
            return Err(LockError::invalid_options(format!(
                "list limit {} is outside 1..={MAX_LIST_LIMIT}",
                self.limit
            )));
        }
        for (what, text) in [
            ("key prefix", Some(&self.key_prefix)),
            ("list cursor", self.after.as_ref()),
        ] {
            let Some(text) = text else { continue };
            if text.len() > MAX_KEY_LEN {
                return Err(LockError::invalid_options(format!(
                    "{what} is {} bytes long, the limit is {MAX_KEY_LEN}",
                    text.len()
                )));
            }
            if text.chars().any(char::is_control) {
                return Err(LockError::invalid_options(format!(
                    "{what} contains a control character"
                )));
            }
        }
        Ok(())
    }
}

/// One lock of a [`ListPage`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListedLock {
    /// Its key.
    pub key: LockKey,
    /// What the server knows of it.
    pub report: LockReport,
}

impl ListedLock {
    /// A listed lock.
    pub fn new(key: LockKey, report: LockReport) -> Self {
        ListedLock { key, report }
    }
}

/// One page of [`LockBackend::list`](crate::LockBackend::list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListPage {
    /// The locks held or waited for, in key order.
    pub locks: Vec<ListedLock>,
    /// Where the next page starts ([`ListRequest::after`]), or `None` after the last page.
    pub next: Option<String>,
}

impl ListPage {
    /// A page, with the cursor of the next one if more locks follow.
    pub fn new(locks: Vec<ListedLock>, next: Option<String>) -> Self {
        ListPage { locks, next }
    }
}

/// What a backend can report about locks beyond [`LockInfo`]: the conformance suite checks
/// each promise made here and skips, saying so, what is not promised. Everything is `false`
/// by default.
///
/// ```
/// use dlock_core::Introspection;
///
/// let mut introspection = Introspection::default();
/// introspection.owner = true;
/// assert!(!introspection.list);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Introspection {
    /// [`LockReport::owner`] names the holder's owner description.
    pub owner: bool,
    /// [`LockReport::acquired_at`] says when the holder took the lock.
    pub acquired_at: bool,
    /// [`LockBackend::list`](crate::LockBackend::list) lists the locks under a prefix.
    pub list: bool,
}

impl Introspection {
    /// Everything: owner, acquisition time and listing.
    pub fn all() -> Self {
        Introspection {
            owner: true,
            acquired_at: true,
            list: true,
        }
    }
}
