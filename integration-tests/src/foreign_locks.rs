//! Other libraries' ZooKeeper locks, as foreign clients of the layout interop tests: kazoo's
//! `Lock` (Python, Debian's `python3-kazoo`) and Curator's `InterProcessMutex` (Java,
//! Debian's `libcurator-recipes-java`, driven by `CuratorLock.java`, compiled once per test
//! binary with the JDK). Each [`ForeignLock`] is one process with its own session, driven by
//! lines on its stdin and stdout.

use std::io::{BufRead, BufReader, Lines};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Which library's lock a [`ForeignLock`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// kazoo's `client.Lock(path, identifier)`.
    Kazoo,
    /// Curator's `InterProcessMutex(client, path)` (its nodes hold the client's IP address,
    /// not the identifier).
    Curator,
}

/// The Python side. Modes: `try` (one non-blocking acquire: prints `acquired` or `busy`,
/// releases, exits) and `hold` (prints `started`, acquires blocking, prints `held`, holds
/// until a line or EOF on stdin, releases, prints `released`), `count` (under the lock,
/// `rounds` times: read the number in `file`, pause 10 ms, write it plus one; prints
/// `counted`).
const SCRIPT: &str = r#"
import sys
import time
from kazoo.client import KazooClient

hosts, path, mode, timeout, identifier = sys.argv[1:6]
zk = KazooClient(hosts=hosts, timeout=float(timeout))
zk.start(timeout=30)
lock = zk.Lock(path, identifier)
if mode == "try":
    got = lock.acquire(blocking=False)
    print("acquired" if got else "busy", flush=True)
    if got:
        lock.release()
elif mode == "count":
    counter, rounds = sys.argv[6], int(sys.argv[7])
    for _ in range(rounds):
        with lock:
            with open(counter) as f:
                value = int(f.read().strip() or 0)
            time.sleep(0.01)
            with open(counter, "w") as f:
                f.write(str(value + 1))
    print("counted", flush=True)
else:
    print("started", flush=True)
    lock.acquire(blocking=True, timeout=120)
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
zk.stop()
zk.close()
"#;

/// Debian's own interpreter, where `python3-kazoo` is installed (the `python3` on `PATH` may
/// be another one).
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// The Java side, with the same modes and lines as [`SCRIPT`].
const CURATOR_SOURCE: &str = include_str!("CuratorLock.java");

/// Debian's jars Curator needs (its own, Guava, the ZooKeeper client, logging silenced).
const CURATOR_JARS: &[&str] = &[
    "curator-client",
    "curator-framework",
    "curator-recipes",
    "guava",
    "zookeeper",
    "zookeeper-jute",
    "slf4j-api",
    "slf4j-nop",
    "netty-handler",
    "netty-transport",
    "netty-common",
    "netty-buffer",
    "netty-resolver",
    "netty-codec",
    "netty-transport-native-epoll",
    "netty-transport-native-unix-common",
];

/// The class path of the compiled `CuratorLock` and its jars, compiling it on first use.
fn curator_class_path() -> &'static str {
    static CLASS_PATH: OnceLock<String> = OnceLock::new();
    CLASS_PATH.get_or_init(|| {
        let jars: Vec<String> = CURATOR_JARS
            .iter()
            .map(|jar| format!("/usr/share/java/{jar}.jar"))
            .collect();
        let jars = jars.join(":");
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "dlock-curator-lock-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for CuratorLock");
        let source = dir.join("CuratorLock.java");
        std::fs::write(&source, CURATOR_SOURCE).expect("write CuratorLock.java");
        let status = Command::new("javac")
            .args(["-nowarn", "-cp", &jars, "-d"])
            .arg(&dir)
            .arg(&source)
            .status()
            .expect("javac runs (scripts/install-test-servers.sh installs the JDK and Curator)");
        assert!(status.success(), "javac CuratorLock.java: {status}");
        format!("{}:{jars}", dir.display())
    })
}

/// A foreign client process holding, or waiting for, one lock.
pub struct ForeignLock {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ForeignLock {
    /// Starts a process whose session (timeout `session`) waits for the lock at `path` on
    /// `hosts` (`host:port`), with `identifier` as the lock node's data (kazoo only). Returns
    /// once its session is open; [`ForeignLock::wait_held`] waits for the grant.
    pub fn start(
        foreign: Foreign,
        hosts: &str,
        path: &str,
        session: Duration,
        identifier: &str,
    ) -> ForeignLock {
        ForeignLock::spawn(command(foreign, hosts, path, "hold", session, identifier))
    }

    /// Spawns `command` (a foreign client in `hold` mode, stdout piped) and waits for its
    /// `started` line.
    pub(crate) fn spawn(mut command: Command) -> ForeignLock {
        let mut child = command
            .stdin(Stdio::piped())
            .spawn()
            .expect("the foreign client runs (scripts/install-test-servers.sh installs it)");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut lock = ForeignLock {
            child,
            stdin,
            lines,
        };
        lock.expect_line("started");
        lock
    }

    /// Starts a process and waits until it holds the lock.
    pub fn hold(
        foreign: Foreign,
        hosts: &str,
        path: &str,
        session: Duration,
        identifier: &str,
    ) -> ForeignLock {
        let mut lock = ForeignLock::start(foreign, hosts, path, session, identifier);
        lock.wait_held();
        lock
    }

    /// Blocks until the client says it holds the lock (it gives up after 120 s).
    pub fn wait_held(&mut self) {
        self.expect_line("held");
    }

    /// Releases the lock (the client deletes its node) and waits for the process to end.
    pub fn release(mut self) {
        drop(self.stdin.take());
        self.expect_line("released");
        let status = self.child.wait().expect("foreign client process");
        assert!(status.success(), "foreign client process: {status}");
    }

    /// Kills the process with SIGKILL: its session is not closed, so the server removes its
    /// node only when the session times out.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the foreign client");
        let _ = self.child.wait();
    }

    fn expect_line(&mut self, expected: &str) {
        match self.lines.next() {
            Some(Ok(line)) if line == expected => {}
            other => panic!("the foreign client said {other:?}, expected {expected}"),
        }
    }
}

impl Drop for ForeignLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One non-blocking acquire (kazoo's `acquire(blocking=False)`, Curator's `acquire(0, ms)`)
/// in a process of its own, released at once if it won: `true` if the client got the lock.
pub fn foreign_try_lock(foreign: Foreign, hosts: &str, path: &str) -> bool {
    let output = command(
        foreign,
        hosts,
        path,
        "try",
        Duration::from_secs(10),
        "foreign try",
    )
    .stdin(Stdio::null())
    .output()
    .expect("the foreign client runs (scripts/install-test-servers.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{foreign:?} try: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    match text.trim() {
        "acquired" => true,
        "busy" => false,
        other => panic!("{foreign:?} try said {other:?}"),
    }
}

/// Starts a process that increments the number in `file` `rounds` times, each time under the
/// lock at `path` (a read, a 10 ms pause, a write: overlapping holders lose increments).
/// Wait for it with [`std::process::Child::wait_with_output`]; it prints `counted`.
pub fn foreign_count(
    foreign: Foreign,
    hosts: &str,
    path: &str,
    file: &std::path::Path,
    rounds: u32,
) -> Child {
    let mut command = command(
        foreign,
        hosts,
        path,
        "count",
        Duration::from_secs(10),
        "counter",
    );
    command
        .arg(file)
        .arg(rounds.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("the foreign client runs (scripts/install-test-servers.sh installs it)")
}

fn command(
    foreign: Foreign,
    hosts: &str,
    path: &str,
    mode: &str,
    session: Duration,
    identifier: &str,
) -> Command {
    let mut command = match foreign {
        Foreign::Kazoo => {
            let mut command = Command::new(PYTHON);
            command
                .args(["-c", SCRIPT, hosts, path, mode])
                .arg(session.as_secs_f64().to_string())
                .arg(identifier);
            command
        }
        Foreign::Curator => {
            let mut command = Command::new("java");
            command
                .args([
                    "-cp",
                    curator_class_path(),
                    "CuratorLock",
                    hosts,
                    path,
                    mode,
                ])
                .arg(session.as_millis().to_string())
                // Curator's nodes hold the client's address, not an identifier; the slot
                // keeps the arguments after it where the Python side has them.
                .arg(identifier);
            command
        }
    };
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    command
}
