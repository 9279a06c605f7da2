//! Faults shared by the session backends' fault tests (ZooKeeper, etcd): a lock lost on the
//! holder's clock while the server still keeps its session.
//!
//! Also a proxy that loses one server reply on purpose. Each test binary uses part of this.
//!
//! The faults are made in-process and deterministic, instead of stopping a holder process with
//! SIGSTOP for a fraction of its lease (whether such a pause makes the holder's clock run out
//! before the server's depends on when the last renewal happened, which a test cannot pick).

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Waker};
use std::time::Duration;

use async_trait::async_trait;
use dlock_core::{BackendLayer, Layered, Lease, LockBackend, Renewal, Result};
use tokio::time::Instant;

/// A layer whose renewals, once [`FrozenRenewals::freeze`] is called, no longer move a
/// lease's deadline, while the backend underneath keeps its session alive on the server:
/// the client's keepalive and its session heartbeat out of step, as after a pause that hit
/// the keepalive just before it renewed. The core then declares the lock lost
/// (`LeaseExpired`) when the deadline it last heard of passes, and the server still holds it.
#[derive(Debug)]
pub struct FrozenRenewals {
    frozen: AtomicBool,
}

impl FrozenRenewals {
    /// Wraps `inner`; renewals pass through until frozen (`.layer().freeze()`).
    pub fn new(inner: impl LockBackend) -> Arc<Layered<FrozenRenewals>> {
        Arc::new(Layered::new(
            Arc::new(inner),
            FrozenRenewals {
                frozen: AtomicBool::new(false),
            },
        ))
    }

    /// From now on, renewals keep every lease's deadline where it is.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl BackendLayer for FrozenRenewals {
    async fn renew(&self, inner: &Arc<dyn LockBackend>, leases: &[&Lease]) -> Result<Vec<Renewal>> {
        let renewals = inner.renew(leases).await?;
        if !self.frozen.load(Ordering::SeqCst) {
            return Ok(renewals);
        }
        Ok(renewals
            .into_iter()
            .zip(leases)
            .map(|(renewal, lease)| match renewal {
                Renewal::Renewed { .. } => Renewal::Renewed {
                    valid_until: lease.valid_until(),
                },
                lost => lost,
            })
            .collect())
    }
}

/// Moves the current runtime's clock forward by `by` at once: every timer of the client sees
/// `by` go by, as in a process stopped (SIGSTOP) for that long, while the server saw no
/// silence (it keeps the session for sure). The runtime must be a current-thread one.
pub fn jump_clock(by: Duration) {
    tokio::time::pause();
    // `advance` moves the clock on its first poll and then yields; it is not awaited, so the
    // clock cannot also auto-advance to the next timer while paused.
    let mut advance = std::pin::pin!(tokio::time::advance(by));
    let _ = advance
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    tokio::time::resume();
}

/// A second runtime with its own clock, for clients that must not see [`jump_clock`].
pub fn elsewhere() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(dlock_test_servers::test_runtime)
}

/// A TCP proxy on a free loopback port in front of one server, which can drop what the
/// server sends (while passing on what the client sends) and cut every connection: a request
/// done by the server whose answer is lost with the connection.
pub struct ReplyDropper {
    port: u16,
    dropping: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accepting: tokio::task::AbortHandle,
}

impl ReplyDropper {
    /// Starts forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> ReplyDropper {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let dropping = Arc::new(AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accepting = {
            let (dropping, links) = (Arc::clone(&dropping), Arc::clone(&links));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let link =
                        tokio::spawn(forward(client, upstream.clone(), Arc::clone(&dropping)));
                    links.lock().unwrap().push(link.abort_handle());
                }
            })
            .abort_handle()
        };
        ReplyDropper {
            port,
            dropping,
            links,
            accepting,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on, what the server sends is dropped (`true`) or passed on (`false`).
    pub fn drop_replies(&self, dropping: bool) {
        self.dropping.store(dropping, Ordering::SeqCst);
    }

    /// Closes every open connection through the proxy (new ones are still accepted).
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for ReplyDropper {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

async fn forward(client: tokio::net::TcpStream, upstream: String, dropping: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::io::copy(&mut client_read, &mut server_write);
    let replies = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if !dropping.load(Ordering::SeqCst)
                && client_write.write_all(&buffer[..read]).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}

/// A lock-holding child process (this test binary run again in a child mode), which the test
/// stops and continues with SIGSTOP and SIGCONT and reads line by line. Killed when dropped;
/// it also exits when the test process does (its stdin closes).
pub struct HolderChild {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl HolderChild {
    /// Runs the test `test` of this binary as a child, with `env` set.
    pub fn spawn(test: &str, env: &[(&str, &str)]) -> HolderChild {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn().expect("start the holder process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        HolderChild { child, lines }
    }

    /// The text after the next line's `marker` (libtest may print the test's name first on
    /// the same line), skipping lines without markers; panics after `limit`.
    pub async fn next_report(&mut self, markers: &[&str], limit: Duration) -> (String, String) {
        let deadline = Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("the holder process said none of {markers:?} in {limit:?}")
                })
                .unwrap_or_else(|| {
                    panic!("the holder process ended before saying any of {markers:?}")
                });
            for marker in markers {
                if let Some((_, rest)) = line.split_once(marker) {
                    return ((*marker).to_owned(), rest.trim().to_owned());
                }
            }
        }
    }

    /// SIGSTOP: the whole holder process stops, its connections stay open.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with the pid of our own child, which we have not reaped yet.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for HolderChild {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side of [`check_paused_holder`]: takes `k`, says `HELD <token>`, and waits up
/// to `keep` (on its own clock, which runs on through the pause) for a loss signal. On
/// `LOST`, it acquires again and says `AGAIN <token>` (or `FAILED <error>`); without one, it
/// says `KEPT` and releases. Then it says `DONE` and lives on (its session with it).
pub async fn hold_through_a_pause(holder: &dlock_core::Locker, keep: Duration) {
    let guard = holder.acquire("k").await.expect("the child acquires");
    println!("HELD {}", guard.fencing_token());
    match tokio::time::timeout(keep, guard.lost()).await {
        Ok(reason) => {
            println!("LOST {reason:?}");
            let options = holder.options().clone().wait(Duration::from_secs(30));
            match holder.acquire_with("k", &options).await {
                Ok(again) => {
                    println!("AGAIN {}", again.fencing_token());
                    let _ = again.release().await;
                }
                Err(error) => println!("FAILED {error}"),
            }
        }
        Err(_) => {
            println!("KEPT");
            let _ = guard.release().await;
        }
    }
    println!("DONE");
    std::future::pending::<()>().await;
}

/// Issue 9, item 5, as it was found: the holder process is stopped (SIGSTOP) `pause_after`
/// its acquisition for `pause_for`, while `other` waits in line. Whether the holder's guard
/// says the lock was lost depends on when its last renewal happened; either way the lock
/// must not stay taken by nobody: `other` acquires within `bound` of the holder waking, and
/// a holder that heard of its loss acquires again. Returns what the holder said.
pub async fn check_paused_holder(
    mut child: HolderChild,
    other: dlock_core::Locker,
    pause_after: Duration,
    pause_for: Duration,
    bound: Duration,
) -> String {
    let reports = Duration::from_secs(30);
    let (_, token) = child.next_report(&["HELD "], reports).await;
    let held_at = Instant::now();
    let held: u64 = token.parse().expect("a token");
    let (queued, in_line) = tokio::sync::oneshot::channel();
    let waiting = {
        let options = other.options().clone().wait(Duration::from_secs(60));
        tokio::spawn(async move { other.acquire_observed("k", &options, Some(queued)).await })
    };
    tokio::time::timeout(reports, in_line)
        .await
        .expect("the other client queues in time")
        .expect("queued");
    // Sleeping here is the fault itself, not synchronisation.
    tokio::time::sleep_until(held_at + pause_after).await;
    child.stop();
    tokio::time::sleep(pause_for).await;
    child.resume();
    let resumed = Instant::now();
    let Ok(next) = tokio::time::timeout(bound, waiting).await else {
        let mut said = Vec::new();
        while let Ok(line) = child.lines.try_recv() {
            said.push(line);
        }
        panic!("the lock stayed taken {bound:?} after the holder woke; the holder said {said:?}");
    };
    let next = next
        .expect("other task")
        .expect("the other client acquires");
    let waited = resumed.elapsed();
    assert!(next.fencing_token().get() > held);
    next.release().await.expect("the other client releases");
    let (outcome, reason) = child.next_report(&["LOST ", "KEPT"], reports).await;
    if outcome == "LOST " {
        let (again, detail) = child.next_report(&["AGAIN ", "FAILED "], reports).await;
        assert_eq!(
            again, "AGAIN ",
            "the holder could not acquire again: {detail}"
        );
    }
    format!("holder {outcome}{reason}; the other client acquired {waited:?} after it woke")
}
