//! `redis-server` for tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, ServerProcess};
use crate::{container, missing, Endpoint};

/// A local `redis-server` on a free loopback port, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a plain server.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`--requirepass`, TLS settings…).
    /// With `--tls-port` among them, the free port is the TLS port and the plain port is off.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let binary = "/usr/bin/redis-server";
        if !Path::new(binary).exists() {
            missing("redis-server");
        }
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("dlock-redis-")
            .tempdir()
            .expect("a temporary directory");
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
        RedisServer { process, port, dir }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process, to kill, pause or restart it.
    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    /// Keeps the server until the test binary exits and returns where to reach it: from a
    /// container instead, when a Docker engine answers.
    pub(crate) fn start_shared() -> Endpoint {
        if let Some(endpoint) =
            container::start("redis:7", 6379, &[], "Ready to accept connections", "redis")
        {
            return endpoint;
        }
        let server = Self::start();
        let endpoint = Endpoint {
            url: server.url(),
            address: format!("127.0.0.1:{}", server.port),
        };
        let RedisServer { process, dir, .. } = server;
        process.keep_until_exit(dir.keep());
        endpoint
    }
}

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
