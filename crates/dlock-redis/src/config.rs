//! Where the Redis servers are and how to talk to them, parsed from a backend URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use dlock_core::support::TlsFiles;
use dlock_core::{BackendUrl, LockError, Result};

/// How a [`RedisBackend`](crate::RedisBackend) reaches its server(s).
///
/// Usually made from a URL with [`RedisConfig::from_url`]:
///
/// | URL | meaning |
/// |-----|---------|
/// | `redis://[user:password@]host:port[/db]` | one instance |
/// | `rediss://…` | one instance over TLS |
/// | `redis+redlock://host1:port,host2:port,host3:port` | Redlock over independent instances |
/// | `rediss+redlock://…` | Redlock over TLS |
/// | `redis+sentinel://s1:26379,s2:26379,s3:26379/<master-name>` | the primary a Sentinel deployment names, followed across failovers |
/// | `rediss+sentinel://…` | the same, TLS to the sentinels and the primary |
/// | `redis+cluster://h1:7000,h2:7001,…` | a Redis Cluster, found from any of these seed nodes |
/// | `rediss+cluster://…` | the same over TLS |
///
/// Query parameters: `prefix` (a namespace put in front of every Redis key this client uses),
/// `connect_timeout`, `response_timeout` and `retry_limit` (humantime durations: `500ms`,
/// `10s`), `drift_factor` (Redlock's allowance for clock drift, a fraction of the lease,
/// default `0.01`), the TLS files of `rediss://` URLs as for every backend (`ca`, a PEM file
/// of the CA that signed the server's certificate, instead of the system's roots; `cert` and
/// `key`, a client certificate; `tls_ca` is the older name of `ca`) and `layout` (`dlock`,
/// the default, or `redis-standard`: see [`Layout`]).
///
/// ```
/// use dlock_redis::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://:s3cret@127.0.0.1:6379/2?prefix=billing").unwrap();
/// assert_eq!(config.endpoints.len(), 1);
/// assert_eq!(config.namespace, "billing");
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert!(RedisConfig::from_url("redis://127.0.0.1:6379?bogus=1").is_err());
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    /// The instances: one for a single server, three or more (odd) for Redlock.
    pub endpoints: Vec<Endpoint>,
    /// Redlock (a quorum of independent instances) rather than one instance.
    pub redlock: bool,
    /// A Redis Cluster: `endpoints` are seed nodes, and each lock lives on the primary that
    /// owns its slot.
    pub cluster: bool,
    /// Talk TLS to every instance.
    pub tls: bool,
    /// The PEM files of a TLS connection, named as for every backend: `?ca=` the CA
    /// certificate(s) to trust instead of the system's roots (`?tls_ca=` is its older name),
    /// `?cert=` and `?key=` a client certificate for servers that check clients
    /// (`tls-auth-clients`). `?domain=` is refused: the client checks the name it connects to.
    pub tls_files: TlsFiles,
    /// The ACL user name, if any.
    pub username: Option<String>,
    /// The password (never printed).
    pub password: Option<String>,
    /// The logical database.
    pub db: i64,
    /// A namespace put in front of every key this client uses in Redis.
    pub namespace: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one command may wait for its reply before it counts as a connection failure.
    pub response_timeout: Duration,
    /// How long a waiting `acquire` keeps retrying after connection failures before it gives
    /// the error to the caller (its wait limit, if shorter, wins).
    pub retry_limit: Duration,
    /// Redlock's clock drift allowance, as a fraction of the lease (plus 2 ms).
    pub drift_factor: f64,
    /// Sentinel: the name of the primary the sentinels monitor. Then `endpoints` holds the
    /// sentinels, and the client talks to one instance, the primary they name.
    pub sentinel_master: Option<String>,
    /// Whose keys the client reads and writes: dlock's own, or the standard layout of
    /// redsync, node-redlock, rslock and redis-py (URL parameter `layout=`).
    pub layout: Layout,
}

/// Whose keys a Redis client reads and writes: dlock's own layout, or the standard one other
/// libraries share, so that dlock and those libraries exclude each other (URL parameter
/// `layout=`).
///
/// **`layout=redis-standard`** is the layout of redsync, node-redlock, rslock, redis-py's
/// `Lock` and many hand-written scripts: the lock is one string key, taken with
/// `SET <key> <value> NX PX <lease ms>`, released by a compare-and-delete script and extended
/// by a compare-and-pexpire script. The value is unique to the acquisition (the client's 64
/// random bits and a sequence number, then the acquisition time and the owner description on
/// lines of their own; the others only ever compare a value with their own token). With it:
///
/// - **The key is the other library's lock name exactly**: no dlock prefix, no hash tag, no
///   escaping. The URL's `prefix` and a lock options' prefix other than the default `dlock`
///   are put in front of it *as they are*, without a separator (like ioredis's `keyPrefix`):
///   `?prefix=app:` and key `job` is the Redis key `app:job`. Two different (prefix, key)
///   pairs can therefore name one key (`a:` + `b` and `a` + `:b`).
/// - **Kept**: mutual exclusion with every client of the layout, on one instance and on
///   Redlock (redsync and node-redlock write the same key on each of N instances); fencing
///   tokens that grow among dlock holders, from a counter the others ignore, bumped in the
///   acquire script (`{<key>}:dlock-fence`: the braces put it in the key's Redis Cluster slot;
///   a key with a hash tag `{t}` has its counter at `{t}:dlock-fence:<key>`, and a key with a
///   `}` but no tag, which no other name can share a slot with, at `dlock-fence:<key>`);
///   lost-lock detection (the keepalive's compare-and-pexpire finds another value); owner
///   description and acquisition time of dlock holders in `report`; elections among dlock
///   clients (the leader's value is the owner description in the lock's own value).
/// - **Given up**: a waiting line (so no FIFO across libraries or among dlock waiters, no
///   waiter counts in `report`, and no hand-over: a release frees the key and every waiter
///   tries again), shared and permit modes (exclusive only), `list` (the keys are anywhere).
///   A foreign holder's report has no owner and no fencing token: its value is its secret.
/// - **Waking**: nothing tells a waiter that another library released the key, so a dlock
///   waiter listens on the key's keyspace channel (`__keyspace@<db>__:<key>`) when the server
///   publishes keyspace events for it (`notify-keyspace-events` with `K` and `g`, `$`, `x`,
///   or `A` for all three, e.g. `KA`), subscribing before it looks at the key; otherwise (or
///   when `CONFIG GET` is refused) it polls: 10–20 ms after its first look, the period
///   doubling up to 100–200 ms (jittered, the core's `Backoff`).
///   The client never changes the server's configuration; it reads it when it connects to
///   each instance, and [`Capabilities::server_wakeup`](dlock_core::Capabilities) says which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// `layout=dlock` (the default): `dlock:{<namespace>|<prefix>/<key>}:lock` and the keys
    /// of its line, fence counter and index (see the crate documentation).
    #[default]
    Dlock,
    /// `layout=redis-standard`: `SET <key> <value> NX PX <ms>` on the key itself, as redsync,
    /// node-redlock, rslock and redis-py's `Lock` do (see [`Layout`]).
    RedisStandard,
}

impl Layout {
    /// The name the URL's `layout=` parameter gives it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Dlock => "dlock",
            Layout::RedisStandard => "redis-standard",
        }
    }

    /// Whether it is another library's layout.
    pub fn is_foreign(self) -> bool {
        self != Layout::Dlock
    }

    /// Whether dlock's scripts keep a waiting line for the lock (and a watchers set and an
    /// index of held locks beside it): hand-over to the first live waiter, FIFO, waiter
    /// counts, `list`, modes. Only in dlock's own layout: the others' keys have none of it.
    pub(crate) fn has_line(self) -> bool {
        self == Layout::Dlock
    }

    /// The layout the URL's `layout=` parameter names, if any.
    fn from_name(name: &str) -> Option<Layout> {
        [Layout::Dlock, Layout::RedisStandard]
            .into_iter()
            .find(|layout| layout.name() == name)
    }
}

/// One Redis instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl RedisConfig {
    /// One plain instance at `host:port`, with the defaults.
    pub fn single(host: impl Into<String>, port: u16) -> Self {
        RedisConfig {
            endpoints: vec![Endpoint {
                host: host.into(),
                port,
            }],
            redlock: false,
            cluster: false,
            tls: false,
            tls_files: TlsFiles::default(),
            username: None,
            password: None,
            db: 0,
            namespace: String::new(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            retry_limit: Duration::from_secs(10),
            drift_factor: 0.01,
            sentinel_master: None,
            layout: Layout::Dlock,
        }
    }

    /// Parses a `redis://`, `rediss://`, `redis+redlock://`, `rediss+redlock://`,
    /// `redis+sentinel://`, `rediss+sentinel://`, `redis+cluster://` or `rediss+cluster://`
    /// URL.
    ///
    /// Errors are [`LockError::InvalidUrl`] with any password replaced by `***`.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = BackendUrl::parse(url, 6379)?;
        let scheme = parsed.scheme.as_str();
        let unknown = || parsed.invalid(format!("unknown scheme `{scheme}`"));
        let (base, topology) = match scheme.split_once('+') {
            Some((base, topology)) => (base, Some(topology)),
            None => (scheme, None),
        };
        let tls = match base {
            "redis" => false,
            "rediss" => true,
            _ => return Err(unknown()),
        };
        let (redlock, sentinel, cluster) = match topology {
            None => (false, false, false),
            Some("redlock") => (true, false, false),
            Some("sentinel") => (false, true, false),
            Some("cluster") => (false, false, true),
            Some(_) => return Err(unknown()),
        };
        let endpoints: Vec<Endpoint> = parsed
            .hosts
            .iter()
            .map(|host| Endpoint {
                host: host
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: host.port,
            })
            .collect();
        if !redlock && !sentinel && !cluster && endpoints.len() != 1 {
            return Err(parsed.invalid("several hosts need the `redis+redlock://` scheme"));
        }
        if redlock && (endpoints.len() < 3 || endpoints.len().is_multiple_of(2)) {
            return Err(parsed.invalid(format!(
                "Redlock needs an odd number of instances, at least 3 (got {})",
                endpoints.len()
            )));
        }
        let first = endpoints[0].clone();
        let mut config = RedisConfig {
            endpoints,
            redlock,
            cluster,
            tls,
            username: parsed.user.clone(),
            password: parsed.password.clone(),
            ..RedisConfig::single(first.host, first.port)
        };
        match parsed.path.trim_matches('/') {
            "" if sentinel => {
                return Err(
                    parsed.invalid("name the primary: `redis+sentinel://hosts/<master-name>`")
                )
            }
            master if sentinel => config.sentinel_master = Some(master.to_owned()),
            "" => {}
            _ if cluster => {
                return Err(parsed.invalid("Redis Cluster has one database: drop the `/db` path"))
            }
            db => {
                config.db = db
                    .parse()
                    .map_err(|_| parsed.invalid(format!("the database `{db}` is not a number")))?
            }
        }
        if let Some(files) = TlsFiles::from_url(&parsed, tls, "rediss://")? {
            config.tls_files = files.without_domain(&parsed, "Redis")?;
        }
        for (name, value) in parsed.backend_params() {
            match name {
                "prefix" => config.namespace = value.to_owned(),
                "connect_timeout" => config.connect_timeout = parsed.duration(name, value)?,
                "response_timeout" => config.response_timeout = parsed.duration(name, value)?,
                "retry_limit" => config.retry_limit = parsed.duration(name, value)?,
                "tls_ca" if !tls => {
                    return Err(parsed.invalid("`tls_ca` needs TLS: use rediss://"));
                }
                "tls_ca" => config.tls_files.ca = Some(PathBuf::from(value)),
                name if TlsFiles::PARAMS.contains(&name) => {}
                "layout" => {
                    config.layout = Layout::from_name(value).ok_or_else(|| {
                        parsed.invalid(format!(
                            "layout `{value}` is neither `dlock` nor `redis-standard`"
                        ))
                    })?
                }
                "drift_factor" => {
                    config.drift_factor = value
                        .parse()
                        .ok()
                        .filter(|f: &f64| (0.0..0.5).contains(f))
                        .ok_or_else(|| {
                            parsed.invalid(format!("`drift_factor={value}` is not in 0 ..< 0.5"))
                        })?
                }
                other => {
                    return Err(parsed.unknown_param(
                        other,
                        &[
                            "prefix",
                            "connect_timeout",
                            "response_timeout",
                            "retry_limit",
                            "ca",
                            "cert",
                            "key",
                            "tls_ca",
                            "drift_factor",
                            "layout",
                        ],
                    ))
                }
            }
        }
        config.validate().map_err(|e| match e {
            LockError::InvalidOptions { reason } => parsed.invalid(reason),
            other => other,
        })?;
        Ok(config)
    }

    /// Checks the values a URL or a caller set.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(LockError::invalid_options("no Redis instance given"));
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(LockError::invalid_options("a timeout of zero"));
        }
        dlock_core::support::check_namespace(&self.namespace)
    }

    /// How many instances must agree: all of one, or a majority for Redlock.
    pub fn quorum(&self) -> usize {
        self.instances() / 2 + 1
    }

    /// How many instances the client takes locks on: one behind Sentinel (whatever the
    /// number of sentinels) and one cluster (whatever the number of seed nodes), else one
    /// per endpoint.
    pub fn instances(&self) -> usize {
        if self.sentinel_master.is_some() || self.cluster {
            1
        } else {
            self.endpoints.len()
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("endpoints", &self.endpoints)
            .field("redlock", &self.redlock)
            .field("cluster", &self.cluster)
            .field("tls", &self.tls)
            .field("tls_files", &self.tls_files)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retry_limit", &self.retry_limit)
            .field("drift_factor", &self.drift_factor)
            .field("sentinel_master", &self.sentinel_master)
            .field("layout", &self.layout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let single = RedisConfig::from_url("redis://127.0.0.1:7000/3").unwrap();
        assert_eq!(single.endpoints[0].port, 7000);
        assert_eq!(single.db, 3);
        assert!(!single.tls && !single.redlock);
        let tls = RedisConfig::from_url("rediss://user:pw@localhost?tls_ca=/tmp/ca.pem").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.username.as_deref(), Some("user"));
        assert_eq!(tls.password.as_deref(), Some("pw"));
        assert_eq!(tls.endpoints[0].port, 6379);
        assert_eq!(tls.tls_files.ca, Some(PathBuf::from("/tmp/ca.pem")));
        let client =
            RedisConfig::from_url("rediss://localhost?ca=/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!(client.tls_files.cert, Some(PathBuf::from("/c.pem")));
        for plain in [
            "redis://localhost?ca=/ca.pem",
            "redis://localhost?tls_ca=/ca.pem",
        ] {
            assert!(
                matches!(
                    RedisConfig::from_url(plain),
                    Err(LockError::InvalidUrl { .. })
                ),
                "{plain}"
            );
        }
        for bad in [
            "rediss://localhost?cert=/c.pem",
            "rediss://localhost?domain=x",
        ] {
            assert!(
                matches!(
                    RedisConfig::from_url(bad),
                    Err(LockError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        let redlock =
            RedisConfig::from_url("redis+redlock://a:1,b:2,c:3?response_timeout=250ms").unwrap();
        assert!(redlock.redlock);
        assert_eq!(redlock.endpoints.len(), 3);
        assert_eq!(redlock.quorum(), 2);
        assert_eq!(redlock.response_timeout, Duration::from_millis(250));
        let sentinel =
            RedisConfig::from_url("redis+sentinel://:pw@a:26379,b:26380,c:26381/primary").unwrap();
        assert_eq!(sentinel.sentinel_master.as_deref(), Some("primary"));
        assert_eq!(sentinel.endpoints.len(), 3);
        assert_eq!((sentinel.instances(), sentinel.quorum()), (1, 1));
        assert!(!sentinel.redlock && !sentinel.tls);
        assert!(
            RedisConfig::from_url("rediss+sentinel://a:1/m")
                .unwrap()
                .tls
        );
        let cluster = RedisConfig::from_url("redis+cluster://a:7000,b:7001,c:7002").unwrap();
        assert!(cluster.cluster && !cluster.redlock && !cluster.tls);
        assert_eq!(cluster.endpoints.len(), 3);
        assert_eq!((cluster.instances(), cluster.quorum()), (1, 1));
        let seed = RedisConfig::from_url("rediss+cluster://a:7000?ca=/ca.pem").unwrap();
        assert!(seed.cluster && seed.tls);
    }

    #[test]
    fn rejects_bad_urls_without_showing_the_password() {
        for url in [
            "redis://:hunter2@h:1/notanumber",
            "redis://:hunter2@h:1?what=ever",
            "redis://:hunter2@h:1,h:2",
            "redis+redlock://:hunter2@h:1,h:2",
            "redis+sentinel://:hunter2@h:1,h:2",
            "redis+cluster://:hunter2@h:1,h:2/3",
            "redis+clustr://:hunter2@h:1",
            "redis+redlock+cluster://:hunter2@h:1",
            "http://:hunter2@h:1",
            "redis://:hunter2@h:99999",
            "redis://:hunter2@h:1?connect_timeout=soon",
            "redis://:hunter2@h:1?layout=redsync",
            "redis://:hunter2@h:1?layout=",
            "redis://:hunter2@h:1?layout=Redis-Standard",
            "redis://:hunter2@h:1?layout=dlock&layout=redis-standard",
        ] {
            let error = RedisConfig::from_url(url).unwrap_err();
            assert!(
                matches!(error, LockError::InvalidUrl { .. }),
                "{url}: {error:?}"
            );
            assert!(!error.to_string().contains("hunter2"), "{error}");
            assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
        }
    }

    #[test]
    fn layouts_are_chosen_by_name() {
        for (url, layout) in [
            ("redis://h", Layout::Dlock),
            ("redis://h?layout=dlock", Layout::Dlock),
            ("redis://h?layout=redis-standard", Layout::RedisStandard),
            (
                "redis+redlock://a,b,c?layout=redis-standard&prefix=app:",
                Layout::RedisStandard,
            ),
            (
                "redis+sentinel://s1,s2/primary?layout=redis-standard",
                Layout::RedisStandard,
            ),
        ] {
            assert_eq!(RedisConfig::from_url(url).unwrap().layout, layout, "{url}");
        }
        assert_eq!(Layout::RedisStandard.name(), "redis-standard");
        assert!(Layout::RedisStandard.is_foreign() && !Layout::Dlock.is_foreign());
    }
}
