//! A read-write lock: many readers or one writer, served in arrival order.

use crate::error::Result;
use crate::guard::LockGuard;
use crate::key::LockKey;
use crate::locker::Locker;
use crate::mode::LockMode;
use crate::options::LockOptions;

/// Many readers or one writer of one name at a time, across every client of the server
/// (like Redisson's `RReadWriteLock` or Curator's `InterProcessReadWriteLock`). Made by
/// [`Locker::rw_lock`].
///
/// **Policy: first come, first served.** Readers and writers stand in one line. A reader
/// holds the lock as soon as no writer is ahead of it, together with the readers around it;
/// a writer holds it when everybody ahead of it has gone. A reader that arrives while a
/// writer waits queues behind that writer, so a stream of readers never starves a writer,
/// and the readers that arrive during a write all enter together after it.
///
/// Each read or write is a [`LockGuard`] with the mutex's rules (keepalive, loss signal,
/// cancellation, release on drop). Fencing tokens of readers and writers of one name come
/// from one sequence, in grant order: a writer's token is greater than the token of every
/// reader that held the lock before it, and smaller than that of every reader after it. The
/// writer of a name is that name's mutex: `rw_lock("k").write()` and `acquire("k")` exclude
/// each other.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::{Locker, MemoryBackend};
///
/// let locker = Locker::new(MemoryBackend::new());
/// let config = locker.rw_lock("config")?;
///
/// let reader = config.read().await?;
/// let other_reader = config.try_read().await?.expect("readers share");
/// assert!(config.try_write().await?.is_none(), "the writer waits for the readers");
///
/// let read_token = other_reader.fencing_token();
/// reader.release().await?;
/// other_reader.release().await?;
/// let writer = config.write().await?;
/// assert!(writer.fencing_token() > read_token);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RwLock {
    locker: Locker,
    name: LockKey,
}

impl RwLock {
    pub(crate) fn new(locker: Locker, name: LockKey) -> Self {
        RwLock { locker, name }
    }

    /// The lock's name.
    pub fn name(&self) -> &LockKey {
        &self.name
    }

    /// Takes the lock for reading, waiting up to the locker's wait limit.
    pub async fn read(&self) -> Result<LockGuard> {
        self.read_with(self.locker.options()).await
    }

    /// Takes the lock for writing, waiting up to the locker's wait limit.
    pub async fn write(&self) -> Result<LockGuard> {
        self.write_with(self.locker.options()).await
    }

    /// Takes the lock for reading if no writer holds or waits for it; `Ok(None)` if one does.
    pub async fn try_read(&self) -> Result<Option<LockGuard>> {
        let options = self.locker.options().clone().mode(LockMode::Shared);
        self.locker.try_acquire_with(&self.name, &options).await
    }

    /// Takes the lock for writing if nobody holds or waits for it; `Ok(None)` otherwise.
    pub async fn try_write(&self) -> Result<Option<LockGuard>> {
        let options = self.locker.options().clone().mode(LockMode::Exclusive);
        self.locker.try_acquire_with(&self.name, &options).await
    }

    /// Takes the lock for reading with other options (their mode is replaced).
    pub async fn read_with(&self, options: &LockOptions) -> Result<LockGuard> {
        let options = options.clone().mode(LockMode::Shared);
        self.locker.acquire_with(&self.name, &options).await
    }

    /// Takes the lock for writing with other options (their mode is replaced).
    pub async fn write_with(&self, options: &LockOptions) -> Result<LockGuard> {
        let options = options.clone().mode(LockMode::Exclusive);
        self.locker.acquire_with(&self.name, &options).await
    }
}
