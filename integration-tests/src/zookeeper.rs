//! A ZooKeeper 3.8 server (Debian's `zookeeper` package, run with the machine's Java).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::local::{derefs_to_local_server, prepare, shared_server, ContainerSpec, LocalServer};
use crate::process::{free_port, ServerProcess};
use crate::Endpoint;

/// The tick that sets the session-timeout range: sessions may last 2 to 200 ticks
/// (0.2 s to 20 s), so tests can use short sessions.
const TICK_MS: u64 = 100;

/// A standalone ZooKeeper server on a free loopback port.
#[derive(Debug)]
pub struct ZooKeeperServer(pub(crate) LocalServer);

impl ZooKeeperServer {
    /// Starts a server (the JVM takes a few seconds).
    pub fn start() -> ZooKeeperServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `zoo.cfg` lines (`key=value`).
    pub fn start_with(extra_config: &[&str]) -> ZooKeeperServer {
        Self::start_with_jvm(extra_config, &[])
    }

    /// Starts a server with extra `zoo.cfg` lines and extra JVM arguments (`-Dname=value`).
    pub(crate) fn start_with_jvm(extra_config: &[&str], jvm_args: &[String]) -> ZooKeeperServer {
        let dir = prepare(
            "/usr/share/java/zookeeper.jar",
            "ZooKeeper (/usr/share/java/zookeeper.jar)",
            "zookeeper",
        );
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data directory");
        let mut config = format!(
            "tickTime={TICK_MS}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             minSessionTimeout={}\nmaxSessionTimeout={}\nadmin.enableServer=false\n\
             4lw.commands.whitelist=*\nmaxClientCnxns=0\n",
            data.display(),
            2 * TICK_MS,
            200 * TICK_MS,
        );
        for line in extra_config {
            config.push_str(line);
            config.push('\n');
        }
        let config_path = dir.path().join("zoo.cfg");
        std::fs::write(&config_path, config).expect("zoo.cfg");
        let log4j = dir.path().join("log4j.properties");
        std::fs::write(
            &log4j,
            "log4j.rootLogger=WARN, CONSOLE\nlog4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.CONSOLE.layout.ConversionPattern=%d %-5p [%t] %c{1}: %m%n\n",
        )
        .expect("log4j.properties");
        let mut args = jvm_args.to_vec();
        args.extend([
            "-Xmx256m".to_owned(),
            "-XX:+UseSerialGC".to_owned(),
            format!("-Dlog4j.configuration=file:{}", log4j.display()),
            "-Dzookeeper.admin.enableServer=false".to_owned(),
            "-cp".to_owned(),
            "/usr/share/java/*:/etc/zookeeper/conf".to_owned(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".to_owned(),
            config_path.display().to_string(),
        ]);
        let process = ServerProcess::start(
            &format!("ZooKeeper on port {port}"),
            "java",
            args,
            dir.path().join("zookeeper.log"),
            move || four_letter_word(port, "ruok").as_deref() == Some("imok"),
        );
        ZooKeeperServer(LocalServer::new(process, port, dir, "zookeeper"))
    }

    /// Sends a four-letter command (`ruok`, `cons`, `wchs`, `mntr`…) and returns the answer.
    pub fn command(&self, word: &str) -> Option<String> {
        four_letter_word(self.port(), word)
    }

    pub(crate) fn start_shared() -> Endpoint {
        let container = ContainerSpec {
            image: "zookeeper:3.8",
            port: 2181,
            command: &[],
            ready_line: "binding to port",
            scheme: "zookeeper",
        };
        shared_server(container, || Self::start().0)
    }
}

derefs_to_local_server!(ZooKeeperServer);

/// Sends a four-letter word to the server on `port` and reads the whole answer.
pub fn four_letter_word(port: u16, word: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}
