//! Lock keys and the rules they follow.

use std::fmt;

use crate::error::{LockError, Result};

/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 512;

/// The name of one lock: 1 to [`MAX_KEY_LEN`] bytes of UTF-8 without control characters.
///
/// The rules are checked once, here; every backend can then rely on them.
///
/// ```
/// use dlock_core::LockKey;
/// let key = LockKey::new("orders/42").unwrap();
/// assert_eq!(key.as_str(), "orders/42");
/// assert!(LockKey::new("").is_err());
/// assert!(LockKey::new("tab\there").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockKey(String);

impl LockKey {
    /// Checks `key` against the key rules.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(invalid(format!(
                "the key is {} bytes long, the limit is {MAX_KEY_LEN}",
                key.len()
            )));
        }
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(invalid(format!(
                "the key contains the control character {c:?}"
            )));
        }
        Ok(LockKey(key))
    }

    /// The key as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as one path segment that any store accepts: ASCII letters, digits and `-_.~`
    /// stay, every other byte becomes `%XX`, and the segments `.` and `..` are escaped too.
    ///
    /// The mapping is one-to-one, so two different keys never share a segment.
    ///
    /// ```
    /// use dlock_core::LockKey;
    /// assert_eq!(LockKey::new("a/b").unwrap().path_segment(), "a%2Fb");
    /// assert_eq!(LockKey::new("..").unwrap().path_segment(), "%2E%2E");
    /// assert_eq!(LockKey::new("50%").unwrap().path_segment(), "50%25");
    /// ```
    pub fn path_segment(&self) -> String {
        if self.0 == "." || self.0 == ".." {
            return "%2E".repeat(self.0.len());
        }
        let mut out = String::with_capacity(self.0.len());
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }
}

/// Anything that names a lock: a [`LockKey`] or a string checked on the way in.
pub trait IntoLockKey {
    /// Checks the key rules and returns the key.
    fn into_lock_key(self) -> Result<LockKey>;
}

impl IntoLockKey for LockKey {
    fn into_lock_key(self) -> Result<LockKey> {
        Ok(self)
    }
}

impl IntoLockKey for &LockKey {
    fn into_lock_key(self) -> Result<LockKey> {
        Ok(self.clone())
    }
}

impl IntoLockKey for &str {
    fn into_lock_key(self) -> Result<LockKey> {
        LockKey::new(self)
    }
}

impl IntoLockKey for String {
    fn into_lock_key(self) -> Result<LockKey> {
        LockKey::new(self)
    }
}

impl IntoLockKey for &String {
    fn into_lock_key(self) -> Result<LockKey> {
        LockKey::new(self.as_str())
    }
}

impl TryFrom<&str> for LockKey {
    type Error = LockError;
    fn try_from(key: &str) -> Result<Self> {
        LockKey::new(key)
    }
}

impl TryFrom<String> for LockKey {
    type Error = LockError;
    fn try_from(key: String) -> Result<Self> {
        LockKey::new(key)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

fn invalid(reason: impl Into<String>) -> LockError {
    LockError::InvalidKey {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_longest_key_and_rejects_one_byte_more() {
        assert!(LockKey::new("k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(matches!(
            LockKey::new("k".repeat(MAX_KEY_LEN + 1)),
            Err(LockError::InvalidKey { .. })
        ));
    }

    #[test]
    fn rejects_control_characters_anywhere() {
        for key in ["\0", "a\nb", "end\u{7f}", "\u{85}x"] {
            assert!(LockKey::new(key).is_err(), "{key:?} must be rejected");
        }
    }

    #[test]
    fn path_segments_never_collide() {
        let keys = [
            "a/b", "a%2Fb", "a_b", ".", "..", "%2E", "ü", "%C3%BC", "a b",
        ];
        let segments: std::collections::HashSet<_> = keys
            .iter()
            .map(|k| LockKey::new(*k).unwrap().path_segment())
            .collect();
        assert_eq!(segments.len(), keys.len());
    }
}
