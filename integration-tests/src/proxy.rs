//! A userspace TCP proxy that injects network faults into one client link: latency, a stall
//! in one direction, connection resets and a blackhole, switched on and off while the test
//! runs.
//!
//! Put one proxy between each client and each server it talks to (point the client's URL at
//! [`FaultProxy::address`]), so a fault cuts exactly the link it should. The proxy runs on a
//! runtime thread of its own, so it keeps forwarding whatever the test's runtime is doing,
//! and every control method is a plain synchronous call usable from sync and async tests.
//!
//! Only loopback upstreams are accepted: the harness never sends traffic off the machine.
//!
//! ```no_run
//! use std::time::Duration;
//! use dlock_test_servers::{Direction, FaultProxy};
//!
//! let proxy = FaultProxy::start("127.0.0.1:6379");
//! let url = format!("redis://{}", proxy.address());
//! // … connect a client to `url` …
//! proxy.set_latency(Duration::from_millis(20));
//! proxy.stall(Direction::ToServer); // requests are held, replies still flow
//! proxy.heal(); // held bytes are delivered, as TCP retransmission would
//! proxy.reset(); // every open connection gets a RST on both sides
//! ```

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server: requests.
    ToServer,
    /// From the server to the client: replies, pushed messages.
    ToClient,
}

/// The faults in force on a proxy; [`Faults::default`] is a healthy link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every chunk of bytes going to the server (one way).
    pub latency_to_server: Duration,
    /// Added to every chunk of bytes going to the client (one way).
    pub latency_to_client: Duration,
    /// Bytes to the server are held (not lost) until the stall ends.
    pub stall_to_server: bool,
    /// Bytes to the client are held (not lost) until the stall ends.
    pub stall_to_client: bool,
    /// Nothing passes either way, and new connections are accepted but never reach the
    /// server, until healed: a partition that TCP retransmission would bridge once it ends.
    pub blackhole: bool,
}

/// A fault-injecting TCP proxy in front of one upstream address. Dropping it closes the
/// listener and every connection through it.
pub struct FaultProxy {
    address: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`host:port`, which
    /// must resolve to a loopback address).
    pub fn start(upstream: impl ToSocketAddrs) -> FaultProxy {
        let upstream = upstream
            .to_socket_addrs()
            .expect("the proxy's upstream resolves")
            .next()
            .expect("the proxy's upstream has an address");
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy only forwards to loopback addresses, not {upstream}"
        );
        let listener = StdListener::bind("127.0.0.1:0").expect("a loopback port for the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let address = listener.local_addr().expect("the proxy's address");
        let (faults, _) = watch::channel(Faults::default());
        let (resets, _) = watch::channel(0u64);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            faults,
            resets,
            closed,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            received: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let task_shared = Arc::clone(&shared);
        runtime().spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            accept_loop(listener, upstream, task_shared).await;
        });
        FaultProxy {
            address,
            upstream,
            shared,
        }
    }

    /// Where clients connect: `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The server it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    /// Replaces every fault at once.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Delays every chunk by `latency` in each direction (a round trip gains twice that).
    /// Chunks keep their order and the link keeps its throughput.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.send_modify(|faults| {
            faults.latency_to_server = latency;
            faults.latency_to_client = latency;
        });
    }

    /// Holds every byte going in `direction` until [`FaultProxy::heal`] (or
    /// [`FaultProxy::unstall`]); the other direction keeps flowing.
    pub fn stall(&self, direction: Direction) {
        self.set_stall(direction, true);
    }

    /// Ends a stall in `direction`: the held bytes are delivered in order.
    pub fn unstall(&self, direction: Direction) {
        self.set_stall(direction, false);
    }

    /// Cuts the link both ways, for open and new connections alike, until healed.
    pub fn blackhole(&self) {
        self.shared
            .faults
            .send_modify(|faults| faults.blackhole = true);
    }

    /// Resets every open connection now: both the client and the server get a TCP RST.
    /// Connections opened afterwards work (unless another fault says otherwise).
    pub fn reset(&self) {
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
    }

    /// Ends every fault: no latency, no stall, no blackhole. Held bytes are delivered.
    pub fn heal(&self) {
        self.set_faults(Faults::default());
    }

    /// How many client connections are open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// How many client connections the proxy has accepted since it started.
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many bytes have been delivered in `direction` since the proxy started.
    pub fn forwarded_bytes(&self, direction: Direction) -> u64 {
        self.shared.forwarded[direction.index()].load(Ordering::SeqCst)
    }

    /// How many bytes the proxy has taken in from the sending side in `direction`, delivered
    /// or held: tells a test that a request was sent while its link is cut.
    pub fn received_bytes(&self, direction: Direction) -> u64 {
        self.shared.received[direction.index()].load(Ordering::SeqCst)
    }

    fn set_stall(&self, direction: Direction, on: bool) {
        self.shared.faults.send_modify(|faults| match direction {
            Direction::ToServer => faults.stall_to_server = on,
            Direction::ToClient => faults.stall_to_client = on,
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.send_replace(true);
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("address", &self.address)
            .field("upstream", &self.upstream)
            .field("faults", &self.faults())
            .finish()
    }
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }

    fn latency(self, faults: &Faults) -> Duration {
        match self {
            Direction::ToServer => faults.latency_to_server,
            Direction::ToClient => faults.latency_to_client,
        }
    }

    fn held(self, faults: &Faults) -> bool {
        faults.blackhole
            || match self {
                Direction::ToServer => faults.stall_to_server,
                Direction::ToClient => faults.stall_to_client,
            }
    }
}

/// What the proxy's tasks share with its handle.
struct Shared {
    faults: watch::Sender<Faults>,
    /// Bumped by every [`FaultProxy::reset`]; connections open at that moment are reset.
    resets: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    open: AtomicUsize,
    accepted: AtomicU64,
    forwarded: [AtomicU64; 2],
    received: [AtomicU64; 2],
}

/// The runtime every proxy of this process runs on: one thread, started on first use, so
/// proxies keep forwarding while a test's own runtime is blocked or gone.
fn runtime() -> &'static Handle {
    static RUNTIME: OnceLock<Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the proxy runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("dlock-fault-proxy".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the proxy thread");
        handle
    })
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, Arc::clone(&shared)));
            }
            _ = closed.wait_for(|closed| *closed) => return,
        }
    }
}

/// Forwards one client connection until either side closes it, a reset, or the proxy's end.
async fn serve(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(&shared.open);
    let mut resets = shared.resets.subscribe();
    resets.mark_unchanged();
    let mut closed = shared.closed.subscribe();
    let mut faults = shared.faults.subscribe();
    let connected = async {
        // A blackholed link never reaches the server; the client sees a silent connection.
        faults.wait_for(|faults| !faults.blackhole).await.ok()?;
        TcpStream::connect(upstream).await.ok()
    };
    let server = tokio::select! {
        server = connected => server,
        _ = resets.changed() => None,
        _ = closed.wait_for(|closed| *closed) => None,
    };
    let Some(server) = server else {
        reset_socket(client.as_raw_fd());
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let fds = [client.as_raw_fd(), server.as_raw_fd()];
    // Borrowed halves: owned write halves would send a FIN when dropped, ahead of the RST.
    let (mut client, mut server) = (client, server);
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let to_server = pump(client_read, server_write, Direction::ToServer, &shared);
    let to_client = pump(server_read, client_write, Direction::ToClient, &shared);
    tokio::pin!(to_server, to_client);
    let (mut server_done, mut client_done) = (false, false);
    while !(server_done && client_done) {
        tokio::select! {
            ended = &mut to_server, if !server_done => {
                server_done = true;
                if ended.is_err() { break; }
            }
            ended = &mut to_client, if !client_done => {
                client_done = true;
                if ended.is_err() { break; }
            }
            _ = resets.changed() => {
                fds.iter().for_each(|fd| reset_socket(*fd));
                break;
            }
            _ = closed.wait_for(|closed| *closed) => break,
        }
    }
    // Leaving drops both sockets (after a reset: with a RST).
}

/// Copies `from` to `to`, delaying and holding chunks as the faults say; ends with a
/// half-close once `from` ends and everything read was delivered.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    direction: Direction,
    shared: &Shared,
) -> std::io::Result<()> {
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reading = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            shared.received[direction.index()].fetch_add(n as u64, Ordering::SeqCst);
            if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    };
    let mut faults = shared.faults.subscribe();
    let writing = async move {
        let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        while let Some(chunk) = pending.recv().await {
            held.push_back(chunk);
            while let Some((read_at, bytes)) = held.pop_front() {
                // Latency is read at delivery time, so raising or clearing it takes effect
                // on chunks already in flight.
                loop {
                    let current = faults.borrow_and_update().clone();
                    if direction.held(&current) {
                        if faults.changed().await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    let due = read_at + direction.latency(&current);
                    if due <= Instant::now() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        changed = faults.changed() => if changed.is_err() { return Ok(()) },
                    }
                }
                // Counted before the write, so a peer that saw the bytes sees them counted.
                shared.forwarded[direction.index()].fetch_add(bytes.len() as u64, Ordering::SeqCst);
                to.write_all(&bytes).await?;
                while let Ok(next) = pending.try_recv() {
                    held.push_back(next);
                }
            }
        }
        to.shutdown().await
    };
    let (read, written) = tokio::join!(reading, writing);
    read.and(written)
}

struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Makes closing `fd` send a RST instead of a FIN (SO_LINGER with a zero timeout).
fn reset_socket(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor this task owns, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
