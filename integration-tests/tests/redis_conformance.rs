//! The conformance suite against a real `redis-server`: a single instance, Redlock over
//! three independent instances, Redlock over three of which one is frozen, and the standard
//! layout of redsync and redis-py (`layout=redis-standard`) on a single instance and on
//! Redlock, with and without keyspace notifications.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard};
use dlock_redis::RedisBackend;
use dlock_test_servers::{free_port, shared_redis, RedisServer};

mod conformance_support;
#[macro_use]
mod redis_support;

use conformance_support::CountingProxy;

/// Clients of one or more Redis instances (one URL per instance), each reached through a
/// counting proxy of this target's own.
struct RedisTarget {
    /// `redis://…` of a single instance, or `redis+redlock://a,b,c`, through the proxies
    /// (with the layout's query, if any).
    url: String,
    /// The URL's query (`?layout=…`), for the unreachable client too.
    query: String,
    /// `host:port` of every instance, to tamper with keys from outside.
    addresses: Vec<String>,
    /// Requests sent through the proxies.
    requests: Arc<AtomicU64>,
    _proxies: Vec<CountingProxy>,
}

impl RedisTarget {
    /// A target for the instances at `addresses`: Redlock over them if there are several.
    async fn new(addresses: Vec<String>) -> RedisTarget {
        RedisTarget::with_query(addresses, "").await
    }

    /// [`RedisTarget::new`] with clients whose URL has `query` (`?layout=redis-standard`).
    async fn with_query(addresses: Vec<String>, query: &str) -> RedisTarget {
        let requests = Arc::default();
        let mut proxies = Vec::new();
        for address in &addresses {
            proxies.push(CountingProxy::start(address, &requests).await);
        }
        let proxied: Vec<&str> = proxies.iter().map(|p| p.address.as_str()).collect();
        let url = match proxied.as_slice() {
            [single] => format!("redis://{single}{query}"),
            several => format!("redis+redlock://{}{query}", several.join(",")),
        };
        RedisTarget {
            url,
            query: query.to_owned(),
            addresses,
            requests,
            _proxies: proxies,
        }
    }
}

#[async_trait]
impl ConformanceTarget for RedisTarget {
    fn short_lease(&self) -> Duration {
        Duration::from_millis(600)
    }

    async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
        Ok(Arc::new(dlock_redis::connect(&self.url).await?))
    }

    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
        let port = free_port();
        let query = &self.query;
        let url = if self.addresses.len() > 1 {
            format!("redis+redlock://127.0.0.1:{port},127.0.0.1:{port},127.0.0.1:{port}{query}")
        } else {
            format!("redis://127.0.0.1:{port}{query}")
        };
        Ok(Arc::new(dlock_redis::connect(&url).await?))
    }

    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
        let backend = dlock_redis::connect(&self.url).await?;
        // The lock's key for an exclusive holder, the holder's own key for a shared or
        // permit one.
        let name = backend.held_key_name(guard.lease())?;
        for address in &self.addresses {
            redis_support::command(address, &["DEL", &name])
                .await
                .expect("DEL the lock's key");
        }
        drop::<RedisBackend>(backend);
        Ok(())
    }

    fn server_requests(&self) -> Option<u64> {
        Some(self.requests.load(Ordering::Relaxed))
    }
}

mod single {
    use super::*;

    dlock_conformance::conformance_tests!(RedisTarget::new(vec![shared_redis().address.clone()]));
}

mod redlock {
    use super::*;

    /// Two more instances next to the shared one, for this test binary.
    fn instances() -> &'static Vec<String> {
        static EXTRA: OnceLock<(Vec<RedisServer>, Vec<String>)> = OnceLock::new();
        &EXTRA
            .get_or_init(|| {
                let servers = vec![RedisServer::start(), RedisServer::start()];
                let mut addresses = vec![shared_redis().address.clone()];
                addresses.extend(servers.iter().map(|s| format!("127.0.0.1:{}", s.port())));
                (servers, addresses)
            })
            .1
    }

    dlock_conformance::conformance_tests!(RedisTarget::new(instances().clone()));
}

/// Redlock over three instances of which one is frozen (SIGSTOP) for the whole run: the
/// contract holds with the majority that answers (issue 9).
mod redlock_frozen_minority {
    use super::*;

    /// The addresses of all three, and of the two that answer (tampering from outside
    /// skips the frozen one, which would never answer).
    type Instances = (Vec<String>, Vec<String>);

    /// Started, and the middle one frozen, on first use.
    fn instances() -> &'static Instances {
        static TRIO: OnceLock<(Vec<RedisServer>, Instances)> = OnceLock::new();
        &TRIO
            .get_or_init(|| {
                let mut servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
                let addresses: Vec<String> = servers
                    .iter()
                    .map(|s| format!("127.0.0.1:{}", s.port()))
                    .collect();
                servers[1].process().pause();
                let live = vec![addresses[0].clone(), addresses[2].clone()];
                (servers, (addresses, live))
            })
            .1
    }

    dlock_conformance::conformance_tests!(async {
        let (all, live) = instances().clone();
        let mut target = RedisTarget::new(all).await;
        target.addresses = live;
        target
    });
}

/// `redis-server` instances of this test binary's own, started on first use: with keyspace
/// notifications on (`KA`), or off (the server's default). The client only reads the setting.
fn own_instances(count: usize, notifications: bool) -> Vec<String> {
    type Started = (Vec<RedisServer>, Vec<String>);
    static ON: OnceLock<Started> = OnceLock::new();
    static OFF: OnceLock<Started> = OnceLock::new();
    let (cell, extra): (_, &[&str]) = if notifications {
        (&ON, &["--notify-keyspace-events", "KA"])
    } else {
        (&OFF, &[])
    };
    let (_, addresses) = cell.get_or_init(|| {
        let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(extra)).collect();
        let addresses = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        (servers, addresses)
    });
    addresses[..count].to_vec()
}

const STANDARD: &str = "?layout=redis-standard";

/// The standard layout on one instance with keyspace notifications: waiters are woken by the
/// key's `del` and `expired` events.
mod standard_layout {
    use super::*;

    standard_layout_suite!(RedisTarget::with_query(own_instances(1, true), STANDARD));
}

/// The standard layout on one instance without keyspace notifications: waiters poll.
mod standard_layout_polling {
    use super::*;

    standard_layout_suite!(RedisTarget::with_query(own_instances(1, false), STANDARD));
}

/// The standard layout on a Redlock quorum of three (redsync's and node-redlock's Redlock),
/// with keyspace notifications.
mod standard_layout_redlock {
    use super::*;

    standard_layout_suite!(RedisTarget::with_query(own_instances(3, true), STANDARD));
}
