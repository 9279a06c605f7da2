//! What the conformance targets of real servers share: a proxy that counts requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy on a free loopback port in front of one server, counting the requests its
/// clients send: every burst of bytes a client writes and the proxy reads in one go.
///
/// That is a round trip's worth of traffic, which is what the suite's cost tests care about
/// (P4 batched renewal, P8 one wake-up per release): a request sent on its own is one burst,
/// and requests a client pipelines back to back may merge into one, as they share a round
/// trip. Each conformance test builds its own target and so its own proxy, so counts never
/// mix between tests running in parallel against one shared server. The proxy's tasks run on
/// the test's runtime and end with it.
#[derive(Debug)]
pub struct CountingProxy {
    /// `127.0.0.1:port` of the proxy.
    pub address: String,
    requests: Arc<AtomicU64>,
}

impl CountingProxy {
    /// A proxy forwarding to `upstream` (`host:port`), counting into `requests`: several
    /// proxies (one per Redlock instance) may share one count.
    pub async fn start(upstream: &str, requests: &Arc<AtomicU64>) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the proxy");
        let address = listener
            .local_addr()
            .expect("the proxy's address")
            .to_string();
        let (upstream, counter) = (upstream.to_owned(), Arc::clone(requests));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, counter) = (upstream.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        pipe(client, server, &counter).await;
                    }
                });
            }
        });
        CountingProxy {
            address,
            requests: Arc::clone(requests),
        }
    }

    /// Requests counted so far, by every proxy sharing this one's count.
    #[allow(dead_code)]
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Forwards both ways until either side closes, counting the client's bursts.
async fn pipe(client: TcpStream, server: TcpStream, requests: &AtomicU64) {
    // Without Nagle's delay, as the clients themselves run: the proxy must not add latency
    // to the round trips the suite compares.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
