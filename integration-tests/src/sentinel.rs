//! A Redis Sentinel deployment for tests: a `redis-server` primary, one replica and three
//! sentinels (`redis-server --sentinel`, the same binary Debian's `redis-sentinel` links to),
//! all on free loopback ports, ready once the replica is in sync and every sentinel knows the
//! replica and the two other sentinels (before that a failover cannot be agreed on).

use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::local::prepare;
use crate::process::{free_port, ServerProcess};
use crate::redis::RedisServer;
use crate::resp::command;

/// The name the sentinels monitor the primary under.
pub const SENTINEL_MASTER: &str = "dlock-primary";

/// A primary, a replica and three sentinels watching them; every process is killed when this
/// is dropped (and when the test binary exits).
#[derive(Debug)]
pub struct SentinelDeployment {
    /// The instance that was primary at the start (after a failover, a replica).
    pub primary: RedisServer,
    /// Its replica (after a failover, the primary).
    pub replica: RedisServer,
    /// The three sentinels.
    pub sentinels: Vec<ServerProcess>,
    sentinel_ports: Vec<u16>,
    _dir: TempDir,
}

impl SentinelDeployment {
    /// Starts the five processes and waits (polling) until a failover could happen.
    /// `down_after` is how long the primary must be unreachable before the sentinels
    /// consider it down.
    pub fn start(down_after: Duration) -> SentinelDeployment {
        let binary = "/usr/bin/redis-server";
        let dir = prepare(binary, "redis-server", "redis-sentinel");
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        poll("the replica to sync", || {
            command(&replica.address(), &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for n in 0..3 {
            let port = free_port();
            let config = dir.path().join(format!("sentinel-{n}.conf"));
            let work = dir.path().join(format!("sentinel-{n}"));
            std::fs::create_dir_all(&work).expect("a sentinel directory");
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} {}\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    work.display(),
                    primary.port(),
                    down_after.as_millis()
                ),
            )
            .expect("a sentinel configuration");
            let address = format!("127.0.0.1:{port}");
            sentinels.push(ServerProcess::start(
                &format!("redis sentinel on port {port}"),
                binary,
                vec![config.display().to_string(), "--sentinel".into()],
                work.join("sentinel.log"),
                move || command(&address, &["PING"]).is_some_and(|r| r.starts_with("+PONG")),
            ));
            sentinel_ports.push(port);
        }
        for port in &sentinel_ports {
            let address = format!("127.0.0.1:{port}");
            poll("every sentinel to know the replica and the others", || {
                command(&address, &["SENTINEL", "MASTER", SENTINEL_MASTER]).is_some_and(|r| {
                    field(&r, "num-slaves") == Some(1)
                        && field(&r, "num-other-sentinels") == Some(2)
                })
            });
        }
        SentinelDeployment {
            primary,
            replica,
            sentinels,
            sentinel_ports,
            _dir: dir,
        }
    }

    /// `host:port,host:port,host:port` of the sentinels.
    pub fn sentinel_hosts(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis+sentinel://…/dlock-primary`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{SENTINEL_MASTER}",
            self.sentinel_hosts()
        )
    }

    /// `host:port` of the primary the first sentinel that answers names now.
    pub fn current_primary(&self) -> Option<String> {
        self.sentinel_ports.iter().find_map(|port| {
            let reply = command(
                &format!("127.0.0.1:{port}"),
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
            )?;
            let lines: Vec<&str> = reply.split("\r\n").collect();
            // *2, $len, host, $len, port
            (lines.len() >= 5).then(|| format!("{}:{}", lines[2], lines[4]))
        })
    }

    /// Asks a sentinel to fail over now (`SENTINEL FAILOVER`): the replica is promoted and
    /// the old primary becomes its replica, without anything being down.
    pub fn failover(&self) {
        let reply = command(
            &format!("127.0.0.1:{}", self.sentinel_ports[0]),
            &["SENTINEL", "FAILOVER", SENTINEL_MASTER],
        );
        assert!(
            reply.as_deref().is_some_and(|r| r.starts_with("+OK")),
            "SENTINEL FAILOVER: {reply:?}"
        );
    }
}

fn poll(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The integer after `name` in a flattened `SENTINEL MASTER` reply.
fn field(reply: &str, name: &str) -> Option<i64> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let at = lines.iter().position(|line| *line == name)?;
    lines.get(at + 2)?.parse().ok()
}
