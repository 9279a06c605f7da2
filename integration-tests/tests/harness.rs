//! The harness itself: each server starts, answers, survives a restart and goes away.

use std::net::TcpStream;

use dlock_test_servers::{EtcdServer, RedisCluster, RedisServer, ZooKeeperServer};

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

#[test]
fn redis_cluster_moves_a_slot_and_fails_over() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.primaries().len(), 3);
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    let slot = RedisCluster::slot_of("dlock:{a|b/c}:lock");
    let owner = cluster.primary_of(slot);
    let other = cluster.another_primary(slot);
    assert_eq!(inline(&owner, "SET dlock:{a|b/c}:lock held"), "+OK\r\n");
    cluster.migrate_slot(slot, &other);
    assert_eq!(cluster.primary_of(slot), other);
    assert_eq!(inline(&other, "GET dlock:{a|b/c}:lock"), "$4\r\nheld\r\n");
    let started = std::time::Instant::now();
    let killed = cluster.kill_primary_of(slot);
    eprintln!("failover took {:?}", started.elapsed());
    assert_eq!(killed, other);
    let promoted = cluster.primary_of(slot);
    assert_ne!(promoted, killed);
    assert_eq!(cluster.primaries().len(), 3);
    let started = std::time::Instant::now();
    cluster.restart(&killed);
    eprintln!("rejoin took {:?}", started.elapsed());
    assert_eq!(cluster.primary_of(slot), promoted);
}

/// One inline command on a fresh connection; the first read of its reply.
fn inline(address: &str, line: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).expect("connects");
    stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.contains(") Z "))
        .unwrap_or(true)
}
