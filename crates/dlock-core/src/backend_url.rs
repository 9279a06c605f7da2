//! Backend URLs taken apart once, the same way for every backend:
//! `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?name=value&…]`.

use std::fmt;
use std::time::Duration;

use crate::error::{LockError, Result};
use crate::options::LockOptions;

/// The query parameters that are lock options, the same for every backend: read once by
/// [`BackendUrl::lock_options`], skipped by backends ([`BackendUrl::backend_params`]).
/// (`prefix` is not among them: it names the client's key namespace, which each backend
/// reads, so one URL names the same server keys through every entry point.)
pub const LOCK_OPTION_PARAMS: &[&str] = &[
    "lease",
    "ttl",
    "wait",
    "keepalive",
    "keepalive_interval",
    "owner",
];

/// A backend URL split into its parts, percent-decoded, with the password kept out of every
/// message ([`BackendUrl::redacted`]).
///
/// ```
/// use dlock_core::BackendUrl;
///
/// let url = BackendUrl::parse("zk://app:s%40cret@h1:2182,h2/locks?session_timeout=5s", 2181).unwrap();
/// assert_eq!(url.scheme, "zk");
/// assert_eq!(url.user.as_deref(), Some("app"));
/// assert_eq!(url.password.as_deref(), Some("s@cret"));
/// assert_eq!(url.hosts[1].to_string(), "h2:2181");
/// assert_eq!(url.path, "/locks");
/// assert_eq!(url.params, [("session_timeout".to_owned(), "5s".to_owned())]);
/// assert_eq!(url.redacted(), "zk://app:***@h1:2182,h2/locks?session_timeout=5s");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// The scheme, lower-cased.
    pub scheme: String,
    /// The user of the userinfo, decoded.
    pub user: Option<String>,
    /// The password of the userinfo, decoded.
    pub password: Option<String>,
    /// One or more hosts, in the order given.
    pub hosts: Vec<HostPort>,
    /// What follows the hosts up to the query, decoded: empty or starting with `/`.
    pub path: String,
    /// The query's parameters, decoded, each name at most once.
    pub params: Vec<(String, String)>,
    redacted: String,
}

/// One `host:port` of a URL; IPv6 addresses keep their brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl BackendUrl {
    /// Takes `url` apart, giving hosts without a port `default_port`. Fragments, empty
    /// hosts, bad ports, broken escapes and repeated parameters are [`LockError::InvalidUrl`].
    pub fn parse(url: &str, default_port: u16) -> Result<Self> {
        let parsed = Self::parse_any(url, default_port)?;
        if parsed.hosts.is_empty() {
            return Err(parsed.invalid("a host is missing (expected host[:port][,host[:port]…])"));
        }
        Ok(parsed)
    }

    /// Like [`BackendUrl::parse`], but a URL without hosts (`memory://?lease=5s`) is accepted
    /// with an empty host list.
    pub fn parse_any(url: &str, default_port: u16) -> Result<Self> {
        let redacted = redact_url(url);
        let invalid = |reason: String| LockError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://host…".into()))?;
        if rest.contains('#') {
            return Err(invalid("a fragment (#…) means nothing here".into()));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority_end = location.find('/').unwrap_or(location.len());
        let (authority, path) = location.split_at(authority_end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                // The decoder's message quotes its input: never let it quote a password.
                let password = password.map(percent_decode).transpose().map_err(|_| {
                    invalid("the password has a broken %-escape or is not UTF-8".into())
                })?;
                (Some(percent_decode(user).map_err(invalid)?), password)
            }
        };
        let hosts = if hosts.is_empty() && userinfo.is_none() {
            Vec::new()
        } else {
            hosts
                .split(',')
                .map(|host| HostPort::parse(host, default_port))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(invalid)?
        };
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if params.iter().any(|(seen, _)| *seen == name) {
                return Err(invalid(format!("query parameter `{name}` is given twice")));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        Ok(BackendUrl {
            scheme: scheme.to_ascii_lowercase(),
            user: user.filter(|u| !u.is_empty()),
            password,
            hosts,
            path: percent_decode(path).map_err(invalid)?,
            params,
            redacted,
        })
    }

    /// The URL as given, with the password replaced by `***`: safe to show and log.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// An [`LockError::InvalidUrl`] about this URL.
    pub fn invalid(&self, reason: impl Into<String>) -> LockError {
        LockError::InvalidUrl {
            url: self.redacted.clone(),
            reason: reason.into(),
        }
    }

    /// The query parameters that are the backend's own: all but [`LOCK_OPTION_PARAMS`].
    pub fn backend_params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .iter()
            .filter(|(name, _)| !LOCK_OPTION_PARAMS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The lock options in the query ([`LOCK_OPTION_PARAMS`]) on top of the defaults,
    /// checked: `lease` (alias `ttl`), `wait` (`0` tries once), `keepalive` (`true`/`false`),
    /// `keepalive_interval` and `owner` (the owner description stored with every lock,
    /// percent-encoded: `owner=billing%20worker%203`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dlock_core::BackendUrl;
    ///
    /// let url = BackendUrl::parse("redis://h?lease=5s&wait=0s&prefix=app", 6379).unwrap();
    /// let options = url.lock_options().unwrap();
    /// assert_eq!(options.lease, Duration::from_secs(5));
    /// assert_eq!(options.wait, Some(Duration::ZERO));
    /// // `prefix` is the backend's key namespace, not the lock options' prefix.
    /// assert_eq!(options.prefix, dlock_core::LockOptions::default().prefix);
    /// assert_eq!(options.owner, None);
    ///
    /// let url = BackendUrl::parse("etcd://h?owner=cron%40web-3", 2379).unwrap();
    /// assert_eq!(url.lock_options().unwrap().owner.as_deref(), Some("cron@web-3"));
    /// ```
    pub fn lock_options(&self) -> Result<LockOptions> {
        let mut options = LockOptions::default();
        for (name, value) in &self.params {
            match name.as_str() {
                "lease" | "ttl" => options.lease = self.duration(name, value)?,
                "wait" => options.wait = Some(self.duration_or_zero(name, value)?),
                "keepalive_interval" => {
                    options.keepalive_interval = Some(self.duration(name, value)?)
                }
                "owner" => options.owner = Some(value.clone()),
                "keepalive" => {
                    options.keepalive = match value.as_str() {
                        "true" | "on" | "1" => true,
                        "false" | "off" | "0" => false,
                        other => {
                            return Err(self.invalid(format!(
                                "keepalive must be true or false, not `{other}`"
                            )))
                        }
                    }
                }
                _ => {}
            }
        }
        options
            .validate()
            .map_err(|error| self.invalid(error.to_string()))?;
        Ok(options)
    }

    /// A query value read as a duration (`500ms`, `10s`, `2m`), which must not be zero.
    pub fn duration(&self, name: &str, value: &str) -> Result<Duration> {
        match humantime::parse_duration(value) {
            Ok(duration) if !duration.is_zero() => Ok(duration),
            Ok(_) => Err(self.invalid(format!("`{name}` must be longer than zero"))),
            Err(error) => Err(self.invalid(format!(
                "`{name}={value}` is not a duration like 500ms, 10s or 2m: {error}"
            ))),
        }
    }

    /// A query value read as a duration, zero included.
    fn duration_or_zero(&self, name: &str, value: &str) -> Result<Duration> {
        humantime::parse_duration(value).map_err(|error| {
            self.invalid(format!(
                "`{name}={value}` is not a duration like 500ms, 10s or 2m: {error}"
            ))
        })
    }

    /// The error for a query parameter this backend does not know, listing those it does.
    pub fn unknown_param(&self, name: &str, known: &[&str]) -> LockError {
        self.invalid(format!(
            "unknown query parameter `{name}` (known here: {})",
            known.join(", ")
        ))
    }
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl HostPort {
    fn parse(text: &str, default_port: u16) -> std::result::Result<Self, String> {
        if text.is_empty() {
            return Err("a host is missing (expected host[:port][,host[:port]…])".into());
        }
        let (host, port) = match text.rsplit_once(':') {
            // `[::1]` alone has colons but no port; `::1` without brackets is not a host.
            Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
            _ => (text, None),
        };
        let valid = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            None => {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            }
        };
        if !valid {
            return Err(format!("`{text}` is not a host name or address"));
        }
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("`{port}` in `{text}` is not a port number"))?,
        };
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `url` with the password of its userinfo replaced by `***`.
///
/// ```
/// assert_eq!(dlock_core::redact_url("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
/// assert_eq!(dlock_core::redact_url("etcd://h1,h2"), "etcd://h1,h2");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{hosts}{tail}")
        }
        _ => url.to_owned(),
    }
}

fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("`{text}` has a broken %-escape"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_every_part() {
        let url =
            BackendUrl::parse("rediss://user:p%3Aw@[::1]:7000,b/3?x=1&y=a%20b", 6379).unwrap();
        assert_eq!(url.user.as_deref(), Some("user"));
        assert_eq!(url.password.as_deref(), Some("p:w"));
        assert_eq!(
            url.hosts[0],
            HostPort {
                host: "[::1]".into(),
                port: 7000
            }
        );
        assert_eq!(url.hosts[1].port, 6379);
        assert_eq!(url.path, "/3");
        assert_eq!(url.params[1], ("y".to_owned(), "a b".to_owned()));
        assert!(!format!("{url:?} {url}").contains("p%3Aw"));
    }

    #[test]
    fn rejects_what_no_backend_can_use() {
        for bad in [
            "no-scheme",
            "redis://",
            "redis://a,,b",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:port",
            "redis://bad host",
            "redis://h#frag",
            "redis://h?a=1&a=2",
            "redis://u:%zz@h",
        ] {
            assert!(
                matches!(BackendUrl::parse(bad, 1), Err(LockError::InvalidUrl { .. })),
                "{bad} must be rejected"
            );
        }
    }

    #[test]
    fn lock_options_are_read_once_and_backends_see_the_rest() {
        let url = BackendUrl::parse_any("memory://?ttl=7s&keepalive=off&x=1&owner=ops%2Fcron+3", 1)
            .unwrap();
        assert!(url.hosts.is_empty());
        let options = url.lock_options().unwrap();
        assert_eq!(options.lease, Duration::from_secs(7));
        assert!(!options.keepalive);
        assert_eq!(options.owner.as_deref(), Some("ops/cron 3"));
        assert_eq!(url.backend_params().collect::<Vec<_>>(), [("x", "1")]);
        for bad in [
            "memory://?lease=forever",
            "memory://?lease=0s",
            "memory://?wait=1s&wait=2s",
            "memory://?keepalive=maybe",
            "memory://?keepalive_interval=0s",
            "memory://?lease=1s&keepalive_interval=2s",
            "memory://?owner=",
            "memory://?owner=a%0Ab",
            "memory://?owner=a%1B%5B31m",
            &format!("memory://?owner={}", "x".repeat(crate::MAX_OWNER_LEN + 1)),
            "memory://#frag",
        ] {
            let outcome = BackendUrl::parse_any(bad, 1).and_then(|url| url.lock_options());
            assert!(
                matches!(outcome, Err(LockError::InvalidUrl { .. })),
                "{bad} must be rejected"
            );
        }
    }

    #[test]
    fn never_shows_the_password() {
        for url in [
            "redis://u:secret@h",
            "redis://:secret@h:1/0?x=1",
            "etcd://u:secret@a,b",
        ] {
            assert!(!redact_url(url).contains("secret"), "{url}");
            let error = BackendUrl::parse(&format!("{url}#frag"), 1).unwrap_err();
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }
}
