//! What a benchmark reads from a server about itself: its memory (or data size) and the
//! requests it has handled, each by the server's own cheap statistics command over a
//! connection of its own (Redis `INFO`, ZooKeeper `mntr`, etcd's `/metrics`), in plain text.
//! `dlock bench --hold` reads them between its phases, the peers benchmark around each
//! workload.

use std::time::Duration;

use crate::bench::ServerSample;
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
        match self.text().await {
            Some(text) => self.sample_of(&text),
            None => ServerSample::default(),
        }
    }

    /// The server's whole statistics answer now (`INFO`, `mntr`, `/metrics`), for figures
    /// beyond [`ServerSample`]'s; `None` where it cannot be read.
    pub async fn text(&self) -> Option<String> {
        tokio::time::timeout(TIMEOUT, self.answer())
            .await
            .ok()
            .flatten()
    }

    async fn answer(&self) -> Option<String> {
        match self {
            ServerStats::Redis { address, auth } => {
                let mut request = Vec::new();
                if !auth.is_empty() {
                    let mut words = vec!["AUTH"];
                    words.extend(auth.iter().map(String::as_str));
                    request.extend(resp(&words));
                }
                request.extend(resp(&["INFO"]));
                exchange(address, &request, RedisInfoEnd).await
            }
            ServerStats::ZooKeeper { address } => exchange(address, b"mntr", ToEof).await,
            ServerStats::Etcd { address } => {
                let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
                exchange(address, request.as_bytes(), ToEof).await
            }
            ServerStats::Unknown => None,
        }
    }

    /// The figures of [`ServerSample`] in the statistics answer `text`.
    fn sample_of(&self, text: &str) -> ServerSample {
        match self {
            ServerStats::Redis { .. } => ServerSample {
                memory_bytes: field(text, "used_memory"),
                requests: field(text, "total_commands_processed"),
            },
            ServerStats::ZooKeeper { .. } => ServerSample {
                memory_bytes: field(text, "zk_approximate_data_size"),
                requests: field(text, "zk_packets_received"),
            },
            ServerStats::Etcd { .. } => ServerSample {
                memory_bytes: field(text, "etcd_mvcc_db_total_size_in_use_in_bytes"),
                requests: sum_of(text, "grpc_server_msg_received_total{"),
            },
            ServerStats::Unknown => ServerSample::default(),
        }
    }
}

/// The sum of the values of every metric line of `text` that starts with `prefix` (one metric
/// over all its labels, in Prometheus text); `None` if there is no such line.
pub fn sum_of(text: &str, prefix: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
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
pub fn field(text: &str, name: &str) -> Option<u64> {
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
    fn a_metric_is_summed_over_its_labels() {
        let etcd = "grpc_server_msg_received_total{grpc_method=\"Range\"} 2\ngrpc_server_msg_received_total{grpc_method=\"Txn\"} 3\n";
        assert_eq!(sum_of(etcd, "grpc_server_msg_received_total{"), Some(5));
        assert_eq!(sum_of(etcd, "etcd_server_proposals_committed_total"), None);
    }
}
