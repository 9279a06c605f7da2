//! Fencing tokens.

use std::fmt;

/// A number issued with every acquisition of a key, strictly greater than every token issued
/// before for that key (property P2).
///
/// Pass it along with every write the lock protects and let the storage reject writes that
/// carry a token lower than one it has already seen: that keeps a paused or partitioned former
/// holder from doing damage after its lease ran out.
///
/// ```
/// use dlock_core::FencingToken;
/// let older = FencingToken::new(7);
/// let newer = FencingToken::new(8);
/// assert!(newer > older);
/// assert_eq!(newer.to_string(), "8");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with the given value.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The token's value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> u64 {
        token.0
    }
}
