//! A three-server ZooKeeper 3.8 ensemble (Debian's `zookeeper` package, run with the
//! machine's Java), each server a local process on loopback ports with its own data
//! directory and `myid`, with handles to kill, pause and restart one server and to find the
//! leader.

use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use crate::etcd_cluster::wait;
use crate::local::prepare;
use crate::process::{free_port, shared_topology, ProcessGroup, ServerProcess};
use crate::zookeeper::four_letter_word;

/// How many servers an ensemble has: the smallest that survives losing one.
const SERVERS: usize = 3;

/// The tick that sets the session-timeout range, as for the standalone server: sessions may
/// last 2 to 200 ticks (0.2 s to 20 s), so tests can use short sessions.
const TICK_MS: u64 = 100;

/// An ensemble of three ZooKeeper servers on free loopback ports. Dropping it kills
/// them all.
///
/// Servers are numbered `0..3` (their `myid` is the number plus one); their data
/// directories survive [`restart`](ZooKeeperEnsemble::restart), so a restarted server
/// rejoins with its log.
#[derive(Debug)]
pub struct ZooKeeperEnsemble {
    /// Each server's client port, in server order.
    client_ports: Vec<u16>,
    servers: ProcessGroup,
    dir: TempDir,
}

impl ZooKeeperEnsemble {
    /// Starts the servers (their JVMs in parallel) and waits until every one serves, as
    /// leader or follower.
    pub fn start() -> ZooKeeperEnsemble {
        let dir = prepare(
            "/usr/share/java/zookeeper.jar",
            "ZooKeeper (/usr/share/java/zookeeper.jar)",
            "zookeeper-ensemble",
        );
        let ports: Vec<(u16, u16, u16)> = (0..SERVERS)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let server_lines: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, election))| {
                format!("server.{}=127.0.0.1:{peer}:{election}\n", i + 1)
            })
            .collect();
        let log4j = dir.path().join("log4j.properties");
        std::fs::write(
            &log4j,
            "log4j.rootLogger=WARN, CONSOLE\nlog4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.CONSOLE.layout.ConversionPattern=%d %-5p [%t] %c{1}: %m%n\n",
        )
        .expect("log4j.properties");
        let (client_ports, servers): (Vec<u16>, Vec<ServerProcess>) = thread::scope(|scope| {
            let starting: Vec<_> = ports
                .iter()
                .enumerate()
                .map(|(i, &(client_port, _, _))| {
                    let server_dir = dir.path().join(format!("s{}", i + 1));
                    let data = server_dir.join("data");
                    std::fs::create_dir_all(&data).expect("a data directory");
                    std::fs::write(data.join("myid"), format!("{}\n", i + 1)).expect("myid");
                    // initLimit and syncLimit in ticks: 10 s for a follower to catch up,
                    // 2 s of silence before a follower gives up on its leader (and so how
                    // soon a dead leader is noticed).
                    let config = format!(
                        "tickTime={TICK_MS}\ninitLimit=100\nsyncLimit=20\ndataDir={}\n\
                         clientPort={client_port}\nclientPortAddress=127.0.0.1\n\
                         minSessionTimeout={}\nmaxSessionTimeout={}\n\
                         admin.enableServer=false\n4lw.commands.whitelist=*\nmaxClientCnxns=0\n\
                         cnxTimeout=1000\n{server_lines}",
                        data.display(),
                        2 * TICK_MS,
                        200 * TICK_MS,
                    );
                    let config_path = server_dir.join("zoo.cfg");
                    std::fs::write(&config_path, config).expect("zoo.cfg");
                    let args = vec![
                        "-Xmx256m".to_owned(),
                        "-XX:+UseSerialGC".to_owned(),
                        format!("-Dlog4j.configuration=file:{}", log4j.display()),
                        "-Dzookeeper.admin.enableServer=false".to_owned(),
                        "-cp".to_owned(),
                        "/usr/share/java/*:/etc/zookeeper/conf".to_owned(),
                        "org.apache.zookeeper.server.quorum.QuorumPeerMain".to_owned(),
                        config_path.display().to_string(),
                    ];
                    let log = server_dir.join("zookeeper.log");
                    scope.spawn(move || {
                        // `ruok` answers before the server joins a quorum, so the servers
                        // can start one by one; serving is awaited below.
                        let process = ServerProcess::start(
                            &format!("ZooKeeper server {} on port {client_port}", i + 1),
                            "java",
                            args,
                            log,
                            move || {
                                four_letter_word(client_port, "ruok").as_deref() == Some("imok")
                            },
                        );
                        (client_port, process)
                    })
                })
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("a ZooKeeper server started"))
                .unzip()
        });
        let ensemble = ZooKeeperEnsemble {
            client_ports,
            servers: ProcessGroup::new(servers),
            dir,
        };
        ensemble.wait_serving(Duration::from_secs(60));
        ensemble
    }

    /// `127.0.0.1:PORT` of each server's client port, in server order.
    pub fn addresses(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `127.0.0.1:PORT` of server `index`.
    pub fn address(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.client_ports[index])
    }

    /// `zookeeper://h1:p1,h2:p2,h3:p3`, the dlock URL of the whole ensemble.
    pub fn url(&self) -> String {
        format!("zookeeper://{}", self.addresses().join(","))
    }

    /// Sends a four-letter word (`srvr`, `cons`, `mntr`…) to server `index`.
    pub fn command(&self, index: usize, word: &str) -> Option<String> {
        four_letter_word(self.client_ports[index], word)
    }

    /// Kills server `index` at once (SIGKILL), as a crash would.
    pub fn kill(&self, index: usize) {
        self.servers.kill(index);
    }

    /// Freezes server `index` (SIGSTOP).
    pub fn pause(&self, index: usize) {
        self.servers.pause(index);
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self, index: usize) {
        self.servers.resume(index);
    }

    /// Starts server `index` again with its data (killing it first if it runs) and waits
    /// until every server serves again.
    pub fn restart(&self, index: usize) {
        self.servers.restart(index);
        self.wait_serving(Duration::from_secs(60));
    }

    /// `leader`, `follower` or `None` (not serving: no quorum, or down), from `srvr`.
    pub fn mode(&self, index: usize) -> Option<String> {
        let answer = self.command(index, "srvr")?;
        let line = answer.lines().find(|l| l.starts_with("Mode: "))?;
        Some(line["Mode: ".len()..].trim().to_owned())
    }

    /// The index of the server that says it leads, if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len()).find(|&i| self.mode(i).as_deref() == Some("leader"))
    }

    /// Waits until some server says it leads, up to `limit`; returns it.
    pub fn wait_leader(&self, limit: Duration) -> Option<usize> {
        wait(limit, || self.leader())
    }

    /// Waits until every server serves and one leads; panics after `limit`.
    pub fn wait_serving(&self, limit: Duration) {
        let serving = wait(limit, || {
            let modes: Vec<_> = (0..self.servers.len()).map(|i| self.mode(i)).collect();
            (modes.iter().all(Option::is_some)
                && modes.iter().any(|m| m.as_deref() == Some("leader")))
            .then_some(())
        });
        assert!(
            serving.is_some(),
            "the ZooKeeper ensemble in {} did not serve within {limit:?}",
            self.dir.path().display()
        );
    }

    /// Makes the cluster whole again whatever a test did to it: continues paused members,
    /// starts dead ones, and waits until all serve. For the end of fault tests, also when
    /// they fail.
    pub fn mend(&self) {
        self.servers.revive_all();
        self.wait_serving(Duration::from_secs(60));
    }
}

/// The ZooKeeper ensemble this test binary shares, started on first use and killed on exit.
/// Tests that hurt it must leave it whole again and keep other tests out while they do (see
/// `integration-tests/tests/zookeeper_ensemble.rs`).
pub fn shared_zookeeper_ensemble() -> &'static ZooKeeperEnsemble {
    static SHARED: OnceLock<ZooKeeperEnsemble> = OnceLock::new();
    shared_topology(
        &SHARED,
        ZooKeeperEnsemble::start,
        |t| &t.servers,
        |t| t.dir.path(),
    )
}
