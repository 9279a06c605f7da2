//! How to reach an etcd cluster: endpoints, credentials, TLS files, namespace and timeouts,
//! built by hand or parsed from an `etcd://` / `etcds://` URL.

use std::fmt;
use std::time::Duration;

#[cfg(doc)]
use dlock_core::LockKey;
use dlock_core::{BackendUrl, LockError};

/// The port etcd listens on for clients unless told otherwise.
pub const DEFAULT_PORT: u16 = 2379;

/// How to reach an etcd cluster.
///
/// ```
/// use std::time::Duration;
/// use dlock_etcd::EtcdConfig;
///
/// let config = EtcdConfig::from_url(
///     "etcds://app:s3cret@10.0.0.1:2379,10.0.0.2:2379?ca=/etc/ssl/etcd-ca.pem&prefix=billing&timeout=2s",
/// )
/// .unwrap();
/// assert_eq!(config.endpoints, ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]);
/// assert_eq!(config.namespace.as_deref(), Some("billing"));
/// assert_eq!(config.request_timeout, Duration::from_secs(2));
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per cluster member.
    pub endpoints: Vec<String>,
    /// The etcd user and password, for clusters with authentication on.
    pub credentials: Option<Credentials>,
    /// TLS settings; `Some` for `etcds://` URLs.
    pub tls: Option<TlsFiles>,
    /// A namespace every lock key is put under, before the lock options' own prefix
    /// (`?prefix=` in the URL).
    pub namespace: Option<String>,
    /// How long to wait for the cluster to answer one request before reporting it
    /// unreachable (`?timeout=`, default 5 s).
    pub request_timeout: Duration,
    /// How long to wait for a connection to be set up (`?connect_timeout=`, default 3 s).
    pub connect_timeout: Duration,
    /// Whose keys the client reads and writes (`?layout=`, default [`Layout::Dlock`]).
    pub layout: Layout,
}

/// Whose keys a client reads and writes: dlock's own layout, or the one of etcd's own lock
/// recipe, so that dlock and that recipe exclude each other (URL parameter `layout=`).
///
/// With [`Layout::EtcdConcurrency`] the lock key *is* the name given to `etcdctl lock NAME`,
/// Go's `concurrency.NewMutex(session, NAME)` or the server's Lock RPC: no escaping, and no
/// dlock prefix. The URL's `prefix` (namespace) and a lock options' prefix other than the
/// default `dlock` are put in front, each followed by `/`, as Go's
/// `namespace.NewKV(kv, "prefix/")` would (an explicit `LockOptions::prefix("dlock")` is
/// indistinguishable from the default and adds nothing either). Every [`LockKey`]
/// (1 to 512 bytes, no control characters; an empty or otherwise bad key is refused by
/// [`LockKey::new`] with [`LockError::InvalidKey`]) is a name Go's
/// Mutex takes too. As for Go, every key under `NAME/` is a contender, whoever wrote it (a
/// lock `a/b` keeps `a` from being granted). Only
/// [`LockMode::Exclusive`](dlock_core::LockMode::Exclusive) locks (and elections) are
/// taken in that layout, and `list` is unsupported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// `layout=dlock` (the default): `{prefix}/{escaped key}/#{lease id, 16 hex}-{slot}`, the
    /// value the owner and times; every mode; `list` works.
    #[default]
    Dlock,
    /// `layout=etcd-concurrency`: etcd's `concurrency.Mutex` (also behind `etcdctl lock`,
    /// the server's Lock RPC and `concurrency.Election`): `{name}/{lease id, hex}` put
    /// under the client's lease, the value the owner description (the leader's value for
    /// an election, Go's Mutex writes an empty one); every key under `{name}/` is a
    /// contender, the lowest create revision holds. One key per lease per name, so a
    /// client's second contender for one name takes a lease of its own.
    EtcdConcurrency,
}

impl Layout {
    /// The name the URL's `layout=` parameter gives it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Dlock => "dlock",
            Layout::EtcdConcurrency => "etcd-concurrency",
        }
    }

    /// The layout `layout=name` names.
    fn from_name(name: &str) -> Option<Layout> {
        [Layout::Dlock, Layout::EtcdConcurrency]
            .into_iter()
            .find(|layout| layout.name() == name)
    }

    /// Whether it is another library's layout.
    pub fn is_foreign(self) -> bool {
        self != Layout::Dlock
    }
}

/// An etcd user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub user: String,
    /// The user's password.
    pub password: String,
}

/// Files for TLS connections (`etcds://`), all PEM: `?ca=`, `?cert=`, `?key=` and
/// `?domain=`, named as for every backend.
pub use dlock_core::support::TlsFiles;

impl EtcdConfig {
    /// A configuration for the given `host:port` addresses, plain text, no credentials.
    pub fn new<S: AsRef<str>>(addresses: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: addresses
                .into_iter()
                .map(|a| format!("http://{}", a.as_ref()))
                .collect(),
            credentials: None,
            tls: None,
            namespace: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            layout: Layout::Dlock,
        }
    }

    /// Parses `etcd://[user:password@]host:port[,host:port…][/][?option=value&…]` or the same
    /// with `etcds://` for TLS. Options: `prefix`, `timeout`, `connect_timeout` (humantime
    /// durations such as `500ms`, `2s`), `layout` (`dlock` or `etcd-concurrency`, see
    /// [`Layout`]), and for TLS `ca`, `cert`, `key`, `domain`.
    ///
    /// Errors are [`LockError::InvalidUrl`], showing the URL with its password replaced
    /// by `***`.
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        parse(&BackendUrl::parse(url, DEFAULT_PORT)?)
    }

    /// The endpoints as one string, for error messages (never contains credentials).
    pub(crate) fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("namespace", &self.namespace)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("layout", &self.layout)
            .finish()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

fn parse(url: &BackendUrl) -> Result<EtcdConfig, LockError> {
    let tls = match url.scheme.as_str() {
        "etcd" => false,
        "etcds" => true,
        other => {
            return Err(url.invalid(format!("unknown scheme `{other}`: use etcd:// or etcds://")))
        }
    };
    if !url.path.is_empty() && url.path != "/" {
        return Err(url.invalid(format!(
            "unexpected path `{}`: put a key namespace in `?prefix=`",
            url.path
        )));
    }
    let mut config = EtcdConfig::new(Vec::<String>::new());
    config.credentials = match (&url.user, &url.password) {
        (None, None) => None,
        (Some(user), Some(password)) => Some(Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        (None, Some(_)) => return Err(url.invalid("the user name is empty")),
        (Some(_), None) => return Err(url.invalid("credentials must be user:password")),
    };
    let http = if tls { "https" } else { "http" };
    config.endpoints = url.hosts.iter().map(|h| format!("{http}://{h}")).collect();
    config.tls = TlsFiles::from_url(url, tls, "etcds://")?;
    for (name, value) in url.backend_params() {
        match name {
            "prefix" | "namespace" => {
                if value.chars().any(char::is_control) {
                    return Err(url.invalid("the prefix contains a control character"));
                }
                config.namespace =
                    Some(value.trim_matches('/').to_owned()).filter(|p| !p.is_empty());
            }
            "timeout" => config.request_timeout = url.duration(name, value)?,
            "connect_timeout" => config.connect_timeout = url.duration(name, value)?,
            "layout" => {
                config.layout = Layout::from_name(value).ok_or_else(|| {
                    url.invalid(format!(
                        "layout `{value}` is none of `dlock`, `etcd-concurrency`"
                    ))
                })?;
            }
            name if TlsFiles::PARAMS.contains(&name) => {}
            other => return Err(url.unknown_param(other, KNOWN_PARAMS)),
        }
    }
    Ok(config)
}

const KNOWN_PARAMS: &[&str] = &[
    "prefix",
    "timeout",
    "connect_timeout",
    "layout",
    "ca",
    "cert",
    "key",
    "domain",
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn parses_hosts_credentials_and_options() {
        let config = EtcdConfig::from_url(
            "etcd://u%40x:p%3Aw@127.0.0.1:1,localhost?prefix=/a/b/&connect_timeout=250ms",
        )
        .unwrap();
        assert_eq!(
            config.endpoints,
            ["http://127.0.0.1:1", "http://localhost:2379"]
        );
        let credentials = config.credentials.unwrap();
        assert_eq!(
            (credentials.user.as_str(), credentials.password.as_str()),
            ("u@x", "p:w")
        );
        assert_eq!(config.namespace.as_deref(), Some("a/b"));
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert!(config.tls.is_none());
        let v6 = EtcdConfig::from_url("etcd://[::1]:2380/").unwrap();
        assert_eq!(v6.endpoints, ["http://[::1]:2380"]);
    }

    #[test]
    fn rejects_bad_urls_without_showing_the_password() {
        for url in [
            "redis://u:hunter2@h:1",
            "etcd://u:hunter2@h:notaport",
            "etcd://u:hunter2@h:1/some/path",
            "etcd://u:hunter2@h:1?bogus=1",
            "etcd://u:hunter2@h:1?layout=",
            "etcd://u:hunter2@h:1?layout=kazoo",
            "etcd://u:hunter2@h:1?layout=Etcd-Concurrency",
            "etcd://u:hunter2@h:1?layout=etcd_concurrency",
            "etcd://u:hunter2@h:1?timeout=soon",
            "etcd://u:hunter2@h:1?timeout=0s",
            "etcd://u:hunter2@h:1?ca=/x.pem",
            "etcd://u:hunter2@h:1,,h:2",
            "etcd://u:hunter2@:1",
            "etcd://u:hunter2@h%20x:1",
            "etcd://:hunter2@h:1",
            "etcds://u:hunter2@h:1?cert=/c.pem",
            "etcd://u:hunter2@h:0",
            "etcd://u:hunter2%zz@h:1",
            "h:1",
        ] {
            match EtcdConfig::from_url(url) {
                Err(error @ LockError::InvalidUrl { .. }) => {
                    let shown = format!("{error} {error:?}");
                    assert!(!shown.contains("hunter2"), "{shown}");
                }
                other => panic!("{url}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn layouts_are_chosen_by_name() {
        for (url, layout) in [
            ("etcd://h", Layout::Dlock),
            ("etcd://h?layout=dlock", Layout::Dlock),
            ("etcd://h?layout=etcd-concurrency", Layout::EtcdConcurrency),
            (
                "etcds://h?prefix=app&layout=etcd-concurrency&timeout=2s",
                Layout::EtcdConcurrency,
            ),
        ] {
            let config = EtcdConfig::from_url(url).unwrap();
            assert_eq!(config.layout, layout, "{url}");
            assert_eq!(
                EtcdConfig::from_url(&format!("etcd://h?layout={}", layout.name()))
                    .unwrap()
                    .layout,
                layout
            );
        }
        assert_eq!(EtcdConfig::new(["h:1"]).layout, Layout::Dlock);
        assert!(Layout::EtcdConcurrency.is_foreign() && !Layout::Dlock.is_foreign());
    }

    #[test]
    fn tls_urls_carry_their_files() {
        let config =
            EtcdConfig::from_url("etcds://h:1?ca=/ca.pem&cert=/c.pem&key=/k.pem&domain=etcd.local")
                .unwrap();
        assert_eq!(config.endpoints, ["https://h:1"]);
        let tls = config.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.domain.as_deref(), Some("etcd.local"));
    }
}
