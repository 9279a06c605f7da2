//! What `dlock bench --hold` reads from the server between its phases: its memory (or data
//! size) and the requests it has handled, each by the server's own cheap statistics command
//! over a connection of its own. Only plain-text URLs with one reachable server are read;
//! anything else (TLS, Redlock, clusters, `memory://`) reads as unknown.

use std::time::Duration;

use dlock::BackendUrl;
use dlock_conformance::bench::ServerSample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a statistics read may take before it counts as unknown.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Which statistics a server gives, and where.
#[derive(Debug, Clone)]
pub enum ServerStats {
    /// Redis `INFO`: `used_memory` and `total_commands_processed`.
    Redis {
        /// `host:port`.
        address: String,
        /// `AUTH` arguments, if the URL has credentials.
        auth: Vec<String>,
    },
    /// ZooKeeper `mntr`: `zk_approximate_data_size` and `zk_packets_received`.
    ZooKeeper {
        /// `host:port`.
        address: String,
    },
    /// etcd `/metrics` on the client port: `etcd_mvcc_db_total_size_in_use_in_bytes` and the
    /// sum of `grpc_server_msg_received_total`.
    Etcd {
        /// `host:port`.
        address: String,
    },
    /// Nothing readable.
    Unknown,
}

impl ServerStats {
    /// The statistics `url` lets us read.
    pub fn for_url(url: &str) -> ServerStats {
        let Ok(parsed) = BackendUrl::parse_any(url, 0) else {
            return ServerStats::Unknown;
        };
        let Some(first) = parsed.hosts.first() else {
            return ServerStats::Unknown;
        };
        let port = |default: u16| if first.port == 0 { default } else { first.port };
        match parsed.scheme.as_str() {
            "redis" if parsed.hosts.len() == 1 => ServerStats::Redis {
                address: format!("{}:{}", first.host, port(6379)),
                auth: match (&parsed.user, &parsed.password) {
                    (Some(user), Some(password)) if !user.is_empty() => {
                        vec![user.clone(), password.clone()]
                    }
                    (_, Some(password)) => vec![password.clone()],
                    _ => Vec::new(),
                },
            },
            "zookeeper" | "zk" => ServerStats::ZooKeeper {
                address: format!("{}:{}", first.host, port(2181)),
            },
            "etcd" => ServerStats::Etcd {
                address: format!("{}:{}", first.host, port(2379)),
            },
            _ => ServerStats::Unknown,
        }
    }

    /// What the server's memory figure is, for the report; `None` if nothing is read.
    pub fn memory_measure(&self) -> Option<&'static str> {
        match self {
            ServerStats::Redis { .. } => Some("Redis INFO used_memory"),
            ServerStats::ZooKeeper { .. } => Some("ZooKeeper mntr zk_approximate_data_size"),
            ServerStats::Etcd { .. } => Some("etcd etcd_mvcc_db_total_size_in_use_in_bytes"),
            ServerStats::Unknown => None,
        }
    }

    /// Reads the server now; unknown fields where it cannot.
    pub async fn sample(&self) -> ServerSample {
        tokio::time::timeout(TIMEOUT, self.read())
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    async fn read(&self) -> Option<ServerSample> {
        match self {
            ServerStats::Redis { address, auth } => {
                let mut request = Vec::new();
                if !auth.is_empty() {
                    let mut words = vec!["AUTH"];
                    words.extend(auth.iter().map(String::as_str));
                    request.extend(resp(&words));
                }
                request.extend(resp(&["INFO"]));
                let text = exchange(address, &request, RedisInfoEnd).await?;
                Some(ServerSample {
                    memory_bytes: field(&text, "used_memory"),
                    requests: field(&text, "total_commands_processed"),
                })
            }
            ServerStats::ZooKeeper { address } => {
                let text = exchange(address, b"mntr", ToEof).await?;
                Some(ServerSample {
                    memory_bytes: field(&text, "zk_approximate_data_size"),
                    requests: field(&text, "zk_packets_received"),
                })
            }
            ServerStats::Etcd { address } => {
                let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
                let text = exchange(address, request.as_bytes(), ToEof).await?;
                let received = text
                    .lines()
                    .filter(|line| line.starts_with("grpc_server_msg_received_total{"))
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>();
                Some(ServerSample {
                    memory_bytes: field(&text, "etcd_mvcc_db_total_size_in_use_in_bytes"),
                    requests: text
                        .contains("grpc_server_msg_received_total{")
                        .then_some(received as u64),
                })
            }
            ServerStats::Unknown => None,
        }
    }
}

/// A command in RESP.
fn resp(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend(format!("${}\r\n{word}\r\n", word.len()).into_bytes());
    }
    out
}

/// When an answer is complete.
trait Complete {
    fn complete(&self, received: &[u8]) -> bool;
}

/// Complete when the server closes the connection (`mntr`, HTTP/1.0).
struct ToEof;

impl Complete for ToEof {
    fn complete(&self, _: &[u8]) -> bool {
        false
    }
}

/// Complete when the `INFO` bulk string (after any `+OK` of `AUTH`) has all its bytes.
struct RedisInfoEnd;

impl Complete for RedisInfoEnd {
    fn complete(&self, received: &[u8]) -> bool {
        let Some(start) = received.iter().position(|b| *b == b'$') else {
            return false;
        };
        let rest = &received[start + 1..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let Some(length) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return false;
        };
        rest.len() >= end + 2 + length + 2
    }
}

/// Sends `request` to `address`, reads the answer until `complete` or the end.
async fn exchange(address: &str, request: &[u8], complete: impl Complete) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..read]);
        if complete.complete(&received) {
            break;
        }
    }
    if received.starts_with(b"-") {
        return None;
    }
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// The number after `name` (and any `:`, tab or space) on the line that starts with it.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with([':', '\t', ' ']))
        .find_map(|rest| {
            let value = rest.trim_start_matches([':', '\t', ' ']).trim();
            value
                .parse::<u64>()
                .ok()
                .or_else(|| value.parse::<f64>().ok().map(|v| v as u64))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_each_format() {
        let redis = "# Memory\r\nused_memory:1234\r\nused_memory_human:1.2K\r\n";
        assert_eq!(field(redis, "used_memory"), Some(1234));
        let zookeeper = "zk_approximate_data_size\t5678\nzk_packets_received\t9\n";
        assert_eq!(field(zookeeper, "zk_approximate_data_size"), Some(5678));
        assert_eq!(field(zookeeper, "zk_packets_received"), Some(9));
        let etcd = "# TYPE x gauge\netcd_mvcc_db_total_size_in_use_in_bytes 1.6384e+06\n";
        assert_eq!(
            field(etcd, "etcd_mvcc_db_total_size_in_use_in_bytes"),
            Some(1_638_400)
        );
    }

    #[test]
    fn a_redis_info_answer_is_complete_once_its_bytes_are_in() {
        assert!(!RedisInfoEnd.complete(b"+OK\r\n$10\r\n0123"));
        assert!(RedisInfoEnd.complete(b"+OK\r\n$10\r\n0123456789\r\n"));
    }

    #[test]
    fn only_plain_single_servers_are_read() {
        assert!(matches!(
            ServerStats::for_url("redis://:pw@127.0.0.1:7000"),
            ServerStats::Redis { ref auth, .. } if auth == &["pw".to_string()]
        ));
        assert!(matches!(
            ServerStats::for_url("zk://127.0.0.1"),
            ServerStats::ZooKeeper { ref address } if address == "127.0.0.1:2181"
        ));
        for url in ["memory://", "rediss://h:1", "redis+redlock://a:1,b:2,c:3"] {
            assert!(
                matches!(ServerStats::for_url(url), ServerStats::Unknown),
                "{url}"
            );
        }
    }
}
