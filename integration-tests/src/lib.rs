//! Real servers for dlock's tests: `redis-server`, ZooKeeper and etcd, started as local child
//! processes on free loopback ports (from Debian's packages), in containers when a Docker
//! engine answers, or taken from a URL in the environment.
//!
//! | server    | environment variable       | local binary                          |
//! |-----------|----------------------------|---------------------------------------|
//! | Redis     | `DLOCK_TEST_REDIS_URL`     | `redis-server`                        |
//! | ZooKeeper | `DLOCK_TEST_ZOOKEEPER_URL` | `java` + `/usr/share/java/zookeeper.jar` |
//! | etcd      | `DLOCK_TEST_ETCD_URL`      | `etcd`                                |
//!
//! A server that cannot be had fails the test with a message naming the install script
//! (`scripts/install-test-servers.sh`): tests are never skipped silently, in CI or anywhere.
//!
//! Clusters: [`EtcdCluster`] (three members) and [`ZooKeeperEnsemble`] (three servers) are
//! always local processes, since their tests kill and pause single members; each test
//! binary shares one ([`shared_etcd_cluster`], [`shared_zookeeper_ensemble`]). So is
//! [`SecureZooKeeper`] (a TLS port with a CA made in the test, SASL users;
//! [`shared_secure_zookeeper`]), and [`RedisCluster`] (six `redis-server` cluster nodes,
//! three primaries with a replica each, joined by `redis-cli --cluster create`; slot owners
//! killed, restarted and slots migrated by the test; [`shared_redis_cluster`]).
//!
//! Servers a test starts itself (for fault tests: [`ServerProcess::kill`],
//! [`ServerProcess::pause`], [`ServerProcess::restart`]) are killed when dropped, also when
//! the test panics. Shared servers ([`shared_redis`] and friends) live as long as the test
//! binary; the kernel kills them if it dies and an exit hook removes their files.
//!
//! Other libraries' locks for the layout interop tests: kazoo and Curator ([`ForeignLock`]),
//! etcd's own `etcdctl lock`/`etcdctl elect` ([`EtcdctlLock`]) and Lock RPC ([`RpcSession`]).
//!
//! The fault harness lives here too: [`FaultProxy`] (network faults per client link),
//! [`cancel_at_poll`] (cancellation at a chosen await point), the workload
//! ([`run_client`], the `dlock-workload` binary, [`WorkloadRun`] to run and hurt several of
//! them), the history they write ([`HistoryWriter`]), the [`check`]er, and readers of what a
//! server still holds ([`redis_leftovers`] and friends).
#![deny(missing_docs)]

mod cancel;
mod checker;
mod container;
mod etcd;
mod etcd_cluster;
mod etcd_foreign;
mod foreign_locks;
mod history;
mod leftovers;
mod local;
mod nemesis;
mod process;
mod proxy;
mod redis;
mod redis_cluster;
mod redis_py;
mod resp;
mod sentinel;
mod test_certificates;
mod workload;
mod zookeeper;
mod zookeeper_ensemble;
mod zookeeper_secure;

pub use cancel::{cancel_at_poll, count_polls};
pub use checker::{check, Acquisition, CheckConfig, Report};
pub use etcd::EtcdServer;
pub use etcd_cluster::{shared_etcd_cluster, EtcdCluster};
pub use etcd_foreign::{etcdctl_count, etcdctl_observe, EtcdctlLock, RpcSession, ETCDCTL};
pub use foreign_locks::{foreign_count, foreign_try_lock, Foreign, ForeignLock};
pub use history::{now_micros, read_history, Event, EventKind, HistoryWriter, NEMESIS};
pub use leftovers::{etcd_leftovers, redis_leftovers, zookeeper_leftovers};
pub use local::LocalServer;
pub use nemesis::{ClientSpec, WorkloadRun};
pub use process::{free_port, ProcessGroup, ServerProcess};
pub use proxy::{Direction, FaultProxy, Faults};
pub use redis::RedisServer;
pub use redis_cluster::{shared_redis_cluster, RedisCluster};
pub use redis_py::{redis_py_count, redis_py_hold, redis_py_start, redis_py_try_lock};
pub use sentinel::{SentinelDeployment, SENTINEL_MASTER};
pub use test_certificates::make_test_certificates;
pub use workload::{connect_and_run, fenced_write, run_client, Primitive, WorkloadConfig};
pub use zookeeper::ZooKeeperServer;
pub use zookeeper_ensemble::{shared_zookeeper_ensemble, ZooKeeperEnsemble};
pub use zookeeper_secure::{shared_secure_zookeeper, SecureZooKeeper, SASL_USERS};

use std::sync::OnceLock;

/// Where a test reaches a server, and who controls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The dlock URL of the server (`redis://127.0.0.1:6379`, `zookeeper://…`, `etcd://…`).
    pub url: String,
    /// `host:port`, for clients that want an address rather than a URL.
    pub address: String,
}

/// The Redis server this test binary shares: `DLOCK_TEST_REDIS_URL`, a container, or a local
/// `redis-server` started on first use.
pub fn shared_redis() -> &'static Endpoint {
    static SHARED: OnceLock<Endpoint> = OnceLock::new();
    SHARED.get_or_init(|| shared("DLOCK_TEST_REDIS_URL", "redis", RedisServer::start_shared))
}

/// The ZooKeeper server this test binary shares (see [`shared_redis`]).
pub fn shared_zookeeper() -> &'static Endpoint {
    static SHARED: OnceLock<Endpoint> = OnceLock::new();
    SHARED.get_or_init(|| {
        shared(
            "DLOCK_TEST_ZOOKEEPER_URL",
            "zookeeper",
            ZooKeeperServer::start_shared,
        )
    })
}

/// The etcd server this test binary shares (see [`shared_redis`]).
pub fn shared_etcd() -> &'static Endpoint {
    static SHARED: OnceLock<Endpoint> = OnceLock::new();
    SHARED.get_or_init(|| shared("DLOCK_TEST_ETCD_URL", "etcd", EtcdServer::start_shared))
}

/// True when the server for `variable` comes from the environment: tests that need to kill
/// or restart their own server must then start one themselves.
pub fn is_external(variable: &str) -> bool {
    std::env::var_os(variable).is_some_and(|v| !v.is_empty())
}

fn shared(variable: &str, scheme: &str, start: impl FnOnce() -> Endpoint) -> Endpoint {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Endpoint {
            address: address_of(&url, scheme),
            url,
        },
        _ => start(),
    }
}

/// `host:port[,host:port]` of a URL, for callers that want an address.
fn address_of(url: &str, scheme: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let address = &rest[..end];
    assert!(!address.is_empty(), "{scheme} URL {url:?} has no host");
    address.to_owned()
}

/// Fails the test with instructions when a server binary is missing.
fn missing(what: &str) -> ! {
    panic!(
        "{what} is not installed on this machine. Run `sudo scripts/install-test-servers.sh` \
         (Debian packages redis-server, zookeeper, etcd-server), or point the \
         DLOCK_TEST_*_URL variables at running servers."
    )
}

/// A two-worker Tokio runtime, for tests that drive servers and processes from plain
/// `#[test]` functions (a kill, a stop, a proxy) and run their async part on it.
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}
