//! Exponential backoff with jitter, for every retry loop in dlock.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `initial` up to `max`, each drawn at random from its upper half
/// so that clients retrying together spread out.
///
/// ```
/// use std::time::Duration;
/// use dlock_core::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
/// let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
/// assert!(delays.iter().all(|d| *d >= Duration::from_millis(5) && *d <= Duration::from_millis(80)));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff starting at `initial` and never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            current: initial.min(max),
            max,
        }
    }

    /// The next delay to sleep before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let floor = ceiling / 2;
        if ceiling <= floor {
            return ceiling;
        }
        rand::rng().random_range(floor..=ceiling)
    }
}
