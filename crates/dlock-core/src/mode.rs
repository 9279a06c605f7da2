//! How a contender shares its key with others: alone (a mutex, a writer), with other
//! readers, or as one of N permit holders. One rule, here, decides for every backend whose
//! turn it is.

use std::fmt;

use crate::error::{LockError, Result};

/// The most permits a semaphore may have: a line longer than this is read on every change,
/// so the count is kept where reading it stays cheap.
pub const MAX_PERMITS: u32 = 1024;

/// How a lock is held: the rule that decides who may hold a key together.
///
/// Contenders for one key stand in one line, in arrival order, and [`turn`] decides from the
/// modes of those ahead whether a contender holds the key:
///
/// - [`LockMode::Exclusive`] (a mutex, a read-write lock's writer, a leader) holds the key
///   alone: when nobody is ahead of it.
/// - [`LockMode::Shared`] (a reader) holds it with other readers: when no exclusive
///   contender is ahead of it. A reader that arrives after a waiting writer waits behind it,
///   so a stream of readers never starves a writer, and the writer never starves the
///   readers behind it (the line is first come, first served).
/// - [`LockMode::Permit`]`(n)` (a counting semaphore) holds one of `n` permits: when fewer
///   than `n` contenders are ahead of it. Everyone on the key must agree on `n`.
///
/// Exclusive and shared contenders mix on one key (a mutex on a key is that key's writer);
/// permit contenders mix only with permit contenders of the same count: anything else is
/// [`LockError::IncompatibleMode`].
///
/// ```
/// use dlock_core::{turn, LockMode, Turn};
///
/// let reader = LockMode::Shared;
/// let writer = LockMode::Exclusive;
/// // Readers share the key…
/// assert_eq!(turn("k", reader, &[reader, reader]).unwrap(), Turn::Granted);
/// // …but not with a writer ahead, even a waiting one: wait until it has gone.
/// assert_eq!(turn("k", reader, &[reader, writer, reader]).unwrap(), Turn::WaitFor(1));
/// // Two of three permits are taken: the third is free.
/// let permit = LockMode::Permit(3);
/// assert_eq!(turn("k", permit, &[permit, permit]).unwrap(), Turn::Granted);
/// assert_eq!(turn("k", permit, &[permit, permit, permit]).unwrap(), Turn::WaitForAny);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// One holder at a time.
    #[default]
    Exclusive,
    /// Any number of holders at a time, none of them while an exclusive holder holds the key
    /// or waits ahead.
    Shared,
    /// At most this many holders at a time (a counting semaphore).
    Permit(u32),
}

impl LockMode {
    /// Checks the mode's own range: a permit count from 1 to [`MAX_PERMITS`].
    pub fn validate(self) -> Result<()> {
        match self {
            LockMode::Permit(permits) if permits == 0 || permits > MAX_PERMITS => {
                Err(LockError::invalid_options(format!(
                    "a semaphore needs 1 to {MAX_PERMITS} permits, not {permits}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether a contender in this mode may stand in one line with one in `other`.
    pub fn mixes_with(self, other: LockMode) -> bool {
        match (self, other) {
            (LockMode::Permit(a), LockMode::Permit(b)) => a == b,
            (LockMode::Permit(_), _) | (_, LockMode::Permit(_)) => false,
            _ => true,
        }
    }

    /// The mode's short name, as backends store it with a contender and as `dlock list`
    /// shows it: `exclusive`, `shared` or `permit/N`.
    pub fn label(self) -> String {
        self.to_string()
    }

    /// Reads a [`LockMode::label`] back; `None` for anything else.
    pub fn from_label(label: &str) -> Option<LockMode> {
        match label {
            "exclusive" => Some(LockMode::Exclusive),
            "shared" => Some(LockMode::Shared),
            _ => label
                .strip_prefix("permit/")
                .and_then(|count| count.parse().ok())
                .map(LockMode::Permit),
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockMode::Exclusive => f.write_str("exclusive"),
            LockMode::Shared => f.write_str("shared"),
            LockMode::Permit(permits) => write!(f, "permit/{permits}"),
        }
    }
}

/// What a contender does next, as [`turn`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The contender holds the key.
    Granted,
    /// The contender waits until the contender at this index of `ahead` has gone, then
    /// reads the line again: the only one whose leaving can change its turn. Backends
    /// watch that one contender, so one release wakes only whom it concerns.
    WaitFor(usize),
    /// The contender waits until any contender ahead has gone, then reads the line again
    /// (a semaphore: whichever of the `n` holders ahead leaves first frees a permit).
    WaitForAny,
}

/// Whether a contender for `key` in `mode` holds the key, given the modes of the contenders
/// ahead of it in line (holders and earlier waiters, oldest first); see [`LockMode`].
///
/// [`LockError::IncompatibleMode`] if a contender ahead cannot share a line with `mode`
/// (a semaphore asked for with another permit count, a mutex on a semaphore's key): the
/// contender must leave the line and report it, since waiting could never end well.
pub fn turn(key: &str, mode: LockMode, ahead: &[LockMode]) -> Result<Turn> {
    if let Some(found) = ahead.iter().find(|other| !mode.mixes_with(**other)) {
        return Err(LockError::IncompatibleMode {
            key: key.to_owned(),
            requested: mode,
            found: *found,
        });
    }
    Ok(match mode {
        LockMode::Exclusive => match ahead.len() {
            0 => Turn::Granted,
            n => Turn::WaitFor(n - 1),
        },
        LockMode::Shared => match ahead.iter().rposition(|m| *m == LockMode::Exclusive) {
            None => Turn::Granted,
            Some(writer) => Turn::WaitFor(writer),
        },
        LockMode::Permit(permits) if ahead.len() < permits as usize => Turn::Granted,
        LockMode::Permit(_) => Turn::WaitForAny,
    })
}

/// How many contenders at the front of a line (modes oldest first) hold the key: the
/// leading ones whose [`turn`] is granted. A contender that is not granted ends the count:
/// everyone behind it waits behind a waiter. Backends use it to count holders and waiters
/// for [`LockReport`](crate::LockReport).
///
/// ```
/// use dlock_core::{holders, LockMode};
///
/// let (w, r) = (LockMode::Exclusive, LockMode::Shared);
/// assert_eq!(holders(&[r, r, w, r]), 2);
/// assert_eq!(holders(&[LockMode::Permit(2); 3]), 2);
/// ```
pub fn holders(line: &[LockMode]) -> usize {
    (0..line.len())
        .take_while(|&i| matches!(turn("", line[i], &line[..i]), Ok(Turn::Granted)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: LockMode = LockMode::Exclusive;
    const R: LockMode = LockMode::Shared;

    #[test]
    fn exclusive_waits_for_its_predecessor() {
        assert_eq!(turn("k", W, &[]).unwrap(), Turn::Granted);
        assert_eq!(turn("k", W, &[R, R]).unwrap(), Turn::WaitFor(1));
        assert_eq!(turn("k", W, &[W, R, W]).unwrap(), Turn::WaitFor(2));
    }

    #[test]
    fn readers_wait_only_for_the_last_writer_ahead() {
        assert_eq!(turn("k", R, &[]).unwrap(), Turn::Granted);
        assert_eq!(turn("k", R, &[R, R, R]).unwrap(), Turn::Granted);
        assert_eq!(turn("k", R, &[W, R, R]).unwrap(), Turn::WaitFor(0));
        assert_eq!(turn("k", R, &[R, W, R, W, R]).unwrap(), Turn::WaitFor(3));
    }

    #[test]
    fn permits_count_the_line_ahead() {
        let p = LockMode::Permit(2);
        assert_eq!(turn("k", p, &[]).unwrap(), Turn::Granted);
        assert_eq!(turn("k", p, &[p]).unwrap(), Turn::Granted);
        assert_eq!(turn("k", p, &[p, p]).unwrap(), Turn::WaitForAny);
    }

    #[test]
    fn disagreeing_modes_are_an_error() {
        for (mode, ahead) in [
            (LockMode::Permit(2), vec![LockMode::Permit(3)]),
            (LockMode::Permit(2), vec![W]),
            (W, vec![LockMode::Permit(2)]),
            (R, vec![R, LockMode::Permit(1)]),
        ] {
            let error = turn("k", mode, &ahead).unwrap_err();
            assert!(
                matches!(error, LockError::IncompatibleMode { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn holders_are_the_granted_head_of_the_line() {
        let p = LockMode::Permit(2);
        assert_eq!(holders(&[]), 0);
        assert_eq!(holders(&[W, W]), 1);
        assert_eq!(holders(&[R, R, W, R]), 2);
        assert_eq!(holders(&[W, R, R]), 1);
        assert_eq!(holders(&[p, p, p]), 2);
        assert_eq!(holders(&[p, LockMode::Permit(3), p]), 1);
    }

    #[test]
    fn labels_read_back() {
        for mode in [W, R, LockMode::Permit(7)] {
            assert_eq!(LockMode::from_label(&mode.label()), Some(mode));
        }
        assert_eq!(LockMode::from_label("permit/x"), None);
        assert!(LockMode::Permit(0).validate().is_err());
        assert!(LockMode::Permit(MAX_PERMITS + 1).validate().is_err());
        assert!(LockMode::Permit(MAX_PERMITS).validate().is_ok());
    }
}
