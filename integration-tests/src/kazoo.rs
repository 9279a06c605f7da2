//! kazoo's `Lock` (Python, Debian's `python3-kazoo`) as a foreign client of the ZooKeeper
//! layout interop tests: each [`KazooLock`] is one `/usr/bin/python3` process with its own
//! kazoo session, driven by lines on its stdin and stdout.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The Python side. Modes: `try` (one non-blocking acquire: prints `acquired` or `busy`,
/// releases, exits) and `hold` (prints `started`, acquires blocking, prints `held`, holds
/// until a line or EOF on stdin, releases, prints `released`).
const SCRIPT: &str = r#"
import sys
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
const PYTHON: &str = "/usr/bin/python3";

/// A kazoo client process holding, or waiting for, one lock.
pub struct KazooLock {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl KazooLock {
    /// Starts a process whose kazoo session (timeout `session`) waits for the lock at `path`
    /// on `hosts` (`host:port`), with `identifier` as the lock node's data. Returns once its
    /// session is open; [`KazooLock::wait_held`] waits for the grant.
    pub fn start(hosts: &str, path: &str, session: Duration, identifier: &str) -> KazooLock {
        let mut child = command(hosts, path, "hold", session, identifier)
            .stdin(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 runs (scripts/install-test-servers.sh installs kazoo)");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut lock = KazooLock {
            child,
            stdin,
            lines,
        };
        lock.expect_line("started");
        lock
    }

    /// Starts a process and waits until it holds the lock.
    pub fn hold(hosts: &str, path: &str, session: Duration, identifier: &str) -> KazooLock {
        let mut lock = KazooLock::start(hosts, path, session, identifier);
        lock.wait_held();
        lock
    }

    /// Blocks until kazoo says it holds the lock (kazoo itself gives up after 120 s).
    pub fn wait_held(&mut self) {
        self.expect_line("held");
    }

    /// Releases the lock (kazoo deletes its node) and waits for the process to end.
    pub fn release(mut self) {
        drop(self.stdin.take());
        self.expect_line("released");
        let status = self.child.wait().expect("kazoo process");
        assert!(status.success(), "kazoo process: {status}");
    }

    /// Kills the process with SIGKILL: its session is not closed, so the server removes its
    /// node only when the session times out.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the kazoo process");
        let _ = self.child.wait();
    }

    fn expect_line(&mut self, expected: &str) {
        match self.lines.next() {
            Some(Ok(line)) if line == expected => {}
            other => panic!("kazoo said {other:?}, expected {expected}"),
        }
    }
}

impl Drop for KazooLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One kazoo `Lock(path).acquire(blocking=False)` in a process of its own (released at once
/// if it won): `true` if kazoo got the lock.
pub fn kazoo_try_lock(hosts: &str, path: &str) -> bool {
    let output = command(hosts, path, "try", Duration::from_secs(10), "kazoo try")
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/python3 runs (scripts/install-test-servers.sh installs kazoo)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kazoo try: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    match text.trim() {
        "acquired" => true,
        "busy" => false,
        other => panic!("kazoo try said {other:?}"),
    }
}

fn command(hosts: &str, path: &str, mode: &str, session: Duration, identifier: &str) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .args(["-c", SCRIPT, hosts, path, mode])
        .arg(session.as_secs_f64().to_string())
        .arg(identifier)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}
