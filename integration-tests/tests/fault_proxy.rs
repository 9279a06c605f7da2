//! The fault proxy itself, against a local echo server: each fault does what it says, only
//! in the direction it says, and healing restores the link without losing bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock_test_servers::{Direction, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// Long enough for a loopback round trip on a loaded 2-core machine, short enough to keep
/// the tests quick: "no reply within this" is how a held byte shows.
const SILENCE: Duration = Duration::from_millis(300);
/// What a reply that must come may take on a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(5);

/// An echo server that counts the bytes it received.
async fn echo_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if socket.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (address, received)
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut reply = vec![0u8; message.len()];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

async fn connected(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.address()).await.unwrap()
}

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let (upstream, received) = echo_server().await;
    let proxy = FaultProxy::start(upstream.as_str());
    let mut stream = connected(&proxy).await;
    let reply = timeout(PROMPTLY, round_trip(&mut stream, b"hello"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"hello");
    assert_eq!(received.load(Ordering::SeqCst), 5);
    assert_eq!(proxy.forwarded_bytes(Direction::ToServer), 5);
    assert_eq!(proxy.forwarded_bytes(Direction::ToClient), 5);
    assert_eq!(proxy.open_connections(), 1);
    drop(stream);
    let deadline = Instant::now() + PROMPTLY;
    while proxy.open_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        proxy.open_connections(),
        0,
        "a closed client closes its link"
    );
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let (upstream, _) = echo_server().await;
    let proxy = FaultProxy::start(upstream.as_str());
    let mut stream = connected(&proxy).await;
    round_trip(&mut stream, b"warm").await.unwrap();
    let latency = Duration::from_millis(100);
    proxy.set_latency(latency);
    let started = Instant::now();
    round_trip(&mut stream, b"slow").await.unwrap();
    assert!(started.elapsed() >= 2 * latency, "{:?}", started.elapsed());
    proxy.heal();
    let started = Instant::now();
    round_trip(&mut stream, b"fast").await.unwrap();
    // Healthy loopback takes well under the injected 200 ms even on a loaded machine.
    assert!(started.elapsed() < 2 * latency, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_stall_to_the_server_holds_requests_until_healed() {
    let (upstream, received) = echo_server().await;
    let proxy = FaultProxy::start(upstream.as_str());
    let mut stream = connected(&proxy).await;
    proxy.stall(Direction::ToServer);
    stream.write_all(b"held").await.unwrap();
    let mut reply = [0u8; 4];
    assert!(timeout(SILENCE, stream.read_exact(&mut reply))
        .await
        .is_err());
    assert_eq!(received.load(Ordering::SeqCst), 0, "the server saw nothing");
    proxy.unstall(Direction::ToServer);
    timeout(PROMPTLY, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"held", "nothing was lost");
}

#[tokio::test]
async fn a_stall_to_the_client_lets_requests_through() {
    let (upstream, received) = echo_server().await;
    let proxy = FaultProxy::start(upstream.as_str());
    let mut stream = connected(&proxy).await;
    proxy.stall(Direction::ToClient);
    stream.write_all(b"one way").await.unwrap();
    let deadline = Instant::now() + PROMPTLY;
    while received.load(Ordering::SeqCst) < 7 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        7,
        "the server got the request"
    );
    let mut reply = [0u8; 7];
    assert!(timeout(SILENCE, stream.read_exact(&mut reply))
        .await
        .is_err());
    proxy.heal();
    timeout(PROMPTLY, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"one way");
}

#[tokio::test]
async fn reset_sends_a_rst_and_new_connections_work() {
    let (upstream, _) = echo_server().await;
    let proxy = FaultProxy::start(upstream.as_str());
    let mut stream = connected(&proxy).await;
    round_trip(&mut stream, b"before").await.unwrap();
    proxy.reset();
    let mut byte = [0u8; 1];
    let outcome = timeout(PROMPTLY, stream.read(&mut byte)).await.unwrap();
    assert!(
        matches!(&outcome, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{outcome:?}"
    );
    let mut fresh = connected(&proxy).await;
    let reply = timeout(PROMPTLY, round_trip(&mut fresh, b"after"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"after");
}

#[tokio::test]
async fn a_blackhole_passes_nothing_until_healed() {
    let (upstream, received) = echo_server().await;
    let proxy = FaultProxy::start(upstream.as_str());
    let mut open = connected(&proxy).await;
    round_trip(&mut open, b"x").await.unwrap();
    proxy.blackhole();
    let mut fresh = connected(&proxy).await;
    open.write_all(b"old").await.unwrap();
    fresh.write_all(b"new").await.unwrap();
    let mut reply = [0u8; 3];
    assert!(timeout(SILENCE, open.read_exact(&mut reply)).await.is_err());
    assert!(timeout(SILENCE, fresh.read_exact(&mut reply))
        .await
        .is_err());
    assert_eq!(
        received.load(Ordering::SeqCst),
        1,
        "only the byte before the fault"
    );
    proxy.heal();
    for stream in [&mut open, &mut fresh] {
        timeout(PROMPTLY, stream.read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn cancel_at_poll_drops_the_future_at_the_chosen_poll() {
    use dlock_test_servers::{cancel_at_poll, count_polls};
    let steps = || async {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        7
    };
    let (polls, output) = count_polls(steps()).await;
    assert_eq!((polls, output), (4, 7));
    for n in 1..=polls {
        assert_eq!(
            cancel_at_poll(steps(), n).await,
            None,
            "cancelled at poll {n}"
        );
    }
    assert_eq!(cancel_at_poll(steps(), polls + 1).await, Some(7));
}
