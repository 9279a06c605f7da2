//! Where the Redis servers are and how to talk to them, parsed from a backend URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
///
/// Query parameters: `prefix` (a namespace put in front of every Redis key this client uses),
/// `connect_timeout`, `response_timeout` and `retry_limit` (humantime durations: `500ms`,
/// `10s`), `drift_factor` (Redlock's allowance for clock drift, a fraction of the lease,
/// default `0.01`) and `tls_ca` (a PEM file of the CA that signed the server's certificate,
/// instead of the system's roots).
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
    /// Talk TLS to every instance.
    pub tls: bool,
    /// A PEM file with the CA certificate(s) to trust instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
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
            tls: false,
            tls_ca: None,
            username: None,
            password: None,
            db: 0,
            namespace: String::new(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(3),
            retry_limit: Duration::from_secs(10),
            drift_factor: 0.01,
            sentinel_master: None,
        }
    }

    /// Parses a `redis://`, `rediss://`, `redis+redlock://`, `rediss+redlock://`,
    /// `redis+sentinel://` or `rediss+sentinel://` URL.
    ///
    /// Errors are [`LockError::InvalidUrl`] with any password replaced by `***`.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = BackendUrl::parse(url, 6379)?;
        let (tls, redlock, sentinel) = match parsed.scheme.as_str() {
            "redis" => (false, false, false),
            "rediss" => (true, false, false),
            "redis+redlock" => (false, true, false),
            "rediss+redlock" => (true, true, false),
            "redis+sentinel" => (false, false, true),
            "rediss+sentinel" => (true, false, true),
            other => return Err(parsed.invalid(format!("unknown scheme `{other}`"))),
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
        if !redlock && !sentinel && endpoints.len() != 1 {
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
            db => {
                config.db = db
                    .parse()
                    .map_err(|_| parsed.invalid(format!("the database `{db}` is not a number")))?
            }
        }
        for (name, value) in parsed.backend_params() {
            match name {
                "prefix" => config.namespace = value.to_owned(),
                "connect_timeout" => config.connect_timeout = parsed.duration(name, value)?,
                "response_timeout" => config.response_timeout = parsed.duration(name, value)?,
                "retry_limit" => config.retry_limit = parsed.duration(name, value)?,
                "tls_ca" => config.tls_ca = Some(PathBuf::from(value)),
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
                            "tls_ca",
                            "drift_factor",
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
    /// number of sentinels), else one per endpoint.
    pub fn instances(&self) -> usize {
        if self.sentinel_master.is_some() {
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
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retry_limit", &self.retry_limit)
            .field("drift_factor", &self.drift_factor)
            .field("sentinel_master", &self.sentinel_master)
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
    }

    #[test]
    fn rejects_bad_urls_without_showing_the_password() {
        for url in [
            "redis://:hunter2@h:1/notanumber",
            "redis://:hunter2@h:1?what=ever",
            "redis://:hunter2@h:1,h:2",
            "redis+redlock://:hunter2@h:1,h:2",
            "redis+sentinel://:hunter2@h:1,h:2",
            "http://:hunter2@h:1",
            "redis://:hunter2@h:99999",
            "redis://:hunter2@h:1?connect_timeout=soon",
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
}
