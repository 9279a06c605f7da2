//! What every local test server has: a process on a free loopback port and a directory of
//! its own files.

use std::path::Path;

use tempfile::TempDir;

use crate::process::ServerProcess;
use crate::{container, missing, Endpoint};

/// A server process this test binary started, on a free loopback port, with its own files.
/// [`RedisServer`](crate::RedisServer), [`ZooKeeperServer`](crate::ZooKeeperServer) and
/// [`EtcdServer`](crate::EtcdServer) dereference to it.
#[derive(Debug)]
pub struct LocalServer {
    process: ServerProcess,
    port: u16,
    dir: TempDir,
    scheme: &'static str,
}

impl LocalServer {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `SCHEME://127.0.0.1:PORT`, the dlock URL of the server.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address())
    }

    /// The process, to kill, pause or restart it.
    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    /// The server's own directory (data, logs, configuration).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn new(
        process: ServerProcess,
        port: u16,
        dir: TempDir,
        scheme: &'static str,
    ) -> Self {
        LocalServer {
            process,
            port,
            dir,
            scheme,
        }
    }

    /// Keeps the server until the test binary exits and returns where to reach it.
    pub(crate) fn into_shared(self) -> Endpoint {
        let endpoint = Endpoint {
            url: self.url(),
            address: self.address(),
        };
        let LocalServer { process, dir, .. } = self;
        process.keep_until_exit(dir.keep());
        endpoint
    }
}

/// Lets a server type (a newtype over [`LocalServer`]) offer its port, URL and process.
macro_rules! derefs_to_local_server {
    ($server:ty) => {
        impl std::ops::Deref for $server {
            type Target = $crate::LocalServer;
            fn deref(&self) -> &$crate::LocalServer {
                &self.0
            }
        }

        impl std::ops::DerefMut for $server {
            fn deref_mut(&mut self) -> &mut $crate::LocalServer {
                &mut self.0
            }
        }
    };
}
pub(crate) use derefs_to_local_server;

/// How to run a server in a container instead, when a Docker engine answers.
#[derive(Clone, Copy)]
pub(crate) struct ContainerSpec {
    pub(crate) image: &'static str,
    pub(crate) port: u16,
    pub(crate) command: &'static [&'static str],
    pub(crate) ready_line: &'static str,
    pub(crate) scheme: &'static str,
}

/// A server shared by the whole test binary: a container when a Docker engine answers,
/// otherwise the local process `start` makes.
pub(crate) fn shared_server(
    container: ContainerSpec,
    start: impl FnOnce() -> LocalServer,
) -> Endpoint {
    container::start(&container).unwrap_or_else(|| start().into_shared())
}

/// A fresh directory for one server's files; fails the test if `binary` is not installed.
pub(crate) fn prepare(binary: &str, what: &str, name: &str) -> TempDir {
    if !Path::new(binary).exists() {
        missing(what);
    }
    tempfile::Builder::new()
        .prefix(&format!("dlock-{name}-"))
        .tempdir()
        .expect("a temporary directory")
}
