//! A three-member etcd cluster (Debian's `etcd-server` package), each member a local process
//! on loopback ports with its own data directory, with handles to kill, pause and restart one
//! member and to find the leader.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::local::prepare;
use crate::process::{free_port, shared_topology, ProcessGroup, ServerProcess};

/// How many members a cluster has: the smallest that survives losing one.
const MEMBERS: usize = 3;

/// A cluster of three etcd members on free loopback ports. Dropping it kills them all.
///
/// Members are numbered `0..3`; their data directories survive
/// [`restart`](EtcdCluster::restart), so a restarted member rejoins with its log.
#[derive(Debug)]
pub struct EtcdCluster {
    /// Each member's client port, in member order.
    client_ports: Vec<u16>,
    members: ProcessGroup,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts the members and waits until every one reports healthy (it has a leader and
    /// serves reads through the quorum).
    pub fn start() -> EtcdCluster {
        let binary = "/usr/bin/etcd";
        let dir = prepare(binary, "etcd", "etcd-cluster");
        let ports: Vec<(u16, u16)> = (0..MEMBERS).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        // Each member blocks in its start until the others join, so all start at once and
        // readiness is "listening" here; health (a quorum) is awaited below.
        let (client_ports, members): (Vec<u16>, Vec<ServerProcess>) = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| {
                let member_dir = dir.path().join(format!("m{i}"));
                std::fs::create_dir_all(&member_dir).expect("a member directory");
                let client_url = format!("http://127.0.0.1:{client_port}");
                let peer_url = format!("http://127.0.0.1:{peer_port}");
                let args: Vec<String> = [
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &member_dir.join("data").display().to_string(),
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-token",
                    "dlock-test-cluster",
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "warn",
                    "--quota-backend-bytes",
                    "268435456",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let process = ServerProcess::start(
                    &format!("etcd member m{i} on port {client_port}"),
                    binary,
                    args,
                    member_dir.join("etcd.log"),
                    move || TcpStream::connect(("127.0.0.1", client_port)).is_ok(),
                );
                (client_port, process)
            })
            .unzip();
        let cluster = EtcdCluster {
            client_ports,
            members: ProcessGroup::new(members),
            dir,
        };
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    /// `127.0.0.1:PORT` of each member's client port, in member order.
    pub fn addresses(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `127.0.0.1:PORT` of member `index`.
    pub fn address(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.client_ports[index])
    }

    /// `etcd://h1:p1,h2:p2,h3:p3`, the dlock URL of the whole cluster.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.addresses().join(","))
    }

    /// Kills member `index` at once (SIGKILL), as a crash would.
    pub fn kill(&self, index: usize) {
        self.members.kill(index);
    }

    /// Freezes member `index` (SIGSTOP): its connections stay open and nothing answers, so
    /// it is cut off from the quorum and from its clients alike.
    pub fn pause(&self, index: usize) {
        self.members.pause(index);
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&self, index: usize) {
        self.members.resume(index);
    }

    /// Starts member `index` again with its data (killing it first if it runs) and waits
    /// until the whole cluster is healthy again.
    pub fn restart(&self, index: usize) {
        self.members.restart(index);
        self.wait_healthy(Duration::from_secs(60));
    }

    /// True when member `index` answers `/health` with `true` (it has a leader and a quorum
    /// read went through).
    pub fn is_healthy(&self, index: usize) -> bool {
        http(self.client_ports[index], "GET", "/health", "")
            .is_some_and(|answer| answer.contains("\"health\":\"true\""))
    }

    /// The index of the member that is leader by its own account, if one answers so.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .find(|&i| status(self.client_ports[i]).is_some_and(|(me, leader)| me == leader))
    }

    /// Waits until some member says it leads, up to `limit`; returns it.
    pub fn wait_leader(&self, limit: Duration) -> Option<usize> {
        wait(limit, || self.leader())
    }

    /// Waits until every member is healthy and one leads; panics after `limit`.
    pub fn wait_healthy(&self, limit: Duration) {
        let healthy = wait(limit, || {
            ((0..self.members.len()).all(|i| self.is_healthy(i)) && self.leader().is_some())
                .then_some(())
        });
        assert!(
            healthy.is_some(),
            "the etcd cluster in {} was not healthy within {limit:?}",
            self.dir.path().display()
        );
    }

    /// Makes the cluster whole again whatever a test did to it: continues paused members,
    /// starts dead ones, and waits until all serve. For the end of fault tests, also when
    /// they fail.
    pub fn mend(&self) {
        self.members.revive_all();
        self.wait_healthy(Duration::from_secs(60));
    }
}

/// The etcd cluster this test binary shares, started on first use and killed on exit. Tests
/// that hurt it must leave it whole again ([`EtcdCluster::restart`], `resume`) and keep other
/// tests out while they do (see `integration-tests/tests/etcd_cluster.rs`).
pub fn shared_etcd_cluster() -> &'static EtcdCluster {
    static SHARED: OnceLock<EtcdCluster> = OnceLock::new();
    shared_topology(
        &SHARED,
        EtcdCluster::start,
        |t| &t.members,
        |t| t.dir.path(),
    )
}

/// Polls `probe` every 50 ms until it gives something or `limit` passes.
pub(crate) fn wait<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(member id, leader id)` from the member's maintenance status (the gRPC gateway's JSON).
fn status(port: u16) -> Option<(String, String)> {
    let answer = http(port, "POST", "/v3/maintenance/status", "{}")?;
    Some((
        json_string(&answer, "member_id")?,
        json_string(&answer, "leader")?,
    ))
}

/// The string value of `"field":"…"` in a flat JSON answer (etcd writes 64-bit ids as
/// strings).
fn json_string(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!("\"{field}\":\""))? + field.len() + 4;
    let end = json[start..].find('"')? + start;
    Some(json[start..end].to_owned())
}

/// One HTTP/1.1 request to the member's client port; the whole answer, headers included.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}
