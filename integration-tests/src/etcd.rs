//! An etcd server (Debian's `etcd-server` package).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, ServerProcess};
use crate::{container, missing, Endpoint};

/// A single-member etcd cluster on free loopback ports, with its own data directory (kept
/// across [`ServerProcess::restart`], so locks survive a restart).
#[derive(Debug)]
pub struct EtcdServer {
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl EtcdServer {
    /// Starts a server.
    pub fn start() -> EtcdServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `etcd` arguments (TLS files, …). With TLS arguments the
    /// client URL scheme becomes `https`; pass `--cert-file`, `--key-file` for that.
    pub fn start_with(extra: &[&str]) -> EtcdServer {
        let binary = "/usr/bin/etcd";
        if !Path::new(binary).exists() {
            missing("etcd");
        }
        let (port, peer) = (free_port(), free_port());
        let dir = tempfile::Builder::new()
            .prefix("dlock-etcd-")
            .tempdir()
            .expect("a temporary directory");
        let tls = extra.contains(&"--cert-file");
        let scheme = if tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut args: Vec<String> = [
            "--name",
            "dlock-test",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("dlock-test={peer_url}"),
            "--log-level",
            "warn",
            // A small WAL preallocation keeps each test server's files light.
            "--quota-backend-bytes",
            "268435456",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = ServerProcess::start(
            &format!("etcd on port {port}"),
            binary,
            args,
            dir.path().join("etcd.log"),
            move || {
                if tls {
                    TcpStream::connect(("127.0.0.1", port)).is_ok()
                } else {
                    is_healthy(port)
                }
            },
        );
        EtcdServer { process, port, dir }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.address())
    }

    /// The process, to kill, pause or restart it.
    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    pub(crate) fn start_shared() -> Endpoint {
        let etcd_args = [
            "etcd",
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
        ];
        if let Some(endpoint) = container::start(
            "quay.io/coreos/etcd:v3.5.17",
            2379,
            &etcd_args,
            "ready to serve client requests",
            "etcd",
        ) {
            return endpoint;
        }
        let server = Self::start();
        let endpoint = Endpoint {
            url: server.url(),
            address: server.address(),
        };
        let EtcdServer { process, dir, .. } = server;
        process.keep_until_exit(dir.keep());
        endpoint
    }
}

/// True when etcd's `/health` says it is healthy.
fn is_healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
