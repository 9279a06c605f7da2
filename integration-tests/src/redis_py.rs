//! redis-py's `Lock` (Debian's `python3-redis`, for `/usr/bin/python3`), the foreign client of
//! the Redis `layout=redis-standard` interop tests: `SET name token NX PX timeout`, released
//! and extended by compare-and-delete / compare-and-pexpire scripts, the layout redsync,
//! node-redlock and rslock share. Each process is one client, driven by lines on its stdin and
//! stdout like the ZooKeeper clients of [`ForeignLock`].

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::foreign_locks::{ForeignLock, PYTHON};

/// The Python side. Modes: `try` (one `acquire(blocking=False)`: prints `acquired` or `busy`,
/// releases, exits), `hold` (one non-blocking try first, then prints `started`, so that a
/// lock that was busy then is one it waits for; acquires blocking, prints `held`, holds until
/// a line or EOF on stdin, releases, prints `released`) and `count` (under the lock, `rounds`
/// times: read the number in `file`, pause 10 ms, write it plus one; prints `counted`).
/// `timeout` is the lock's own (its key's expiry, seconds); waiting polls every 20 ms.
///
/// Given several addresses (`host:port,host:port,…`), the lock is Redlock as redsync and
/// node-redlock take it: the same random value `SET NX PX` on every instance, held when a
/// majority set it, otherwise deleted again where it was set (compare-and-delete, redis-py's
/// own release script); released by compare-and-delete on every instance.
const SCRIPT: &str = r#"
import sys
import time
import uuid
import redis

address, name, mode, timeout = sys.argv[1:5]


def client_of(address):
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=5)


class Redlock:
    def __init__(self, addresses, name, timeout):
        self.clients = [client_of(a) for a in addresses]
        self.name, self.ttl = name, int(float(timeout) * 1000)
        self.token = None

    def acquire(self, blocking=True, blocking_timeout=None):
        stop_at = None if blocking_timeout is None else time.monotonic() + blocking_timeout
        while True:
            token = uuid.uuid4().hex
            got = 0
            for client in self.clients:
                try:
                    if client.set(self.name, token, nx=True, px=self.ttl):
                        got += 1
                except redis.RedisError:
                    pass
            if got >= len(self.clients) // 2 + 1:
                self.token = token
                return True
            self._release(token)
            if not blocking or (stop_at is not None and time.monotonic() > stop_at):
                return False
            time.sleep(0.02)

    def release(self):
        self._release(self.token)
        self.token = None

    def _release(self, token):
        for client in self.clients:
            try:
                client.eval(redis.lock.Lock.LUA_RELEASE_SCRIPT, 1, self.name, token)
            except redis.RedisError:
                pass


if "," in address:
    lock = Redlock(address.split(","), name, timeout)
else:
    lock = client_of(address).lock(name, timeout=float(timeout), sleep=0.02)
if mode == "try":
    got = lock.acquire(blocking=False)
    print("acquired" if got else "busy", flush=True)
    if got:
        lock.release()
elif mode == "count":
    counter, rounds = sys.argv[5], int(sys.argv[6])
    for _ in range(rounds):
        if not lock.acquire(blocking=True, blocking_timeout=120):
            sys.exit("timed out waiting for the lock")
        with open(counter) as f:
            value = int(f.read().strip() or 0)
        time.sleep(0.01)
        with open(counter, "w") as f:
            f.write(str(value + 1))
        lock.release()
    print("counted", flush=True)
else:
    got = lock.acquire(blocking=False)
    print("started", flush=True)
    if not got and not lock.acquire(blocking=True, blocking_timeout=120):
        sys.exit("timed out waiting for the lock")
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
"#;

fn command(address: &str, key: &str, mode: &str, timeout: Duration) -> Command {
    let mut command = Command::new(PYTHON);
    command
        .args(["-c", SCRIPT, address, key, mode])
        .arg(timeout.as_secs_f64().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Starts a redis-py client on `address` (`host:port`, or several for Redlock) that takes the lock `key` with a
/// `timeout` (its key's expiry): it has tried once when this returns, and waits (polling)
/// if that found the lock busy. [`ForeignLock::wait_held`] waits for the grant.
pub fn redis_py_start(address: &str, key: &str, timeout: Duration) -> ForeignLock {
    ForeignLock::spawn(command(address, key, "hold", timeout))
}

/// Starts a redis-py client and waits until it holds the lock.
pub fn redis_py_hold(address: &str, key: &str, timeout: Duration) -> ForeignLock {
    let mut lock = redis_py_start(address, key, timeout);
    lock.wait_held();
    lock
}

/// One `lock.acquire(blocking=False)` in a process of its own, released at once if it won:
/// `true` if redis-py got the lock.
pub fn redis_py_try_lock(address: &str, key: &str) -> bool {
    let output = command(address, key, "try", Duration::from_secs(10))
        .stdin(Stdio::null())
        .output()
        .expect("python3-redis runs (scripts/install-test-servers.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "redis-py try: {}", output.status);
    match text.trim() {
        "acquired" => true,
        "busy" => false,
        other => panic!("redis-py try said {other:?}"),
    }
}

/// Starts a redis-py client that increments the number in `file` `rounds` times, each time
/// under the lock `key` (a read, a 10 ms pause, a write: overlapping holders lose
/// increments). Wait for it with [`Child::wait_with_output`]; it prints `counted`.
pub fn redis_py_count(address: &str, key: &str, file: &std::path::Path, rounds: u32) -> Child {
    command(address, key, "count", Duration::from_secs(10))
        .arg(file)
        .arg(rounds.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3-redis runs (scripts/install-test-servers.sh installs it)")
}
