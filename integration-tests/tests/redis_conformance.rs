//! The conformance suite against a real `redis-server`: a single instance, Redlock over
//! three independent instances, and Redlock over three of which one is frozen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dlock_conformance::{async_trait, ConformanceTarget};
use dlock_core::{LockBackend, LockError, LockGuard};
use dlock_redis::RedisBackend;
use dlock_test_servers::{free_port, shared_redis, RedisServer};

mod conformance_support;
mod redis_support;

use conformance_support::CountingProxy;

/// Clients of one or more Redis instances (one URL per instance), each reached through a
/// counting proxy of this target's own.
struct RedisTarget {
    /// `redis://…` of a single instance, or `redis+redlock://a,b,c`, through the proxies.
    url: String,
    /// `host:port` of every instance, to tamper with keys from outside.
    addresses: Vec<String>,
    /// Requests sent through the proxies.
    requests: Arc<AtomicU64>,
    _proxies: Vec<CountingProxy>,
}

impl RedisTarget {
    /// A target for the instances at `addresses`: Redlock over them if there are several.
    async fn new(addresses: Vec<String>) -> RedisTarget {
        let requests = Arc::default();
        let mut proxies = Vec::new();
        for address in &addresses {
            proxies.push(CountingProxy::start(address, &requests).await);
        }
        let proxied: Vec<&str> = proxies.iter().map(|p| p.address.as_str()).collect();
        let url = match proxied.as_slice() {
            [single] => format!("redis://{single}"),
            several => format!("redis+redlock://{}", several.join(",")),
        };
        RedisTarget {
            url,
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
        let url = if self.addresses.len() > 1 {
            format!("redis+redlock://127.0.0.1:{port},127.0.0.1:{port},127.0.0.1:{port}")
        } else {
            format!("redis://127.0.0.1:{port}")
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
