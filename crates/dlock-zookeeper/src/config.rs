//! Where the backend connects and how: hosts, chroot, session timeout, credentials (the
//! `digest` scheme or SASL DIGEST-MD5), TLS files, and the `zookeeper://` / `zookeepers://`
//! URL that carries them.

use std::fmt;
use std::time::Duration;

use dlock_core::{BackendUrl, LockError, Result};

/// The session timeout asked for when the URL does not say: the default lease of
/// [`LockOptions`](dlock_core::LockOptions), so a default lock and a default session agree.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first connection may take when the URL does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The port a host without one is reached on.
pub const DEFAULT_PORT: u16 = 2181;

/// How a [`ZooKeeperBackend`](crate::ZooKeeperBackend) reaches its ensemble.
///
/// Usually made from a URL with [`ZooKeeperConfig::from_url`]:
///
/// ```
/// use std::time::Duration;
/// use dlock_zookeeper::ZooKeeperConfig;
///
/// let config = ZooKeeperConfig::from_url(
///     "zookeeper://app:s3cret@10.0.0.1:2181,10.0.0.2/locks?session_timeout=10s",
/// ).unwrap();
/// assert_eq!(config.hosts, ["10.0.0.1:2181", "10.0.0.2:2181"]);
/// assert_eq!(config.chroot.as_deref(), Some("/locks"));
/// assert_eq!(config.session_timeout, Duration::from_secs(10));
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// // TLS to the servers' secureClientPort, with a client certificate, and the user sent by
/// // SASL DIGEST-MD5 instead of the `digest` scheme.
/// let secure = ZooKeeperConfig::from_url(
///     "zookeepers://app:s3cret@10.0.0.1:2281/locks\
///      ?ca=/etc/zk/ca.pem&cert=/etc/zk/app.pem&key=/etc/zk/app.key&auth=sasl",
/// ).unwrap();
/// assert!(secure.tls.is_some());
/// assert_eq!(secure.auth.unwrap().scheme, dlock_zookeeper::AuthScheme::Sasl);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ZooKeeperConfig {
    /// `host:port` of every server of the ensemble.
    pub hosts: Vec<String>,
    /// The node every path of this client lives under (`/app`), created if missing.
    pub chroot: Option<String>,
    /// A namespace (`/`-separated segments) every lock is put under, before the lock options'
    /// own prefix: `?prefix=` in the URL, as for every backend.
    pub namespace: String,
    /// The session timeout asked for: the lease of every lock the client holds. The server
    /// may grant a different one (its `minSessionTimeout`/`maxSessionTimeout`); the granted
    /// one is used.
    pub session_timeout: Duration,
    /// How long connecting may take before it fails with [`LockError::Connection`].
    pub connect_timeout: Duration,
    /// Credentials (sent by the `digest` scheme or by SASL, see [`DigestAuth::scheme`]);
    /// nodes the client creates are then readable and writable only by clients with the
    /// same identity (`CREATOR_ALL_ACL`).
    pub auth: Option<DigestAuth>,
    /// TLS settings; `Some` for `zookeepers://` URLs (the servers' `secureClientPort`).
    pub tls: Option<TlsFiles>,
    /// Whose nodes to read and write: dlock's own, or kazoo's or Curator's.
    pub layout: Layout,
}

/// Whose lock nodes a client reads and writes: dlock's own layout, or another library's, so
/// that dlock and that library exclude each other (URL parameter `layout=`).
///
/// With a foreign layout the lock key *is* the other library's lock path: `k` and `/k` are
/// the same node (as for kazoo and Curator), empty segments are dropped, `.`/`..` are refused,
/// and only the URL's `prefix` and a lock options' prefix other than the default `dlock` are
/// put in front. Keys are therefore no longer escaped: `a/b` under prefix `p` and `b` under
/// prefix `p/a` are one lock, and `list` is not available (locks are not gathered under one
/// node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// `layout=dlock` (the default): `/{prefix}/lock={escaped key}/_c_{uuid}-lock-{seq}`;
    /// every key is a lock of its own and `list` works.
    #[default]
    Dlock,
    /// `layout=kazoo`: kazoo's `Lock(client, path)`: `{path}/{uuid hex}__lock__{seq}`, line
    /// ordered as kazoo orders it (the text of the sequence after `__lock__`, children
    /// without that mark ignored), parents created persistent as kazoo's `ensure_path` does.
    Kazoo,
    /// `layout=curator`: Curator's `InterProcessMutex(client, path)`:
    /// `{path}/_c_{uuid}-lock-{seq}` (the names dlock's own layout already uses), line
    /// ordered as Curator orders it (every child, by the text after its last `lock-`),
    /// parents created as containers.
    Curator,
}

impl Layout {
    /// The name the URL's `layout=` parameter gives it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Dlock => "dlock",
            Layout::Kazoo => "kazoo",
            Layout::Curator => "curator",
        }
    }

    /// The layout `layout=name` names.
    fn from_name(name: &str) -> Option<Layout> {
        [Layout::Dlock, Layout::Kazoo, Layout::Curator]
            .into_iter()
            .find(|layout| layout.name() == name)
    }

    /// Whether it is another library's layout.
    pub fn is_foreign(self) -> bool {
        self != Layout::Dlock
    }
}

/// A user and password, sent by ZooKeeper's `digest` authentication scheme or by SASL
/// DIGEST-MD5 ([`AuthScheme`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DigestAuth {
    /// The user name.
    pub user: String,
    password: String,
    /// How the credentials reach the server.
    pub scheme: AuthScheme,
}

/// How a client proves who it is (URL parameter `auth=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthScheme {
    /// `auth=digest` (the default): `addAuth("digest", "user:password")` on every connection.
    /// The server takes any password and derives the identity `digest:user:{hash}` from it,
    /// so a wrong password is not refused: it is another identity, which cannot touch the
    /// right one's nodes.
    #[default]
    Digest,
    /// `auth=sasl`: SASL DIGEST-MD5 when the connection opens, for servers with
    /// `authProvider.N=org.apache.zookeeper.server.auth.SASLAuthenticationProvider` and a
    /// JAAS `Server { org.apache.zookeeper.server.auth.DigestLoginModule … user_NAME="…"; }`.
    /// The identity is `sasl:user`; the server refuses a wrong password, which fails the
    /// connect with [`LockError::Backend`] (authentication failed) at once.
    Sasl,
}

impl AuthScheme {
    /// The name the URL's `auth=` parameter gives it.
    pub fn name(self) -> &'static str {
        match self {
            AuthScheme::Digest => "digest",
            AuthScheme::Sasl => "sasl",
        }
    }
}

impl DigestAuth {
    /// Credentials for `user`, sent by the `digest` scheme.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        DigestAuth {
            user: user.into(),
            password: password.into(),
            scheme: AuthScheme::Digest,
        }
    }

    /// Credentials for `user`, sent by SASL DIGEST-MD5.
    pub fn sasl(user: impl Into<String>, password: impl Into<String>) -> Self {
        DigestAuth {
            scheme: AuthScheme::Sasl,
            ..DigestAuth::new(user, password)
        }
    }

    /// `user:password`, what the `digest` scheme sends.
    pub(crate) fn credentials(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }

    /// The password, for the SASL exchange.
    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .field("scheme", &self.scheme)
            .finish()
    }
}

/// Files for TLS connections (`zookeepers://`), all PEM: `?ca=` (needed: the ZooKeeper
/// client trusts no system roots), `?cert=` and `?key=` (for servers that check clients,
/// `ssl.clientAuth=need`, the server's default; the key PKCS#8, PKCS#1 or SEC1), named as for
/// every backend. `?domain=` is refused: the client checks each server's certificate against
/// the host it is reached by.
pub use dlock_core::support::TlsFiles;

impl ZooKeeperConfig {
    /// A configuration for `hosts` (`host:port` each) with default timeouts.
    pub fn new(hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ZooKeeperConfig {
            hosts: hosts.into_iter().map(Into::into).collect(),
            chroot: None,
            namespace: String::new(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            auth: None,
            tls: None,
            layout: Layout::Dlock,
        }
    }

    /// The same configuration with another session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Parses `zookeeper://[user:password@]host[:port][,host[:port]…][/chroot][?query]`
    /// (alias `zk://`), or the same with `zookeepers://` (alias `zks://`) for TLS to the
    /// servers' `secureClientPort`. Query parameters: `prefix` (the key namespace),
    /// `session_timeout` and `connect_timeout` (humantime durations such as `10s` or
    /// `500ms`), `layout` (`dlock`, `kazoo` or `curator`, see [`Layout`]), `auth` (`digest`
    /// or `sasl`, see [`AuthScheme`]; needs `user:password@`), and for TLS `ca` (needed),
    /// `cert` and `key` (PEM files, see [`TlsFiles`]); the lock options (`lease`, `wait`, …
    /// see [`BackendUrl::lock_options`]) are left to the locker.
    ///
    /// Bad URLs give [`LockError::InvalidUrl`] with the password replaced by `***`.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = BackendUrl::parse(url, DEFAULT_PORT)?;
        let tls = match parsed.scheme.as_str() {
            "zookeeper" | "zk" => false,
            "zookeepers" | "zks" => true,
            other => {
                return Err(parsed.invalid(format!(
                    "the scheme is `{other}`, expected `zookeeper`, `zk`, `zookeepers` or `zks`"
                )))
            }
        };
        let mut config = ZooKeeperConfig::new(parsed.hosts.iter().map(ToString::to_string));
        config.chroot = parse_chroot(&parsed.path).map_err(|reason| parsed.invalid(reason))?;
        if let Some(user) = &parsed.user {
            let password = parsed.password.clone().ok_or_else(|| {
                parsed.invalid("digest authentication needs user:password before the @")
            })?;
            if user.contains(':') {
                return Err(parsed.invalid("the user name contains `:`"));
            }
            config.auth = Some(DigestAuth::new(user.clone(), password));
        } else if parsed.password.is_some() {
            return Err(parsed.invalid("the user name is empty"));
        }
        config.tls = TlsFiles::from_url(&parsed, tls, "zookeepers://")?
            .map(|files| files.without_domain(&parsed, "ZooKeeper"))
            .transpose()?;
        let mut scheme = None;
        for (name, value) in parsed.backend_params() {
            match name {
                "prefix" => config.namespace = value.trim_matches('/').to_owned(),
                "auth" => {
                    scheme = Some(match value {
                        "digest" => AuthScheme::Digest,
                        "sasl" => AuthScheme::Sasl,
                        other => {
                            return Err(parsed
                                .invalid(format!("auth `{other}` is neither `digest` nor `sasl`")))
                        }
                    })
                }
                name if TlsFiles::PARAMS.contains(&name) => {}
                "session_timeout" => config.session_timeout = parsed.duration(name, value)?,
                "connect_timeout" => config.connect_timeout = parsed.duration(name, value)?,
                "layout" => {
                    config.layout = Layout::from_name(value).ok_or_else(|| {
                        parsed.invalid(format!(
                            "layout `{value}` is none of `dlock`, `kazoo`, `curator`"
                        ))
                    })?;
                }
                other => return Err(parsed.unknown_param(other, KNOWN_PARAMS)),
            }
        }
        match (scheme, config.auth.as_mut()) {
            (None, _) => {}
            (Some(scheme), Some(auth)) => auth.scheme = scheme,
            (Some(_), None) => {
                return Err(parsed.invalid("`auth` needs user:password before the @"));
            }
        }
        config
            .validate()
            .map_err(|error| parsed.invalid(error.to_string()))?;
        Ok(config)
    }

    /// Checks the configuration before connecting.
    pub fn validate(&self) -> Result<()> {
        if self.hosts.is_empty() {
            return Err(LockError::invalid_options("no ZooKeeper host given"));
        }
        if self.session_timeout < dlock_core::MIN_LEASE
            || self.session_timeout > dlock_core::MAX_LEASE
        {
            return Err(LockError::invalid_options(format!(
                "session timeout {:?} is outside {:?}..={:?}",
                self.session_timeout,
                dlock_core::MIN_LEASE,
                dlock_core::MAX_LEASE
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(LockError::invalid_options("connect timeout is zero"));
        }
        if let Some(tls) = &self.tls {
            if tls.ca.is_none() {
                return Err(LockError::invalid_options(
                    "TLS needs the servers' certificate authority (`ca=` a PEM file): \
                     the ZooKeeper client trusts no system roots",
                ));
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(LockError::invalid_options(
                    "a client certificate needs both `cert` and `key`",
                ));
            }
        }
        dlock_core::support::check_namespace(&self.namespace)
    }

    /// `zookeeper[s]://host:port,…[/chroot]` for messages: never credentials.
    pub fn endpoint(&self) -> String {
        let chroot = self.chroot.as_deref().unwrap_or("");
        let scheme = if self.tls.is_some() {
            "zookeepers"
        } else {
            "zookeeper"
        };
        format!("{scheme}://{}{chroot}", self.hosts.join(","))
    }
}

impl fmt::Debug for ZooKeeperConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeperConfig")
            .field("hosts", &self.hosts)
            .field("chroot", &self.chroot)
            .field("namespace", &self.namespace)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("layout", &self.layout)
            .finish()
    }
}

const KNOWN_PARAMS: &[&str] = &[
    "prefix",
    "session_timeout",
    "connect_timeout",
    "layout",
    "auth",
    "ca",
    "cert",
    "key",
];

/// `/a/b` (already decoded) checked as a ZooKeeper path; `/` alone means no chroot.
fn parse_chroot(path: &str) -> std::result::Result<Option<String>, String> {
    let decoded = path.trim_end_matches('/');
    if decoded.is_empty() {
        return Ok(None);
    }
    for segment in decoded[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "the chroot `{decoded}` has an empty, `.` or `..` segment"
            ));
        }
        if segment.chars().any(|c| c.is_control()) {
            return Err(format!(
                "the chroot `{decoded}` contains a control character"
            ));
        }
    }
    Ok(Some(decoded.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn parses_hosts_chroot_auth_and_query() {
        let config =
            ZooKeeperConfig::from_url("zk://u%40x:p%3Aw@h1,h2:2182/a/b?connect_timeout=2s")
                .unwrap();
        assert_eq!(config.hosts, ["h1:2181", "h2:2182"]);
        assert_eq!(config.chroot.as_deref(), Some("/a/b"));
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        let auth = config.auth.unwrap();
        assert_eq!(auth.user, "u@x");
        assert_eq!(auth.credentials(), b"u@x:p:w");
    }

    #[test]
    fn bad_urls_are_typed_errors_without_the_password() {
        for url in [
            "redis://h:1",
            "zookeeper://",
            "zookeeper://h:notaport",
            "zookeeper://h:0",
            "zookeeper://h,,h2",
            "zookeeper://h/a//b",
            "zookeeper://h/a/../b",
            "zookeeper://user:hunter2@h?session_timeout=soon",
            "zookeeper://user:hunter2@h?session_timeout=0s",
            "zookeeper://user:hunter2@h?colour=red",
            "zookeeper://user:hunter2@h?layout=zookeeper",
            "zookeeper://user:hunter2@h?session_timeout=1s&session_timeout=2s",
            "zookeeper://nopassword@h",
            "zookeeper://user:bad%zz@h",
            "zookeeper://user:hunter2@h?auth=kerberos",
            "zookeeper://h?auth=sasl",
            "zookeeper://user:hunter2@h?ca=/ca.pem",
            "zookeepers://user:hunter2@h",
            "zookeepers://user:hunter2@h?ca=/ca.pem&cert=/c.pem",
            "zookeepers://user:hunter2@h?ca=/ca.pem&key=/k.pem",
            "zookeepers://user:hunter2@h?ca=/ca.pem&domain=zk.local",
            "no-scheme",
        ] {
            match ZooKeeperConfig::from_url(url) {
                Err(LockError::InvalidUrl { url: shown, reason }) => {
                    assert!(!shown.contains("hunter2"), "{shown}");
                    assert!(!reason.contains("hunter2"), "{reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn layouts_are_chosen_by_name() {
        for (url, layout) in [
            ("zk://h", Layout::Dlock),
            ("zk://h?layout=dlock", Layout::Dlock),
            ("zk://h?layout=kazoo", Layout::Kazoo),
            ("zk://h?layout=curator&prefix=app", Layout::Curator),
        ] {
            assert_eq!(
                ZooKeeperConfig::from_url(url).unwrap().layout,
                layout,
                "{url}"
            );
        }
    }

    #[test]
    fn tls_urls_carry_their_files_and_sasl_is_chosen_by_name() {
        let config = ZooKeeperConfig::from_url(
            "zookeepers://alice:pw@h1:2281,h2/app?ca=/ca.pem&cert=/c.pem&key=/k.pem&auth=sasl",
        )
        .unwrap();
        assert_eq!(config.hosts, ["h1:2281", "h2:2181"]);
        let tls = config.tls.clone().unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.key, Some(PathBuf::from("/k.pem")));
        let auth = config.auth.clone().unwrap();
        assert_eq!(auth.scheme, AuthScheme::Sasl);
        assert_eq!(auth.password(), "pw");
        assert_eq!(config.endpoint(), "zookeepers://h1:2281,h2:2181/app");
        assert!(!format!("{config:?}").contains("pw\""));
        let plain = ZooKeeperConfig::from_url("zks://h?ca=/ca.pem").unwrap();
        assert!(plain.auth.is_none() && plain.tls.is_some());
        let digest = ZooKeeperConfig::from_url("zk://a:b@h?auth=digest").unwrap();
        assert_eq!(digest.auth.unwrap().scheme, AuthScheme::Digest);
        assert!(ZooKeeperConfig::from_url("zk://a:b@h")
            .unwrap()
            .tls
            .is_none());
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let config = ZooKeeperConfig::from_url("zookeeper://[::1]:2181,[::1]").unwrap();
        assert_eq!(config.hosts, ["[::1]:2181", "[::1]:2181"]);
    }
}
