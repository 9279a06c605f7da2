//! A server running as a child process: started, probed, stopped, killed, paused, restarted,
//! and never left behind.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a server to listen on, never handed out twice by this
/// process.
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux): a port the
/// kernel picked for `bind(0)` is the kind it also gives to outgoing connections, and the
/// tests' many client connections took such ports between this check and the server's bind.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let port = PORTS.start + (rand_u32() % u32::from(PORTS.end - PORTS.start)) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

/// Where [`free_port`] looks: above the well-known servers' ports, below the ephemeral range.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A random number from the standard library's hasher seeds (no extra dependency).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// One server process and the command that starts it again.
pub struct ServerProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
}

impl ServerProcess {
    /// Starts `program args…`, logging to `log`, and waits until `ready` answers true.
    pub fn start(
        name: &str,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: PathBuf,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> ServerProcess {
        let mut server = ServerProcess {
            name: name.to_owned(),
            program: program.into(),
            args,
            log,
            child: None,
            ready: Box::new(ready),
        };
        server.restart();
        server
    }

    /// The operating system's id of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server cleanly (SIGTERM), waiting up to ten seconds before killing it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Freezes the server (SIGSTOP): it keeps its connections but answers nothing, as a
    /// partitioned or paused server would.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
    }

    /// Starts the server again with the same command (same port, same data directory),
    /// killing it first if it runs, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let child = spawn_tied_to_this_process(command).unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({}): {e}",
                self.name,
                self.program.display()
            )
        });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if (self.ready)() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited with {status} before answering; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not answer within 60 s; its log:\n{}",
            self.name,
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log.floor_char_boundary_compat(start)..].to_owned()
    }

    /// Keeps the process running until this test binary exits; the exit hook kills it and
    /// removes `files`.
    pub(crate) fn keep_until_exit(mut self, files: PathBuf) {
        if let Some(child) = self.child.take() {
            at_exit(Cleanup::Kill(child.id()));
        }
        at_exit(Cleanup::RemoveDir(files));
    }
}

/// The server processes of one replicated topology (etcd members, ZooKeeper servers), by
/// index: tests kill, pause, resume or restart one, and mend the topology by bringing them all
/// back. Each process has its own lock, so the exit clean-up can skip one a test holds.
#[derive(Debug)]
pub struct ProcessGroup {
    processes: Vec<Mutex<ServerProcess>>,
}

impl ProcessGroup {
    /// The group of `processes`, numbered in this order.
    pub fn new(processes: Vec<ServerProcess>) -> ProcessGroup {
        ProcessGroup {
            processes: processes.into_iter().map(Mutex::new).collect(),
        }
    }

    /// How many processes the group has.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// True for a group of none.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Kills process `index` at once (SIGKILL), as a crash would.
    pub fn kill(&self, index: usize) {
        self.process(index).kill();
    }

    /// Freezes process `index` (SIGSTOP).
    pub fn pause(&self, index: usize) {
        self.process(index).pause();
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self, index: usize) {
        self.process(index).resume();
    }

    /// Starts process `index` again with its data, killing it first if it runs.
    pub fn restart(&self, index: usize) {
        self.process(index).restart();
    }

    /// Continues every paused process and starts every dead one: the topology whole again
    /// whatever a test did to it (the caller then waits until it serves).
    pub fn revive_all(&self) {
        for index in 0..self.len() {
            let mut process = self.process(index);
            process.resume();
            if process.pid().is_none() {
                process.restart();
            }
        }
    }

    /// Kills every process no test holds at this moment (at exit, when a test may still be
    /// in the middle of one).
    pub fn kill_all_now(&self) {
        for process in &self.processes {
            if let Ok(mut process) = process.try_lock() {
                process.resume();
                process.kill();
            }
        }
    }

    fn process(&self, index: usize) -> MutexGuard<'_, ServerProcess> {
        self.processes[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish()
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut index: usize) -> usize {
        while index > 0 && !self.is_char_boundary(index) {
            index -= 1;
        }
        index
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Spawns `command` from one long-lived thread with PR_SET_PDEATHSIG, so the kernel kills
/// the server if this test binary dies, even by SIGKILL. (The signal follows the thread that
/// spawned the child, so it must be a thread that lives as long as the process.)
pub(crate) fn spawn_tied_to_this_process(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("dlock-test-servers".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
                    unsafe {
                        command.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the server spawner thread");
        Mutex::new(requests)
    });
    let (reply, outcome) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, reply))
        .expect("the spawner thread lives as long as the process");
    outcome.recv().expect("the spawner answers")
}

/// What the exit hook undoes for shared servers.
pub(crate) enum Cleanup {
    Kill(u32),
    RemoveDir(PathBuf),
    RemoveContainer(String),
    /// Anything else, such as killing the current processes of a shared cluster (whose
    /// members get new pids when a test restarts them).
    Run(Box<dyn FnOnce() + Send>),
}

/// A topology one test binary shares (a cluster of server processes in a directory of its
/// own): started with `start` on first use; at exit its processes (their current pids: tests
/// restart members) are killed and its directory removed.
pub(crate) fn shared_topology<T: Send + Sync>(
    cell: &'static OnceLock<T>,
    start: impl FnOnce() -> T,
    processes: fn(&T) -> &ProcessGroup,
    dir: fn(&T) -> &std::path::Path,
) -> &'static T {
    cell.get_or_init(|| {
        let topology = start();
        at_exit(Cleanup::Run(Box::new(move || {
            if let Some(topology) = cell.get() {
                processes(topology).kill_all_now();
            }
        })));
        at_exit(Cleanup::RemoveDir(dir(&topology).to_owned()));
        topology
    })
}

/// Registers `cleanup` to run when the test binary exits normally (PR_SET_PDEATHSIG covers
/// abnormal exits for processes).
pub(crate) fn at_exit(cleanup: Cleanup) {
    static CLEANUPS: OnceLock<Mutex<Vec<Cleanup>>> = OnceLock::new();
    extern "C" fn run_cleanups() {
        let Some(cleanups) = CLEANUPS.get() else {
            return;
        };
        for cleanup in cleanups.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            match cleanup {
                // SAFETY: kill(2) has no memory-safety preconditions.
                Cleanup::Kill(pid) => unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                },
                Cleanup::RemoveDir(path) => {
                    let _ = std::fs::remove_dir_all(path);
                }
                Cleanup::Run(run) => run(),
                Cleanup::RemoveContainer(id) => {
                    let _ = Command::new("docker")
                        .args(["rm", "--force", "--volumes", &id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
    CLEANUPS
        .get_or_init(|| {
            // SAFETY: registering a plain extern "C" function with atexit(3).
            unsafe {
                libc::atexit(run_cleanups);
            }
            Mutex::new(Vec::new())
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(cleanup);
}
