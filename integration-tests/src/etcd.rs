//! An etcd server (Debian's `etcd-server` package).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::local::{derefs_to_local_server, prepare, shared_server, ContainerSpec, LocalServer};
use crate::process::{free_port, ServerProcess};
use crate::Endpoint;

/// A single-member etcd cluster on free loopback ports, with its own data directory (kept
/// across [`ServerProcess::restart`], so locks survive a restart).
#[derive(Debug)]
pub struct EtcdServer(LocalServer);

impl EtcdServer {
    /// Starts a server.
    pub fn start() -> EtcdServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `etcd` arguments (TLS files, …). With TLS arguments the
    /// client URL scheme becomes `https`; pass `--cert-file`, `--key-file` for that.
    pub fn start_with(extra: &[&str]) -> EtcdServer {
        let binary = "/usr/bin/etcd";
        let dir = prepare(binary, "etcd", "etcd");
        let (port, peer) = (free_port(), free_port());
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
        EtcdServer(LocalServer::new(process, port, dir, "etcd"))
    }

    pub(crate) fn start_shared() -> Endpoint {
        let container = ContainerSpec {
            image: "quay.io/coreos/etcd:v3.5.17",
            port: 2379,
            command: &[
                "etcd",
                "--listen-client-urls",
                "http://0.0.0.0:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
            ],
            ready_line: "ready to serve client requests",
            scheme: "etcd",
        };
        shared_server(container, || Self::start().0)
    }
}

derefs_to_local_server!(EtcdServer);

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
