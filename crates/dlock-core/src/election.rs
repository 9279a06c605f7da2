//! Leader election: one leader of a name at a time, its published value, and a stream of
//! leader changes for everyone else.

use std::future::Future;
use std::sync::Arc;

use crate::backend::LockBackend;
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::inspect::LockReport;
use crate::key::LockKey;
use crate::lease::LossReason;
use crate::locker::Locker;
use crate::mode::LockMode;
use crate::options::{check_owner, LockOptions};
use crate::token::FencingToken;

/// Leader election on one name (like etcd's `concurrency.Election`, Curator's
/// `LeaderLatch` or a Kubernetes lease). Made by [`Locker::election`].
///
/// A candidate [`campaign`](Election::campaign)s with a value (its address, say) and waits
/// in line, woken by the server, until it leads. Leadership is the name's exclusive lock:
/// its fencing token is the leader's **term** (it grows with every new leader), it is
/// renewed in the background, and it ends, signalled by [`Leadership::lost`], when its lease
/// or session ends, exactly like a lock loss. The value is stored with the lock as its owner
/// description, so it follows the owner rules (1 to
/// [`MAX_OWNER_LEN`](crate::MAX_OWNER_LEN) printable bytes, not a secret).
///
/// Anyone can read the current leader ([`Election::leader`]) or follow the changes
/// ([`Election::observe`]), without campaigning.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_core::LockError> {
/// use dlock_core::{Locker, MemoryServer};
///
/// let server = MemoryServer::new();
/// let election = Locker::new(server.client()).election("scheduler")?;
/// let mut changes = Locker::new(server.client()).election("scheduler")?.observe();
/// assert!(changes.next().await?.is_none(), "nobody leads yet");
///
/// let mut leadership = election.campaign("10.0.0.7:8080").await?;
/// let leader = changes.next().await?.expect("a leader");
/// assert_eq!(leader.value, "10.0.0.7:8080");
/// assert_eq!(leader.term, Some(leadership.term()));
///
/// leadership.proclaim("10.0.0.7:9090").await?;
/// assert_eq!(changes.next().await?.expect("still leading").value, "10.0.0.7:9090");
///
/// leadership.resign().await?;
/// assert!(changes.next().await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    locker: Locker,
    name: LockKey,
}

/// The leader of an election, as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The value the leader campaigned with, or last proclaimed.
    pub value: String,
    /// The leader's term (its fencing token), where the backend can read it back.
    pub term: Option<FencingToken>,
}

impl Election {
    pub(crate) fn new(locker: Locker, name: LockKey) -> Self {
        Election { locker, name }
    }

    /// The election's name.
    pub fn name(&self) -> &LockKey {
        &self.name
    }

    /// Waits, up to the locker's wait limit (forever by default), to become the leader,
    /// publishing `value`.
    pub async fn campaign(&self, value: &str) -> Result<Leadership> {
        self.campaign_with(value, self.locker.options()).await
    }

    /// Like [`Election::campaign`], with other options (wait limit, lease…).
    pub async fn campaign_with(&self, value: &str, options: &LockOptions) -> Result<Leadership> {
        let options = options
            .clone()
            .mode(LockMode::Exclusive)
            .owner(value.to_owned());
        let guard = self.locker.acquire_with(&self.name, &options).await?;
        Ok(Leadership {
            guard,
            backend: Arc::clone(self.locker.backend()),
            value: value.to_owned(),
        })
    }

    /// The current leader and its value, or `None` if nobody leads. Needs a backend that
    /// stores the owner description ([`Introspection::owner`](crate::Introspection)).
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let report = self.report().await?;
        Ok(leader_of(&report))
    }

    /// A stream of leader changes: the first [`LeaderChanges::next`] returns the current
    /// leader (or `None`), each later one waits for the next change (a new leader, a new
    /// value, nobody leading). Woken by the server where the backend can
    /// ([`LockBackend::wait_for_change`]). Changes that come and go between two reads may be
    /// seen only as their outcome, as with etcd's `Observe`.
    pub fn observe(&self) -> LeaderChanges {
        LeaderChanges {
            election: self.clone(),
            last: None,
        }
    }

    async fn report(&self) -> Result<LockReport> {
        let backend = self.locker.backend();
        if !backend.introspection().owner {
            return Err(LockError::Unsupported {
                backend: backend.capabilities().name,
                operation: "reading an election's leader",
            });
        }
        self.locker.inspect(&self.name).await
    }
}

/// Being the leader of an [`Election`]: held until resigned, dropped or lost.
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
    backend: Arc<dyn LockBackend>,
    value: String,
}

impl Leadership {
    /// This leader's term: its fencing token, greater than every earlier leader's. Pass it
    /// with every write the leader makes, as with a lock's token.
    pub fn term(&self) -> FencingToken {
        self.guard.fencing_token()
    }

    /// The value this leader publishes.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// True while still the leader (see [`LockGuard::is_held`]).
    pub fn is_leader(&self) -> bool {
        self.guard.is_held()
    }

    /// Resolves, with the reason, when leadership is lost (see [`LockGuard::lost`]).
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        self.guard.lost()
    }

    /// The leadership's lock guard.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Publishes a new value, if still the leader (checked on the server);
    /// [`LockError::NotHeld`] otherwise.
    pub async fn proclaim(&mut self, value: &str) -> Result<()> {
        check_owner(value)?;
        if !self.guard.is_held() {
            return Err(LockError::NotHeld {
                key: self.guard.key().to_string(),
            });
        }
        match self.backend.update_owner(self.guard.lease(), value).await {
            Ok(()) => {
                self.value = value.to_owned();
                Ok(())
            }
            Err(LockError::NotHeld { key }) => {
                self.guard.lease().state().mark_lost(LossReason::NotOwner);
                Err(LockError::NotHeld { key })
            }
            Err(other) => Err(other),
        }
    }

    /// Steps down: releases the leadership so the next candidate in line leads.
    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }
}

/// Leader changes of an [`Election`], made by [`Election::observe`].
#[derive(Debug)]
pub struct LeaderChanges {
    election: Election,
    /// The leader last returned; `None` before the first call.
    last: Option<Option<Leader>>,
}

impl LeaderChanges {
    /// The leader after the next change (the current one, on the first call); `None` when
    /// nobody leads.
    pub async fn next(&mut self) -> Result<Option<Leader>> {
        loop {
            let report = self.election.report().await?;
            let leader = leader_of(&report);
            if self.last.as_ref() != Some(&leader) {
                self.last = Some(leader.clone());
                return Ok(leader);
            }
            let election = &self.election;
            election
                .locker
                .backend()
                .wait_for_change(&election.name, election.locker.options(), &report)
                .await?;
        }
    }
}

fn leader_of(report: &LockReport) -> Option<Leader> {
    if !report.info.held {
        return None;
    }
    Some(Leader {
        value: report.owner.clone().unwrap_or_default(),
        term: report.info.fencing_token,
    })
}
