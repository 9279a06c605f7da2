//! The ZooKeeper backend of **dlock**: ephemeral sequential nodes, one session per client.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use dlock_core::Locker;
//!
//! let backend = dlock_zookeeper::connect("zookeeper://127.0.0.1:2181/app?session_timeout=10s").await?;
//! let locker = Locker::new(backend)
//!     .with_options(dlock_core::LockOptions::default().lease(std::time::Duration::from_secs(10)))?;
//! let guard = locker.acquire("reports/daily").await?;
//! println!("fencing token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # How a lock is taken
//! The contenders for key `k` under prefix `p` create `EPHEMERAL_SEQUENTIAL` nodes
//! `/p/lock=k/_c_{attempt id}-lock-{sequence}`. The key's node and the prefix's nodes are
//! `CONTAINER` nodes, which the server deletes once empty. The lowest sequence holds the
//! lock; every other contender watches only the node just before its own and reads the line
//! again when it goes: first come, first served, and a release wakes exactly one waiter.
//! The random attempt id in the name (Curator's "protected" mode) finds a node again whose
//! create reply was lost to a connection drop, instead of leaking it.
//!
//! # Readers, semaphores, elections
//! In dlock's layout a contender's [`LockMode`](dlock_core::LockMode) is part of its node's
//! name (`_c_{id}-shared-lock-{sequence}` for a reader, `_c_{id}-permit.{n}-lock-{sequence}`
//! for one of `n` permits; a mutex's name is unchanged), so one read of the line tells every
//! contender's mode, and [`dlock_core::turn`] decides who holds. A waiter watches the one node
//! whose leaving can change its turn (a mutex's or writer's predecessor, a reader's last
//! writer ahead); a permit waiter, for whom any holder's leaving frees a permit, watches the
//! key node's children. An election's `proclaim` writes the owner description into the
//! leader's node (`setData`), and observers wait on a children watch of the key node plus a
//! data watch of the leader's node. The foreign layouts take exclusive locks only.
//!
//! # Fencing token
//! The token is the lock node's creation zxid (`czxid`). Zxids number every write of the
//! ensemble in one total order that never goes back, also across server restarts (the epoch
//! in the high bits grows with each leader) and client restarts (the server issues them).
//! Two acquisitions A then B of one key: B's node exists when B is granted, and A was granted
//! only while no node before it was in line, so B's node was created after A's (had it been
//! created before, it would have been before A in line, or gone). So B's `czxid` is greater.
//! Sequence numbers would not do: they restart when the container key node is removed.
//!
//! # The session is the lease
//! The session timeout (`session_timeout` in the URL) is the lease of every lock of the
//! client; the lock options' `lease` is not used. A heartbeat (one read per quarter of the
//! timeout, for the whole client) keeps the session and so every lock alive: renewal costs
//! O(1) round trips per client however many locks it holds. While disconnected, locks stay
//! held as long as the session may still live on the server; when the client's own view of
//! the session deadline passes (the send time of the last answered request plus the
//! timeout) or the server reports the session expired, every guard is signalled lost and the
//! next acquisition opens a new session, which never trusts a node of the old one.
//!
//! # URLs
//! ```text
//! zookeeper://[user:password@]host[:port][,host[:port]…][/chroot][?param=value&…]   (alias zk://)
//! zookeepers://[user:password@]host[:port][,…][/chroot]?ca=CA.pem[&cert=C.pem&key=K.pem][&…]
//!                                                                                   (alias zks://)
//! ```
//! Parameters: `session_timeout`, `connect_timeout` (`10s`, `500ms`), `prefix`, `layout`
//! (`dlock`, `kazoo`, `curator`), `auth` (`digest`, the default, or `sasl`), and for
//! `zookeepers://` the PEM files `ca` (needed: the client trusts no system roots), `cert`
//! and `key` (a client certificate, for servers with `ssl.clientAuth=need`). The port is
//! 2181 unless given; a TLS URL names the servers' `secureClientPort`, and each server's
//! certificate must name the host (or IP) it is reached by.
//!
//! With credentials, the client authenticates and creates its nodes with
//! `CREATOR_ALL_ACL`, so only the same identity can read, change or delete them:
//! - `auth=digest` (the default): `addAuth("digest", "user:password")`; the identity is
//!   `digest:user:{hash of the password}`, and a wrong password is just another identity.
//! - `auth=sasl`: SASL DIGEST-MD5 (the server's `SASLAuthenticationProvider` with the JAAS
//!   `DigestLoginModule`); the identity is `sasl:user`, and a wrong password is refused at
//!   connect ([`LockError::Backend`](dlock_core::LockError::Backend)). The same user on
//!   another client has the same identity and takes the lock in turn.
//!
//! Over TLS with a client certificate the server also adds an `x509:{subject}` identity to
//! the connection, and `CREATOR_ALL_ACL` then lists it too: clients sharing one certificate
//! share access to each other's nodes, whatever their user. Give each application its own
//! certificate or no credentials beside it. The password never appears in errors or `Debug`.
//!
//! # Sharing locks with kazoo and Curator
//! `?layout=kazoo` or `?layout=curator` ([`Layout`]) makes the client read and write the
//! nodes of kazoo's `Lock` or Curator's `InterProcessMutex` exactly, so that it and the other
//! library exclude each other; the key is then the other library's lock path (`k` and `/k`
//! alike).
//!
//! # Who holds what
//! Each lock node holds its owner description (written by the create, so no extra write);
//! `report` reads the first node in line (token = its `czxid`, acquired-at = its `ctime`,
//! which for a holder that waited is when it joined the line) and counts the rest as
//! waiters; `list` reads the prefix node's children, then each listed key's line.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod error;
mod layout;
mod session;
mod tls;
mod waiter;

pub use backend::ZooKeeperBackend;
/// The ZooKeeper client this backend is built on, for code that also talks to the server
/// directly (fault tests, operators' tools) with the same version.
pub use zookeeper_client;

pub use config::{
    AuthScheme, DigestAuth, Layout, TlsFiles, ZooKeeperConfig, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PORT, DEFAULT_SESSION_TIMEOUT,
};
/// The URL schemes this crate's [`connect`] takes: `zookeeper://` and its alias `zk://`,
/// `zookeepers://` (TLS) and its alias `zks://`. The `dlock` facade routes these to this
/// crate.
pub const SCHEMES: &[&str] = &["zookeeper", "zk", "zookeepers", "zks"];

/// Connects to the ZooKeeper ensemble a `zookeeper://`, `zk://`, `zookeepers://` or `zks://`
/// URL names.
///
/// Bad URLs give [`LockError::InvalidUrl`](dlock_core::LockError::InvalidUrl) (password
/// redacted); TLS files that cannot be read or parsed give
/// [`LockError::InvalidOptions`](dlock_core::LockError::InvalidOptions); an ensemble that
/// does not answer within the connect timeout, or whose TLS handshake fails (a certificate
/// the CA did not sign, a plain-text port), gives
/// [`LockError::Connection`](dlock_core::LockError::Connection); credentials the server
/// refuses (SASL) give [`LockError::Backend`](dlock_core::LockError::Backend) at once.
pub async fn connect(url: &str) -> dlock_core::Result<ZooKeeperBackend> {
    ZooKeeperBackend::connect(ZooKeeperConfig::from_url(url)?).await
}
