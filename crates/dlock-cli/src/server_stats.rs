//! Which server statistics `dlock bench --hold` can read for a URL (see
//! [`dlock_conformance::server_stats`]). Only plain-text URLs with one reachable server are
//! read; anything else (TLS, Redlock, clusters, `memory://`) reads as unknown.

use dlock::BackendUrl;
use dlock_conformance::server_stats::ServerStats;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_single_servers_are_read() {
        assert!(matches!(
            for_url("redis://:pw@127.0.0.1:7000"),
            ServerStats::Redis { ref auth, .. } if auth == &["pw".to_string()]
        ));
        assert!(matches!(
            for_url("zk://127.0.0.1"),
            ServerStats::ZooKeeper { ref address } if address == "127.0.0.1:2181"
        ));
        for url in ["memory://", "rediss://h:1", "redis+redlock://a:1,b:2,c:3"] {
            assert!(matches!(for_url(url), ServerStats::Unknown), "{url}");
        }
    }
}
