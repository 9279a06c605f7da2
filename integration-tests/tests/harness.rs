//! The harness itself: each server starts, answers, survives a restart and goes away.

use std::net::TcpStream;

use dlock_test_servers::{EtcdServer, RedisServer, ZooKeeperServer};

#[test]
fn redis_starts_restarts_and_is_killed_on_drop() {
    let mut server = RedisServer::start();
    let port = server.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    server.process().kill();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    server.process().restart();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    let pid = server.process().pid().expect("running");
    drop(server);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
}

#[test]
fn zookeeper_answers_four_letter_words() {
    let server = ZooKeeperServer::start();
    assert_eq!(server.command("ruok").as_deref(), Some("imok"));
}

#[test]
fn etcd_restarts_with_its_data() {
    let mut server = EtcdServer::start();
    let port = server.port();
    server.process().stop();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    server.process().restart();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn shared_servers_are_reachable() {
    for endpoint in [
        dlock_test_servers::shared_redis(),
        dlock_test_servers::shared_etcd(),
    ] {
        assert!(
            TcpStream::connect(endpoint.address.as_str()).is_ok(),
            "{endpoint:?}"
        );
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.contains(") Z "))
        .unwrap_or(true)
}
