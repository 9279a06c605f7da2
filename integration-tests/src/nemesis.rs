//! A workload run of several `dlock-workload` processes and the nemesis that hurts them:
//! pause (SIGSTOP/SIGCONT) and kill -9 of clients, with every fault and heal written to the
//! run's history for the [checker](crate::check).
//!
//! Server faults use [`ServerProcess`](crate::ServerProcess) and network faults a
//! [`FaultProxy`](crate::FaultProxy) per client link; record them with
//! [`WorkloadRun::fault`] and [`WorkloadRun::heal`] so the checker knows when liveness is due.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::checker::{check, CheckConfig, Report};
use crate::history::{read_history, Event, EventKind, HistoryWriter};
use crate::process::spawn_tied_to_this_process;
use crate::workload::Primitive;

/// One run: a directory with the history and the fenced register, and the client processes.
pub struct WorkloadRun {
    binary: PathBuf,
    dir: TempDir,
    history: HistoryWriter,
    clients: Vec<Client>,
}

/// How each client process of a run behaves.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// The backend URL.
    pub url: String,
    /// The contended key.
    pub key: String,
    /// Time inside the critical section before the fenced write.
    pub hold: Duration,
    /// The wait limit of each acquire.
    pub wait: Duration,
    /// Rounds per client; `None` (and no duration) runs until [`WorkloadRun::stop`].
    pub iterations: Option<u64>,
    /// How long to run.
    pub duration: Option<Duration>,
    /// What the clients take.
    pub primitive: Primitive,
}

struct Client {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    alive: bool,
}

impl WorkloadRun {
    /// A new run of the `dlock-workload` binary at `binary` (in an integration test:
    /// `env!("CARGO_BIN_EXE_dlock-workload")`).
    pub fn new(binary: impl AsRef<Path>) -> WorkloadRun {
        let dir = tempfile::Builder::new()
            .prefix("dlock-workload-")
            .tempdir()
            .expect("a directory for the run");
        let history = HistoryWriter::open(dir.path().join("history.tsv")).expect("the history");
        WorkloadRun {
            binary: binary.as_ref().to_owned(),
            dir,
            history,
            clients: Vec::new(),
        }
    }

    /// The history file.
    pub fn history_path(&self) -> &Path {
        self.history.path()
    }

    /// The history writer, for events the test records itself.
    pub fn history(&self) -> &HistoryWriter {
        &self.history
    }

    /// The register file the clients' fenced writes go to.
    pub fn register_path(&self) -> PathBuf {
        self.dir.path().join("register")
    }

    /// Starts one client process; returns its index.
    pub fn spawn(&mut self, spec: &ClientSpec) -> usize {
        let index = self.clients.len();
        let name = format!("c{index}");
        let mut command = Command::new(&self.binary);
        command
            .args(["--url", &spec.url, "--key", &spec.key, "--client", &name])
            .arg("--history")
            .arg(self.history.path())
            .arg("--register")
            .arg(self.register_path())
            .args(["--hold", &format!("{}ms", spec.hold.as_millis())])
            .args(["--wait", &format!("{}ms", spec.wait.as_millis())])
            .arg("--stop-file")
            .arg(self.dir.path().join("stop"))
            .arg("--stay")
            .args(spec.primitive.flags())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(n) = spec.iterations {
            command.args(["--iterations", &n.to_string()]);
        }
        if let Some(d) = spec.duration {
            command.args(["--duration", &format!("{}ms", d.as_millis())]);
        }
        let mut child = spawn_tied_to_this_process(command).unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.binary.display());
        });
        let stdin = child.stdin.take();
        self.clients.push(Client {
            name,
            child,
            stdin,
            alive: true,
        });
        index
    }

    /// The name client `index` writes its events under.
    pub fn name(&self, index: usize) -> &str {
        &self.clients[index].name
    }

    /// How many clients were started.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True before any client was started.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Records the start of a fault.
    pub fn fault(&self, detail: &str) {
        self.history.nemesis(EventKind::Fault, detail);
    }

    /// Records the end of a fault: from now on a live client must get the lock in time.
    pub fn heal(&self, detail: &str) {
        self.history.nemesis(EventKind::Heal, detail);
    }

    /// Stops client `index` (SIGSTOP), recording the fault.
    pub fn pause(&self, index: usize) {
        self.fault(&format!("SIGSTOP {}", self.clients[index].name));
        signal(&self.clients[index].child, libc::SIGSTOP);
    }

    /// Continues client `index` (SIGCONT), recording the heal.
    pub fn resume(&self, index: usize) {
        signal(&self.clients[index].child, libc::SIGCONT);
        self.heal(&format!("SIGCONT {}", self.clients[index].name));
    }

    /// Kills client `index` (SIGKILL), recording it; what it held must be freed within the
    /// lease plus the crash release bound, so the kill is also a heal point.
    pub fn kill(&mut self, index: usize) {
        let client = &mut self.clients[index];
        let _ = client.child.kill();
        let _ = client.child.wait();
        client.alive = false;
        let name = client.name.clone();
        self.history.nemesis(EventKind::Killed, &name);
        self.history
            .nemesis(EventKind::Fault, &format!("kill -9 {name}"));
        self.heal(&format!("{name} is dead"));
    }

    /// The clients inside their critical section by the history now (entered, not left).
    pub fn inside(&self) -> Vec<usize> {
        let events = self.events();
        let mut inside: HashMap<&str, bool> = HashMap::new();
        for event in &events {
            match event.kind {
                EventKind::Enter => {
                    inside.insert(&event.client, true);
                }
                EventKind::Exit => {
                    inside.insert(&event.client, false);
                }
                _ => {}
            }
        }
        (0..self.clients.len())
            .filter(|&i| {
                self.clients[i].alive && inside.get(self.clients[i].name.as_str()) == Some(&true)
            })
            .collect()
    }

    /// The clients waiting in acquire by the history now (started, not yet acquired), the
    /// longest waiting first: for FIFO backends, their order in the line.
    pub fn waiting(&self) -> Vec<usize> {
        let events = self.events();
        let mut waiting_since: HashMap<&str, Option<u64>> = HashMap::new();
        for event in &events {
            match event.kind {
                EventKind::Start => {
                    waiting_since.insert(&event.client, Some(event.micros));
                }
                EventKind::Acquired | EventKind::Failed | EventKind::Idle => {
                    waiting_since.insert(&event.client, None);
                }
                _ => {}
            }
        }
        let mut waiting: Vec<(u64, usize)> = (0..self.clients.len())
            .filter(|&i| self.clients[i].alive)
            .filter_map(|i| {
                let since = (*waiting_since.get(self.clients[i].name.as_str())?)?;
                Some((since, i))
            })
            .collect();
        waiting.sort();
        waiting.into_iter().map(|(_, i)| i).collect()
    }

    /// Waits (polling the history every 20 ms) until `pick` names a client, up to `limit`.
    pub fn wait_for(&self, limit: Duration, pick: impl Fn(&Self) -> Vec<usize>) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(&index) = pick(self).first() {
                return Some(index);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tells every client to stop after its current round (they then go idle).
    pub fn stop(&self) {
        std::fs::write(self.dir.path().join("stop"), b"").expect("the stop file");
    }

    /// Waits until every live client reported idle (done, still connected), up to `limit`;
    /// returns whether they all did.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let events = self.events();
            let all_idle = self.clients.iter().filter(|c| c.alive).all(|c| {
                events
                    .iter()
                    .any(|e| e.client == c.name && e.kind == EventKind::Idle)
            });
            if all_idle {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Tells every client to exit (closes their standard input) and waits for them.
    pub fn finish(&mut self) {
        for client in &mut self.clients {
            signal(&client.child, libc::SIGCONT);
            client.stdin.take();
        }
        for client in &mut self.clients {
            let deadline = Instant::now() + Duration::from_secs(10);
            while client.alive && Instant::now() < deadline {
                if let Ok(Some(_)) = client.child.try_wait() {
                    client.alive = false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if client.alive {
                let _ = client.child.kill();
                let _ = client.child.wait();
                client.alive = false;
            }
        }
    }

    /// The history so far, in time order.
    pub fn events(&self) -> Vec<Event> {
        read_history(self.history.path()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Checks the history so far.
    pub fn check(&self, config: &CheckConfig) -> Report {
        check(&self.events(), config)
    }

    /// Keeps the run's directory (history and register) after the run, returning its path.
    pub fn keep(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_owned()
    }
}

impl Drop for WorkloadRun {
    fn drop(&mut self) {
        for client in &mut self.clients {
            let _ = client.child.kill();
            let _ = client.child.wait();
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}
