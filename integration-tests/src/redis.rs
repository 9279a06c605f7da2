//! `redis-server` for tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::local::{derefs_to_local_server, prepare, shared_server, ContainerSpec, LocalServer};
use crate::process::{free_port, ServerProcess};
use crate::Endpoint;

/// A local `redis-server` on a free loopback port, without persistence.
#[derive(Debug)]
pub struct RedisServer(LocalServer);

impl RedisServer {
    /// Starts a plain server.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`--requirepass`, TLS settings…).
    /// With `--tls-port` among them, the free port is the TLS port and the plain port is off.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let binary = "/usr/bin/redis-server";
        let dir = prepare(binary, "redis-server", "redis");
        let port = free_port();
        let tls = extra.contains(&"--tls-port");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
        ];
        if tls {
            args.extend(["--port".into(), "0".into()]);
            let mut rest = extra.iter().map(|a| a.to_string());
            while let Some(arg) = rest.next() {
                args.push(arg.clone());
                if arg == "--tls-port" {
                    rest.next();
                    args.push(port.to_string());
                }
            }
        } else {
            args.extend(["--port".into(), port.to_string()]);
            args.extend(extra.iter().map(|a| a.to_string()));
        }
        let process = ServerProcess::start(
            &format!("redis-server on port {port}"),
            binary,
            args,
            dir.path().join("redis.log"),
            move || answers_ping(port, tls),
        );
        RedisServer(LocalServer::new(process, port, dir, "redis"))
    }

    pub(crate) fn start_shared() -> Endpoint {
        let container = ContainerSpec {
            image: "redis:7",
            port: 6379,
            command: &[],
            ready_line: "Ready to accept connections",
            scheme: "redis",
        };
        shared_server(container, || Self::start().0)
    }
}

derefs_to_local_server!(RedisServer);

fn answers_ping(port: u16, tls: bool) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if tls {
        return true;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 64];
    stream.write_all(b"PING\r\n").is_ok()
        && matches!(stream.read(&mut reply), Ok(n) if n > 0 && (reply[0] == b'+' || reply[0] == b'-'))
}
