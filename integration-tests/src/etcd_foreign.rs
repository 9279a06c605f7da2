//! etcd's own lock and election recipes as foreign clients of the
//! `layout=etcd-concurrency` interop tests: the real `etcdctl lock NAME` and
//! `etcdctl elect NAME` (Debian's `etcd-client`, Go's `concurrency.Mutex` and
//! `concurrency.Election`, one process and one session each) and the server's Lock RPC
//! (`v3lock`, the same `concurrency.Mutex` run inside the server) through the `etcd-client`
//! crate ([`RpcSession`]).

use std::future::Future;
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, LockOptions};
use tokio::task::JoinHandle;

/// Debian's `etcdctl` (package `etcd-client`).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// An `etcdctl` command against `endpoint` (`host:port`), API v3.
fn etcdctl(endpoint: &str) -> Command {
    let mut command = Command::new(ETCDCTL);
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"));
    command
}

/// One `etcdctl lock NAME` (or `etcdctl elect NAME VALUE`) process: its own session (lease
/// of `--ttl` seconds), waiting for or holding the lock (leadership) until it is sent
/// SIGTERM (it then deletes its key) or SIGKILL (a crash: the key stays until the lease
/// expires).
pub struct EtcdctlLock {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl EtcdctlLock {
    /// Starts `etcdctl lock NAME` with a session of `ttl` (whole seconds, at least 1); it
    /// queues at once, [`EtcdctlLock::wait_held`] waits for the grant.
    pub fn start(endpoint: &str, name: &str, ttl: Duration) -> EtcdctlLock {
        let mut command = etcdctl(endpoint);
        command.args(["lock", &format!("--ttl={}", ttl.as_secs().max(1)), name]);
        EtcdctlLock::spawn(command)
    }

    /// Starts `etcdctl elect NAME VALUE`: a candidate that campaigns with `value` (its
    /// session has etcd's default TTL, 60 s; `elect` has no `--ttl`).
    pub fn campaign(endpoint: &str, name: &str, value: &str) -> EtcdctlLock {
        let mut command = etcdctl(endpoint);
        command.args(["elect", name, value]);
        EtcdctlLock::spawn(command)
    }

    fn spawn(mut command: Command) -> EtcdctlLock {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("etcdctl runs (scripts/install-test-servers.sh installs etcd-client)");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        EtcdctlLock { child, lines }
    }

    /// Starts `etcdctl lock NAME` and waits until it holds the lock; returns it and its key.
    pub fn hold(endpoint: &str, name: &str, ttl: Duration) -> (EtcdctlLock, String) {
        let mut lock = EtcdctlLock::start(endpoint, name, ttl);
        let key = lock.wait_held();
        (lock, key)
    }

    /// Blocks until it holds the lock (leads): it prints its key (then the key's value, as
    /// `etcdctl get` does). Returns the key.
    pub fn wait_held(&mut self) -> String {
        let key = self.line();
        // The value line that follows the key: empty for a lock, the proposal for `elect`.
        let _value = self.line();
        key
    }

    /// The next line it prints.
    pub fn line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(line)) => line,
            other => panic!("etcdctl said {other:?}"),
        }
    }

    /// Sends SIGTERM: etcdctl deletes its key (resigns) and exits successfully.
    pub fn release(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("etcdctl process");
        assert!(status.success(), "etcdctl after SIGTERM: {status}");
    }

    /// Kills it with SIGKILL: its key stays until etcd expires its lease.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: a plain kill(2) of our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal})");
    }
}

impl Drop for EtcdctlLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `etcdctl elect --listen NAME`, which prints every leader (key, then value) as it
/// changes. Read it with [`EtcdctlLock::line`].
pub fn etcdctl_observe(endpoint: &str, name: &str) -> EtcdctlLock {
    let mut command = etcdctl(endpoint);
    command.args(["elect", "--listen", name]);
    EtcdctlLock::spawn(command)
}

/// Starts a shell that, `rounds` times, runs `etcdctl lock NAME sh -c …` to increment the
/// number in `file` under the lock (read, 10 ms pause, write: overlapping holders lose
/// increments). Each round is a new etcdctl process and session. It prints `counted` at the
/// end; wait for it with [`std::process::Child::wait_with_output`].
pub fn etcdctl_count(endpoint: &str, name: &str, file: &Path, rounds: u32) -> Child {
    let script = r#"
endpoint=$1; name=$2; file=$3; rounds=$4
i=0
while [ "$i" -lt "$rounds" ]; do
    ETCDCTL_API=3 "$ETCDCTL" --endpoints="$endpoint" lock -- "$name" \
        sh -c 'v=$(cat "$0"); sleep 0.01; echo $((v + 1)) > "$0"' "$file" || exit 1
    i=$((i + 1))
done
echo counted
"#;
    Command::new("/bin/sh")
        .args(["-c", script, "count"])
        .args([endpoint, name])
        .arg(file)
        .arg(rounds.to_string())
        .env("ETCDCTL", ETCDCTL)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("/bin/sh runs")
}

/// A client of the server's Lock RPC (`etcd-client`'s `lock()`, served by etcd's `v3lock`,
/// which is Go's `concurrency.Mutex` inside the server) with one lease of its own, kept
/// alive until [`RpcSession::crash`] or [`RpcSession::close`]. Like a Go session it holds
/// at most one key per lock name.
pub struct RpcSession {
    client: Client,
    lease: i64,
    keepalive: JoinHandle<()>,
}

impl RpcSession {
    /// Connects to `endpoint` (`host:port`) and grants a lease of `ttl` (whole seconds).
    pub async fn start(endpoint: &str, ttl: Duration) -> RpcSession {
        let mut client = Client::connect([endpoint], None)
            .await
            .expect("an etcd-client connection");
        let seconds = ttl.as_secs().max(1) as i64;
        let lease = client
            .lease_grant(seconds, None)
            .await
            .expect("a lease")
            .id();
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .expect("a keepalive stream");
        let every = Duration::from_millis(seconds as u64 * 1000 / 3);
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                if !matches!(stream.message().await, Ok(Some(_))) {
                    return;
                }
            }
        });
        RpcSession {
            client,
            lease,
            keepalive,
        }
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Waits for the lock `name` (the Lock RPC); resolves to the key the server put for it.
    /// The future does not borrow the session, so it can be spawned.
    pub fn lock(&self, name: &str) -> impl Future<Output = String> + Send + 'static {
        let (mut client, lease, name) = (self.client.clone(), self.lease, name.to_owned());
        async move {
            let answer = client
                .lock(name, Some(LockOptions::new().with_lease(lease)))
                .await
                .expect("the Lock RPC");
            String::from_utf8(answer.key().to_vec()).expect("a UTF-8 key")
        }
    }

    /// Releases the lock whose key [`RpcSession::lock`] returned (the Unlock RPC).
    pub async fn unlock(&self, key: &str) {
        let mut client = self.client.clone();
        client.unlock(key).await.expect("the Unlock RPC");
    }

    /// Stops the keepalive without revoking the lease, as a crashed process would.
    pub fn crash(self) {
        self.keepalive.abort();
    }

    /// Revokes the lease (its keys go with it) and stops the keepalive.
    pub async fn close(mut self) {
        self.keepalive.abort();
        let _ = self.client.lease_revoke(self.lease).await;
    }
}
