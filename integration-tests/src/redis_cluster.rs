//! A Redis Cluster for tests: six `redis-server --cluster-enabled yes` nodes on free loopback
//! ports (three primaries, one replica each), joined by `redis-cli --cluster create`, with
//! handles to find, kill and restart the owner of a slot and to move a slot between primaries
//! the way `redis-cli --cluster reshard` does.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;

use crate::etcd_cluster::wait;
use crate::local::prepare;
use crate::process::{free_port, shared_topology, ProcessGroup, ServerProcess};
use crate::resp::{call, Reply};

/// How many nodes a cluster has: three primaries and a replica for each.
const NODES: usize = 6;

/// Redis Cluster's number of hash slots.
const SLOTS: usize = 16384;

/// How long a node may be unreachable before the others call it failing.
const NODE_TIMEOUT_MS: u64 = 1000;

/// How long any wait for the cluster lasts before the test fails.
const SETTLE: Duration = Duration::from_secs(60);

/// Six cluster nodes on free loopback ports, three primaries each with a replica in sync.
/// Dropping it kills them all.
///
/// Nodes are named by address (`127.0.0.1:PORT`); each has its own directory with its
/// `nodes-PORT.conf` and log, so a [`restart`](RedisCluster::restart)ed node rejoins as the
/// node it was.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    /// The TLS port of each node, beside its plain one, when started with
    /// [`RedisCluster::start_tls`].
    tls_ports: Vec<u16>,
    ids: Vec<String>,
    nodes: ProcessGroup,
    /// The ports of the nodes a test killed and did not restart.
    down: Mutex<Vec<u16>>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the six nodes, joins them with `redis-cli --cluster create … --cluster-replicas
    /// 1`, and waits (polling) until every node says `cluster_state:ok`, all 16384 slots are
    /// served, all nodes agree on who owns them, and every replica is in sync.
    pub fn start() -> RedisCluster {
        RedisCluster::start_nodes(None)
    }

    /// The same with a TLS port on every node beside its plain one, and TLS between the
    /// nodes (`tls-cluster`, `tls-replication`), with the certificates
    /// [`make_test_certificates`](crate::make_test_certificates) made in `certificates`
    /// (clients are not asked for one). [`RedisCluster::tls_url`] names the TLS ports; the
    /// harness itself keeps to the plain ones.
    pub fn start_tls(certificates: &std::path::Path) -> RedisCluster {
        RedisCluster::start_nodes(Some(certificates))
    }

    fn start_nodes(certificates: Option<&std::path::Path>) -> RedisCluster {
        let binary = "/usr/bin/redis-server";
        let dir = prepare(binary, "redis-server", "redis-cluster");
        if !std::path::Path::new("/usr/bin/redis-cli").exists() {
            crate::missing("redis-cli (package redis-tools)");
        }
        let mut ports = Vec::new();
        let mut tls_ports = Vec::new();
        let mut processes = Vec::new();
        for _ in 0..NODES {
            let port = free_port();
            // The cluster bus defaults to PORT + 10000, which free_port never checked.
            let bus_port = free_port();
            let node_dir = dir.path().join(format!("node-{port}"));
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_port.to_string(),
                "--cluster-config-file",
                &node_dir
                    .join(format!("nodes-{port}.conf"))
                    .display()
                    .to_string(),
                "--cluster-node-timeout",
                &NODE_TIMEOUT_MS.to_string(),
                // A replica fails over however long it was cut off from its primary.
                "--cluster-replica-validity-factor",
                "0",
                // A primary that gives away its last slot stays a primary.
                "--cluster-allow-replica-migration",
                "no",
                // Replicas sync at once instead of after the 5 s default.
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &node_dir.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(certificates) = certificates {
                let tls_port = free_port();
                let file = |name: &str| certificates.join(name).display().to_string();
                args.extend([
                    "--tls-port".to_owned(),
                    tls_port.to_string(),
                    "--tls-cluster".to_owned(),
                    "yes".to_owned(),
                    "--tls-replication".to_owned(),
                    "yes".to_owned(),
                    "--tls-cert-file".to_owned(),
                    file("server.pem"),
                    "--tls-key-file".to_owned(),
                    file("server.key"),
                    // What a node shows the others it connects to (the bus, replication),
                    // which check it: the client certificate, not the server one.
                    "--tls-client-cert-file".to_owned(),
                    file("client.pem"),
                    "--tls-client-key-file".to_owned(),
                    file("client.key"),
                    "--tls-ca-cert-file".to_owned(),
                    file("ca.pem"),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]);
                tls_ports.push(tls_port);
            }
            let address = format!("127.0.0.1:{port}");
            processes.push(ServerProcess::start(
                &format!("redis cluster node on port {port}"),
                binary,
                args,
                node_dir.join("redis.log"),
                move || {
                    call(&address, &["PING"], Duration::from_secs(1))
                        .is_some_and(|r| r.text() == Some("PONG"))
                },
            ));
            ports.push(port);
        }
        let nodes = ProcessGroup::new(processes);
        let ids = ports
            .iter()
            .map(|port| {
                let reply = call(
                    &format!("127.0.0.1:{port}"),
                    &["CLUSTER", "MYID"],
                    Duration::from_secs(2),
                );
                reply
                    .as_ref()
                    .and_then(Reply::text)
                    .unwrap_or_else(|| panic!("CLUSTER MYID on port {port}: {reply:?}"))
                    .to_owned()
            })
            .collect();
        let output = Command::new("/usr/bin/redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster {
            ports,
            tls_ports,
            ids,
            nodes,
            down: Mutex::new(Vec::new()),
            dir,
        };
        cluster.wait_settled("the new cluster");
        cluster
    }

    /// `rediss+cluster://127.0.0.1:T1,…?ca=<ca.pem>`: the dlock URL of the nodes' TLS ports,
    /// for a cluster made with [`RedisCluster::start_tls`] from `certificates`.
    pub fn tls_url(&self, certificates: &std::path::Path) -> String {
        assert!(!self.tls_ports.is_empty(), "a cluster started without TLS");
        let hosts: Vec<String> = self
            .tls_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!(
            "rediss+cluster://{}?ca={}",
            hosts.join(","),
            certificates.join("ca.pem").display()
        )
    }

    /// `127.0.0.1:PORT` of every node, in start order (killed ones included).
    pub fn addresses(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:P1,…,127.0.0.1:P6`: the dlock URL with all six nodes as
    /// seeds.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM) of the key, or of
    /// its hash tag (the text between the first `{` and the next `}`, when not empty), modulo
    /// 16384.
    pub fn slot_of(key: &str) -> u16 {
        dlock::redis::cluster_slot(key)
    }

    /// `host:port` of the primary that serves `slot` now, by the first live node that
    /// answers.
    pub fn primary_of(&self, slot: u16) -> String {
        let view = self
            .view()
            .expect("no live cluster node answers CLUSTER NODES");
        view.owner(slot)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
            .address
            .clone()
    }

    /// `host:port` of a primary that does not own `slot` now (where to move it).
    pub fn another_primary(&self, slot: u16) -> String {
        let owner = self.primary_of(slot);
        self.primaries()
            .into_iter()
            .find(|primary| *primary != owner)
            .expect("another primary")
    }

    /// `host:port` of every primary that serves slots now, sorted.
    pub fn primaries(&self) -> Vec<String> {
        let view = self
            .view()
            .expect("no live cluster node answers CLUSTER NODES");
        let mut primaries: Vec<String> = view
            .nodes
            .iter()
            .filter(|node| node.primary && !node.failed && !node.slots.is_empty())
            .map(|node| node.address.clone())
            .collect();
        primaries.sort();
        primaries
    }

    /// Kills (SIGKILL) the primary that serves `slot` and waits until its replica has taken
    /// over and the live nodes say `cluster_state:ok` again; returns the killed address.
    pub fn kill_primary_of(&self, slot: u16) -> String {
        let address = self.primary_of(slot);
        let index = self.index_of(&address);
        self.nodes.kill(index);
        self.down_ports().push(self.ports[index]);
        self.wait_settled(&format!(
            "a replica to take slot {slot} over from {address}"
        ));
        assert_ne!(self.primary_of(slot), address, "slot {slot} did not move");
        address
    }

    /// Starts a killed node again with its `nodes.conf`; it rejoins (a former primary as a
    /// replica of whoever took its slots over). Waits until the cluster is whole again.
    pub fn restart(&self, address: &str) {
        let index = self.index_of(address);
        self.nodes.restart(index);
        self.down_ports().retain(|&port| port != self.ports[index]);
        self.wait_settled(&format!("{address} to rejoin"));
    }

    /// Starts every killed node again and waits until the cluster is whole: for the end of
    /// fault tests on a shared cluster, also when they fail.
    pub fn mend(&self) {
        self.nodes.revive_all();
        self.down_ports().clear();
        self.wait_settled("the mended cluster");
    }

    /// Moves `slot` and its keys to the primary `to`, as `redis-cli --cluster reshard` does:
    /// [`begin_migration`](Self::begin_migration), then
    /// [`finish_migration`](Self::finish_migration).
    pub fn migrate_slot(&self, slot: u16, to: &str) {
        self.begin_migration(slot, to);
        self.finish_migration(slot, to);
    }

    /// The first half of a slot migration: `CLUSTER SETSLOT slot IMPORTING source` on `to`
    /// and `MIGRATING to` on the slot's owner; no key moves. Clients now get `ASK`
    /// redirections for keys of the slot the owner does not hold.
    pub fn begin_migration(&self, slot: u16, to: &str) {
        let from = self.primary_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let slot = slot.to_string();
        ok(
            to,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", self.id_of(&from)],
        );
        ok(
            &from,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", self.id_of(to)],
        );
    }

    /// The second half: moves the slot's keys from its owner to `to` (`CLUSTER
    /// GETKEYSINSLOT` and `MIGRATE … KEYS …` in batches), then `CLUSTER SETSLOT slot NODE
    /// to` on `to`, the old owner and the other primaries, and waits until every node agrees.
    pub fn finish_migration(&self, slot: u16, to: &str) {
        let from = self.primary_of(slot);
        let (host, port) = to.rsplit_once(':').expect("host:port");
        let slot_text = slot.to_string();
        loop {
            let keys = match call(
                &from,
                &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"],
                Duration::from_secs(2),
            ) {
                Some(Reply::Array(keys)) => keys,
                other => panic!("CLUSTER GETKEYSINSLOT {slot} on {from}: {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", host, port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().filter_map(Reply::text));
            let reply = call(&from, &migrate, Duration::from_secs(10));
            assert!(
                matches!(reply, Some(Reply::Status(_))),
                "MIGRATE of slot {slot} from {from} to {to}: {reply:?}"
            );
        }
        let to_id = self.id_of(to).to_owned();
        ok(to, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        ok(&from, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        for primary in self.primaries() {
            if primary != to && primary != from {
                ok(
                    &primary,
                    &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id],
                );
            }
        }
        self.wait_settled(&format!("every node to see slot {slot} on {to}"));
        assert_eq!(self.primary_of(slot), to);
    }

    /// Waits until every live node says `cluster_state:ok` with all slots served, the live
    /// nodes agree on the slots' owners and on who is primary, no open slot is left, and
    /// every live replica is in sync (and, with all six nodes up, every primary has one).
    fn wait_settled(&self, what: &str) {
        let mut last = String::new();
        let settled = wait(SETTLE, || match self.settled() {
            Ok(()) => Some(()),
            Err(why) => {
                last = why;
                None
            }
        });
        assert!(
            settled.is_some(),
            "waited {SETTLE:?} for {what} in the Redis Cluster in {}: {last}",
            self.dir.path().display()
        );
    }

    fn settled(&self) -> Result<(), String> {
        let live = self.live();
        let mut first: Option<View> = None;
        for address in &live {
            let info = call(address, &["CLUSTER", "INFO"], Duration::from_secs(1))
                .and_then(|r| r.text().map(str::to_owned))
                .ok_or_else(|| format!("{address} does not answer CLUSTER INFO"))?;
            for expected in [
                "cluster_state:ok".to_owned(),
                format!("cluster_slots_ok:{SLOTS}"),
                format!("cluster_known_nodes:{NODES}"),
            ] {
                if !info.lines().any(|line| line.trim() == expected) {
                    return Err(format!("{address} lacks {expected}"));
                }
            }
            let view = View::of(address).ok_or_else(|| format!("{address}: CLUSTER NODES"))?;
            if view.open_slots {
                return Err(format!("{address} has a slot importing or migrating"));
            }
            let down = self.down_ports();
            for node in &view.nodes {
                let dead = down
                    .iter()
                    .any(|port| node.address.ends_with(&format!(":{port}")));
                if node.failed != dead {
                    return Err(format!(
                        "{address} sees {} failed: {}",
                        node.address, node.failed
                    ));
                }
            }
            drop(down);
            match &first {
                None => first = Some(view),
                Some(seen) if seen.summary() != view.summary() => {
                    return Err(format!("{} and {address} disagree", live[0]));
                }
                Some(_) => {}
            }
        }
        let view = first.ok_or("no live node")?;
        for node in view.nodes.iter().filter(|n| !n.primary && !n.failed) {
            let info = call(
                &node.address,
                &["INFO", "replication"],
                Duration::from_secs(1),
            )
            .and_then(|r| r.text().map(str::to_owned))
            .unwrap_or_default();
            if !info.contains("master_link_status:up") || info.contains("master_sync_in_progress:1")
            {
                return Err(format!("replica {} is not in sync", node.address));
            }
        }
        if live.len() == NODES {
            for primary in view
                .nodes
                .iter()
                .filter(|n| n.primary && !n.slots.is_empty())
            {
                if !view
                    .nodes
                    .iter()
                    .any(|n| n.replica_of.as_deref() == Some(&primary.id))
                {
                    return Err(format!("primary {} has no replica", primary.address));
                }
            }
        }
        Ok(())
    }

    /// The first live node's view of the cluster.
    fn view(&self) -> Option<View> {
        self.live().iter().find_map(|address| View::of(address))
    }

    fn live(&self) -> Vec<String> {
        let down = self.down_ports();
        self.ports
            .iter()
            .filter(|port| !down.contains(port))
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    fn down_ports(&self) -> std::sync::MutexGuard<'_, Vec<u16>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index_of(&self, address: &str) -> usize {
        self.addresses()
            .iter()
            .position(|a| a == address)
            .unwrap_or_else(|| panic!("{address} is not a node of this cluster"))
    }

    fn id_of(&self, address: &str) -> &str {
        &self.ids[self.index_of(address)]
    }
}

/// The Redis Cluster this test binary shares, started on first use and killed on exit.
/// Tests that hurt it must leave it whole again ([`RedisCluster::restart`],
/// [`RedisCluster::mend`]) and keep other tests out while they do.
pub fn shared_redis_cluster() -> &'static RedisCluster {
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    shared_topology(&SHARED, RedisCluster::start, |t| &t.nodes, |t| t.dir.path())
}

/// Sends a command that must answer `+OK`.
fn ok(address: &str, args: &[&str]) {
    let reply = call(address, args, Duration::from_secs(2));
    assert!(
        reply.as_ref().and_then(Reply::text) == Some("OK"),
        "{} on {address}: {reply:?}",
        args.join(" ")
    );
}

/// One node's `CLUSTER NODES`.
struct View {
    nodes: Vec<Node>,
    /// True when a slot is importing or migrating (`[slot->-id]`, `[slot-<-id]`).
    open_slots: bool,
}

struct Node {
    id: String,
    address: String,
    primary: bool,
    failed: bool,
    replica_of: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl View {
    fn of(address: &str) -> Option<View> {
        let reply = call(address, &["CLUSTER", "NODES"], Duration::from_secs(1))?;
        let mut open_slots = false;
        let nodes = reply
            .text()?
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags: Vec<&str> = fields.get(2)?.split(',').collect();
                let mut slots = Vec::new();
                for range in fields.get(8..).unwrap_or_default() {
                    if range.starts_with('[') {
                        open_slots = true;
                        continue;
                    }
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    slots.push((start.parse().ok()?, end.parse().ok()?));
                }
                let node_address = fields.get(1)?.split(['@', ',']).next()?;
                Some(Node {
                    id: fields[0].to_owned(),
                    address: node_address.to_owned(),
                    primary: flags.contains(&"master"),
                    failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                    replica_of: (fields.get(3)? != &"-").then(|| fields[3].to_owned()),
                    slots,
                })
            })
            .collect();
        Some(View { nodes, open_slots })
    }

    fn owner(&self, slot: u16) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|node| node.primary && node.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
    }

    /// What every node must agree on: each node's role, primary and slots, one line a node.
    fn summary(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .map(|n| format!("{} {} {:?} {:?}", n.id, n.primary, n.replica_of, n.slots))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    #[test]
    fn slot_of_agrees_with_cluster_keyslot() {
        let server = RedisServer::start_with(&["--cluster-enabled", "yes"]);
        for key in [
            "dlock:{a|b/c}:lock",
            "foo",
            "123456789",
            "{user1000}.following",
            "{}empty-tag",
            "no}{tag",
            "a{b}{c}",
            "dlock:ünïcode",
        ] {
            let reply = call(
                &server.address(),
                &["CLUSTER", "KEYSLOT", key],
                Duration::from_secs(2),
            );
            assert_eq!(
                reply,
                Some(Reply::Integer(i64::from(RedisCluster::slot_of(key)))),
                "{key}"
            );
        }
        // The CRC16/XMODEM check value.
        assert_eq!(RedisCluster::slot_of("123456789"), 0x31C3);
    }
}
