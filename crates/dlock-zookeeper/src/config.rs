//! Where the backend connects and how: hosts, chroot, session timeout, digest credentials,
//! and the `zookeeper://` URL that carries them.

use std::fmt;
use std::time::Duration;

use dlock_core::{LockError, Result};

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
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ZooKeeperConfig {
    /// `host:port` of every server of the ensemble.
    pub hosts: Vec<String>,
    /// The node every path of this client lives under (`/app`), created if missing.
    pub chroot: Option<String>,
    /// The session timeout asked for: the lease of every lock the client holds. The server
    /// may grant a different one (its `minSessionTimeout`/`maxSessionTimeout`); the granted
    /// one is used.
    pub session_timeout: Duration,
    /// How long connecting may take before it fails with [`LockError::Connection`].
    pub connect_timeout: Duration,
    /// Digest credentials; nodes the client creates are then readable and writable only by
    /// clients with the same credentials (`CREATOR_ALL_ACL`).
    pub auth: Option<DigestAuth>,
}

/// A user and password for ZooKeeper's `digest` authentication scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestAuth {
    /// The user name.
    pub user: String,
    password: String,
}

impl DigestAuth {
    /// Credentials for `user`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        DigestAuth {
            user: user.into(),
            password: password.into(),
        }
    }

    /// `user:password`, what the `digest` scheme sends.
    pub(crate) fn credentials(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl ZooKeeperConfig {
    /// A configuration for `hosts` (`host:port` each) with default timeouts.
    pub fn new(hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ZooKeeperConfig {
            hosts: hosts.into_iter().map(Into::into).collect(),
            chroot: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            auth: None,
        }
    }

    /// The same configuration with another session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Parses `zookeeper://[user:password@]host[:port][,host[:port]…][/chroot][?query]`
    /// (alias `zk://`). Query parameters: `session_timeout` and `connect_timeout`
    /// (humantime durations such as `10s` or `500ms`).
    ///
    /// Bad URLs give [`LockError::InvalidUrl`] with the password replaced by `***`.
    pub fn from_url(url: &str) -> Result<Self> {
        let redacted = redact(url);
        let invalid = |reason: String| LockError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid("expected zookeeper://host:port[,host:port…][/chroot]".into())
        })?;
        if !scheme.eq_ignore_ascii_case("zookeeper") && !scheme.eq_ignore_ascii_case("zk") {
            return Err(invalid(format!(
                "the scheme is `{scheme}`, expected `zookeeper` or `zk`"
            )));
        }
        if rest.contains('#') {
            return Err(invalid("a fragment (#…) means nothing here".into()));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (userinfo, location) = match location.rsplit_once('@') {
            Some((userinfo, location)) => (Some(userinfo), location),
            None => (None, location),
        };
        let (hosts, chroot) = match location.find('/') {
            Some(slash) => (&location[..slash], Some(&location[slash..])),
            None => (location, None),
        };
        let mut config = ZooKeeperConfig::new(
            hosts
                .split(',')
                .map(host_and_port)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(invalid)?,
        );
        config.chroot = chroot
            .map(parse_chroot)
            .transpose()
            .map_err(invalid)?
            .flatten();
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').ok_or_else(|| {
                invalid("digest authentication needs user:password before the @".into())
            })?;
            let user = percent_decode(user).map_err(invalid)?;
            if user.is_empty() {
                return Err(invalid("the user name is empty".into()));
            }
            if user.contains(':') {
                return Err(invalid("the user name contains `:`".into()));
            }
            config.auth = Some(DigestAuth::new(
                user,
                percent_decode(password).map_err(invalid)?,
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(name.to_string()) {
                return Err(invalid(format!("query parameter `{name}` is given twice")));
            }
            let duration = || {
                humantime::parse_duration(&value).map_err(|error| {
                    invalid(format!(
                        "`{name}={value}` is not a duration like 10s: {error}"
                    ))
                })
            };
            match name.as_ref() {
                "session_timeout" => config.session_timeout = duration()?,
                "connect_timeout" => config.connect_timeout = duration()?,
                other => {
                    return Err(invalid(format!(
                        "unknown query parameter `{other}` (the zookeeper backend reads \
                         session_timeout and connect_timeout)"
                    )))
                }
            }
        }
        config
            .validate()
            .map_err(|error| invalid(error.to_string()))?;
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
        Ok(())
    }

    /// `host:port,…` for messages: never credentials.
    pub fn endpoint(&self) -> String {
        let chroot = self.chroot.as_deref().unwrap_or("");
        format!("zookeeper://{}{chroot}", self.hosts.join(","))
    }
}

impl fmt::Debug for ZooKeeperConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZooKeeperConfig")
            .field("hosts", &self.hosts)
            .field("chroot", &self.chroot)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("auth", &self.auth)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, _)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let after = &rest[userinfo.len()..];
            format!("{scheme}://{user}:***{after}")
        }
        None => url.to_owned(),
    }
}

fn host_and_port(host: &str) -> std::result::Result<String, String> {
    if host.is_empty() {
        return Err("a host is empty (expected host:port[,host:port…])".into());
    }
    // `[::1]:2181` keeps its brackets; a bare IPv6 address has no port.
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port))
            if !name.ends_with(':') && (!name.contains(':') || name.ends_with(']')) =>
        {
            (name, Some(port))
        }
        _ => (host, None),
    };
    if name.is_empty() || name.contains(['@', ' ', '/']) {
        return Err(format!("`{host}` is not a host name"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("`{port}` in `{host}` is not a port number"))?,
        None => DEFAULT_PORT,
    };
    Ok(format!("{name}:{port}"))
}

/// `/a/b` checked as a ZooKeeper path; `/` alone means no chroot.
fn parse_chroot(path: &str) -> std::result::Result<Option<String>, String> {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Ok(None);
    }
    let decoded = percent_decode(path)?;
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
    Ok(Some(decoded))
}

fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| "a `%` is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding that is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
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
            "zookeeper://user:hunter2@h?session_timeout=1s&session_timeout=2s",
            "zookeeper://nopassword@h",
            "zookeeper://user:bad%zz@h",
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
    fn ipv6_hosts_keep_their_brackets() {
        let config = ZooKeeperConfig::from_url("zookeeper://[::1]:2181,[::1]").unwrap();
        assert_eq!(config.hosts, ["[::1]:2181", "[::1]:2181"]);
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(redact("zk://u:pw@h:1/x?y=z"), "zk://u:***@h:1/x?y=z");
        assert_eq!(redact("zk://h:1/x"), "zk://h:1/x");
    }
}
