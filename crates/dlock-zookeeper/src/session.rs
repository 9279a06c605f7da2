//! The client's session: one ZooKeeper session, the lease of every lock a client holds, and
//! the [`Shared`] state that replaces it with a new one when it is retired.
//!
//! The session is kept alive by a heartbeat task (one small read every quarter of the
//! session timeout, on top of the client library's own pings), which also keeps the client's
//! own view of the session deadline: the send time of the last answered request plus the
//! timeout. The server cannot expire the session before that instant. When the deadline
//! passes on this process's clock (while disconnected, or while the process was paused or
//! starved), or the server says the session expired, the session is *retired*: every lock
//! taken in it is signalled lost, its connection is dropped, and the backend opens a new
//! session for what comes next. A session retired on this process's clock may still live on
//! the server, so it is also closed there as soon as a server answers: its nodes must not
//! block anyone once their locks are declared lost. A retired session is never used again,
//! so a new session never trusts a node of an old one, and no new attempt queues in it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dlock_core::support::{lock, spawn_clean_up, SessionCheck, SessionLease};
use dlock_core::{Backoff, LockError, LossReason, Result};
use tokio::time::Instant;
use zookeeper_client::{Acls, Client, CreateMode, SessionInfo, SessionState};

use crate::config::{AuthScheme, ZooKeeperConfig};
use crate::error::zk_error;

/// What every clone of a [`ZooKeeperBackend`](crate::ZooKeeperBackend) shares: the
/// configuration and the session in use.
pub(crate) struct Shared {
    pub(crate) config: ZooKeeperConfig,
    /// The session in use; replaced when it is retired.
    pub(crate) current: tokio::sync::Mutex<Option<Arc<Session>>>,
    pub(crate) wakeups: AtomicU64,
    pub(crate) rechecks: AtomicU64,
}

impl Shared {
    /// The live session, opening a new one if the last was retired.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        let mut current = self.current.lock().await;
        // A session past its deadline on this process's clock (after a pause, say) is given
        // up here even if its heartbeat has not run yet: a new attempt in it would queue
        // behind the nodes of its own lost locks.
        if let Some(session) = current.as_ref().filter(|s| !s.retire_if_overdue()) {
            return Ok(Arc::clone(session));
        }
        let session = Session::open(&self.config).await?;
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// The live session, if there is one; never opens one.
    pub(crate) async fn live(&self) -> Option<Arc<Session>> {
        self.current
            .lock()
            .await
            .as_ref()
            .filter(|s| s.retired_reason().is_none())
            .cloned()
    }
}

impl Drop for Shared {
    /// The last clone of the backend is gone, and with it every guard (guards keep their
    /// backend alive): close the session so whatever it still owns goes at once. A session
    /// given up by `ZooKeeperBackend::abandon_session` is left to expire, as after a crash.
    fn drop(&mut self) {
        if let Some(session) = self.current.get_mut().take() {
            session.close();
        }
    }
}

/// A live (or retired) session and what the locks taken in it share.
pub(crate) struct Session {
    /// The session's client; taken out (and so disconnected) when the session is retired.
    client: Mutex<Option<Client>>,
    id: i64,
    timeout: Duration,
    endpoint: String,
    authenticated: bool,
    /// Valid until the send time of the last request the server answered plus the timeout;
    /// ended once retired.
    lease: SessionLease,
    /// How to reach the session again to close it, once it was given up on.
    closer: Mutex<Option<Closer>>,
}

/// The session's credentials and where to use them.
struct Closer {
    config: ZooKeeperConfig,
    info: SessionInfo,
}

impl Session {
    /// Connects a new session and starts its heartbeat.
    pub(crate) async fn open(config: &ZooKeeperConfig) -> Result<Arc<Session>> {
        let endpoint = config.endpoint();
        let started = Instant::now();
        let give_up = started + config.connect_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        // Each try fails fast (a refused port, a server too busy to answer in time); tries
        // are repeated until the connect timeout.
        let mut last_error = None;
        let mut tried_at;
        // TLS files are read once, before the first try: a bad file is not worth retrying.
        let connector = connector(config)?;
        let client = loop {
            tried_at = Instant::now();
            let remaining = give_up.saturating_duration_since(tried_at);
            let tried = tokio::time::timeout(remaining, connect(connector.clone(), config)).await;
            match tried {
                Ok(Ok(client)) => break client,
                // The server refused the credentials (SASL): another try gets the same answer.
                Ok(Err(error @ zookeeper_client::Error::AuthFailed)) => {
                    return Err(LockError::backend(
                        "zookeeper",
                        format!("{endpoint}: authentication failed ({error})"),
                    ));
                }
                Ok(Err(error)) => {
                    tracing::debug!(%endpoint, %error, "connecting to ZooKeeper failed; retrying");
                    last_error = Some(error);
                }
                Err(_) => {}
            }
            let remaining = give_up.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(match last_error {
                    Some(error) => LockError::connection(endpoint, error),
                    None => LockError::connection(
                        endpoint,
                        format!("no session within {:?}", config.connect_timeout),
                    ),
                });
            }
            tokio::time::sleep(backoff.next_delay().min(remaining)).await;
        };
        let authenticated = config.auth.is_some();
        let client = match &config.chroot {
            None => client,
            Some(chroot) => {
                let options = CreateMode::Persistent.with_acls(acls(authenticated));
                client
                    .mkdir(chroot, &options)
                    .await
                    .map_err(|error| zk_error(&endpoint, error))?;
                client
                    .chroot(chroot.as_str())
                    .map_err(|_| LockError::InvalidUrl {
                        url: endpoint.clone(),
                        reason: format!("`{chroot}` is not a valid chroot"),
                    })?
            }
        };
        let states = client.state_watcher();
        let client_info = client.session().clone();
        let timeout = client.session_timeout();
        let session = Arc::new(Session {
            id: client.session_id().0,
            timeout,
            client: Mutex::new(Some(client)),
            endpoint,
            authenticated,
            // The server cannot have opened the session before the try that opened it began.
            lease: SessionLease::new(tried_at + timeout),
            closer: Mutex::new(Some(Closer {
                config: config.clone(),
                info: client_info,
            })),
        });
        tokio::spawn(supervise(Arc::downgrade(&session), states));
        Ok(session)
    }

    /// The client, unless the session was retired.
    pub(crate) fn client(&self) -> Result<Client> {
        lock(&self.client).clone().ok_or_else(|| self.ended())
    }

    /// The session id, as the server writes it in `ephemeralOwner`.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// The session timeout the server granted.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where the session is connected, for error messages.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The ACL of the nodes this session creates.
    pub(crate) fn acls(&self) -> Acls<'static> {
        acls(self.authenticated)
    }

    /// Until when the server surely keeps the session, on this process's clock.
    pub(crate) fn deadline(&self) -> Instant {
        self.lease.valid_until()
    }

    /// Records that a request sent at `sent` was answered.
    pub(crate) fn answered(&self, sent: Instant) {
        self.lease.renewed(sent + self.timeout);
    }

    /// Retires the session (and closes it on the server) if its deadline has passed on this
    /// process's clock; true if it is retired, now or before. A session past its deadline
    /// may or may not still live on the server: its locks are already lost, and nothing new
    /// may be queued in it.
    pub(crate) fn retire_if_overdue(&self) -> bool {
        match self.lease.end_if_overdue() {
            SessionCheck::Live => false,
            SessionCheck::Ended => true,
            SessionCheck::EndedNow => {
                self.stopped(LossReason::LeaseExpired);
                self.close_in_background();
                true
            }
        }
    }

    /// Why the session was retired, if it was.
    pub(crate) fn retired_reason(&self) -> Option<LossReason> {
        self.lease.ended()
    }

    /// Resolves, with the reason, once the session is retired.
    pub(crate) fn retired(&self) -> impl std::future::Future<Output = LossReason> + Send + 'static {
        self.lease.until_ended()
    }

    /// Stops using this session: locks taken in it are signalled lost (their watchers see the
    /// retirement), its connection is dropped without closing the session, so the server
    /// removes its nodes only when the session expires. On its own only for a simulated
    /// crash; a session given up on is also closed ([`Session::retire_and_close`]).
    pub(crate) fn retire(&self, reason: LossReason) {
        if self.lease.end(reason) {
            self.stopped(reason);
        }
    }

    /// Retires the session and closes it on the server as soon as a server answers, so its
    /// nodes go at once rather than when the server expires it: for a session given up on
    /// while the server may still keep it (its locks are already signalled lost).
    pub(crate) fn retire_and_close(&self, reason: LossReason) {
        self.retire(reason);
        self.close_in_background();
    }

    /// Ends the session because its client is done with it (the backend was dropped).
    pub(crate) fn close(&self) {
        self.lease.end(LossReason::SessionEnded);
        drop(lock(&self.client).take());
        self.close_in_background();
    }

    /// What follows the retirement of the session for `reason`, once: its client is dropped.
    fn stopped(&self, reason: LossReason) {
        drop(lock(&self.client).take());
        tracing::warn!(session = %format_args!("{:#x}", self.id), %reason, "ZooKeeper session retired");
    }

    fn close_in_background(&self) {
        if let Some(closer) = lock(&self.closer).take() {
            spawn_clean_up(close_abandoned(closer, self.timeout));
        }
    }

    fn ended(&self) -> LockError {
        LockError::connection(
            self.endpoint.clone(),
            format!(
                "ZooKeeper session {:#x} ended: {}",
                self.id,
                self.retired_reason().unwrap_or(LossReason::SessionEnded)
            ),
        )
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &format_args!("{:#x}", self.id))
            .field("timeout", &self.timeout)
            .field("retired", &self.retired_reason())
            .finish()
    }
}

/// A connector for one try: fails fast instead of cycling through the hosts forever.
fn connector(config: &ZooKeeperConfig) -> Result<zookeeper_client::Connector> {
    let connector = secured(
        Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_fail_eagerly()
            // Dropping the client must not close the session: the backend decides (it closes
            // on purpose when dropped or given up on, and a simulated crash must not close).
            .with_detached(),
        config,
    )?;
    Ok(connector)
}

/// `connector` with the configuration's TLS options and credentials.
fn secured(
    mut connector: zookeeper_client::Connector,
    config: &ZooKeeperConfig,
) -> Result<zookeeper_client::Connector> {
    if let Some(files) = &config.tls {
        connector = connector.with_tls(crate::tls::client_options(files)?);
    }
    Ok(match &config.auth {
        None => connector,
        Some(auth) => match auth.scheme {
            AuthScheme::Digest => connector.with_auth("digest", &auth.credentials()),
            AuthScheme::Sasl => connector.with_sasl(zookeeper_client::SaslOptions::digest_md5(
                auth.user.clone(),
                auth.password().to_owned(),
            )),
        },
    })
}

/// Connects with `connector` to every host of `config`, over TLS for `zookeepers://`.
async fn connect(
    connector: zookeeper_client::Connector,
    config: &ZooKeeperConfig,
) -> std::result::Result<Client, zookeeper_client::Error> {
    let hosts = config.hosts.join(",");
    if config.tls.is_some() {
        connector.secure_connect(&hosts).await
    } else {
        connector.connect(&hosts).await
    }
}

/// Attaches to a session this process is done with and closes it (a client that is not detached closes its
/// session when dropped). Gives up after two session timeouts: by then the server has
/// expired it on its own.
async fn close_abandoned(closer: Closer, timeout: Duration) {
    let give_up = Instant::now() + timeout * 2;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    while Instant::now() < give_up {
        let connector = Client::connector()
            .with_session_timeout(timeout)
            .with_fail_eagerly()
            .with_session(closer.info.clone());
        let Ok(connector) = secured(connector, &closer.config) else {
            // The TLS files went away since the session opened: leave it to expire.
            return;
        };
        match tokio::time::timeout(timeout, connect(connector, &closer.config)).await {
            Ok(Ok(client)) => {
                tracing::debug!(session = %closer.info.id(), "closed a ZooKeeper session");
                drop(client);
                return;
            }
            Ok(Err(zookeeper_client::Error::SessionExpired)) => return,
            _ => tokio::time::sleep(backoff.next_delay()).await,
        }
    }
}

/// `CREATOR_ALL_ACL` with credentials, `OPEN_ACL_UNSAFE` without.
fn acls(authenticated: bool) -> Acls<'static> {
    if authenticated {
        Acls::creator_all()
    } else {
        Acls::anyone_all()
    }
}

/// The heartbeat and the watch over the session's deadline; ends when the session is retired
/// or dropped.
async fn supervise(session: Weak<Session>, mut states: zookeeper_client::StateWatcher) {
    loop {
        let (beat, deadline, client) = {
            let Some(session) = session.upgrade() else {
                return;
            };
            if session.retire_if_overdue() {
                return;
            }
            match states.peek_state() {
                // The client library also ends up here when it gives up reconnecting (a
                // connect that timed out counts as `Expired`, other failures as `Closed`),
                // while the server may keep the session: close it there once a server
                // answers (a no-op for a session the server did expire).
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                    session.retire_and_close(LossReason::SessionEnded);
                    return;
                }
                SessionState::Disconnected => (None, session.deadline(), None),
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => (
                    Some(session.timeout / 4),
                    session.deadline(),
                    session.client().ok(),
                ),
            }
        };
        match (beat, client) {
            (Some(beat), Some(client)) => {
                tokio::select! {
                    _ = states.changed() => {}
                    _ = tokio::time::sleep(beat) => {
                        // After a pause of this process the deadline may have passed
                        // unseen: an answer now would not make its locks valid again.
                        if session.upgrade().is_none_or(|session| session.retire_if_overdue()) {
                            return;
                        }
                        let sent = Instant::now();
                        // Any answer, even "no such node", proves the session alive at `sent`.
                        let answered = tokio::time::timeout(beat, client.check_stat("/")).await;
                        drop(client);
                        if let (Ok(Ok(_)), Some(session)) = (answered, session.upgrade()) {
                            session.answered(sent);
                        }
                    }
                }
            }
            _ => {
                tokio::select! {
                    _ = states.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        if let Some(session) = session.upgrade() {
                            if !matches!(states.peek_state(), SessionState::SyncConnected | SessionState::ConnectedReadOnly)
                                && Instant::now() >= session.deadline()
                            {
                                session.retire_and_close(LossReason::LeaseExpired);
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}
