//! A counting semaphore: at most N holders of one name at a time, each with its own guard.

use crate::error::Result;
use crate::guard::LockGuard;
use crate::key::LockKey;
use crate::locker::Locker;
use crate::mode::LockMode;
use crate::options::LockOptions;

/// At most `permits` holders of one name at a time, across every client of the server
/// (like Redisson's `RPermitExpirableSemaphore`, Curator's `InterProcessSemaphoreV2` or
/// `consul lock -n`). Made by [`Locker::semaphore`].
///
/// Each permit is a [`LockGuard`] like a mutex's: it has its own fencing token, is renewed
/// in the background, signals its loss, and is given back when released or dropped (or,
/// for a crashed holder, when its lease runs out). Waiters stand in the backend's line and
/// are served in arrival order where the backend is FIFO, woken by the server.
///
/// Every client must use the same permit count for a name: a client asking with another
/// count while the name is in use gets [`LockError::IncompatibleMode`](crate::LockError::IncompatibleMode).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::{Locker, MemoryBackend};
///
/// let locker = Locker::new(MemoryBackend::new());
/// let downloads = locker.semaphore("downloads", 2)?;
///
/// let first = downloads.acquire().await?;
/// let second = downloads.acquire().await?;
/// assert!(downloads.try_acquire().await?.is_none(), "both permits are taken");
///
/// first.release().await?;
/// let third = downloads.try_acquire().await?.expect("a permit came back");
/// assert!(third.fencing_token() > second.fencing_token());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    locker: Locker,
    name: LockKey,
    options: LockOptions,
}

impl Semaphore {
    pub(crate) fn new(locker: Locker, name: LockKey, options: LockOptions) -> Self {
        Semaphore {
            locker,
            name,
            options,
        }
    }

    /// The semaphore's name.
    pub fn name(&self) -> &LockKey {
        &self.name
    }

    /// How many holders it admits at a time.
    pub fn permits(&self) -> u32 {
        match self.options.mode {
            LockMode::Permit(permits) => permits,
            _ => 1,
        }
    }

    /// Takes a permit, waiting up to the locker's wait limit (forever by default).
    pub async fn acquire(&self) -> Result<LockGuard> {
        self.locker.acquire_with(&self.name, &self.options).await
    }

    /// Takes a permit if one is free and nobody waits, without waiting; `Ok(None)` if not.
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        self.locker
            .try_acquire_with(&self.name, &self.options)
            .await
    }

    /// Takes a permit with other options (a wait limit, a lease, an owner); their mode is
    /// replaced by this semaphore's.
    pub async fn acquire_with(&self, options: &LockOptions) -> Result<LockGuard> {
        let options = options.clone().mode(self.options.mode);
        self.locker.acquire_with(&self.name, &options).await
    }
}
