//! What a lock server still holds under a prefix, read from the server directly (not through
//! dlock): after every client went idle, a correct backend leaves no lock, queue entry or
//! lock node behind.
//!
//! The prefix must be plain (`A-Za-z0-9`, `-`, `_`) so that no backend escapes it, and
//! unique to the run: whatever sits around it in a backend's layout (a namespace, the lock
//! options' prefix), every name containing it is the run's.

use std::time::Duration;

/// The lock keys, waiting lines and waiter deadlines Redis holds under `prefix` (fence
/// counters, which outlive a lock by design, are not listed).
pub async fn redis_leftovers(address: &str, prefix: &str) -> Result<Vec<String>, String> {
    check_prefix(prefix);
    let address = address.to_owned();
    let pattern = format!("dlock:*{prefix}*");
    tokio::task::spawn_blocking(move || {
        use redis::Commands;
        let client = redis::Client::open(format!("redis://{address}")).map_err(text)?;
        let mut connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(text)?;
        let keys: Vec<String> = connection
            .scan_match::<_, String>(pattern)
            .map_err(text)?
            .filter_map(Result::ok)
            .filter(|key| !key.ends_with(":fence"))
            .collect();
        // A waiting line is listed with its entries, their deadlines and whether anybody
        // still listens for them: what tells a dead entry from one a client keeps alive.
        let described = keys
            .into_iter()
            .map(|key| match key.strip_suffix(":queue") {
                Some(base) => describe_line(&mut connection, &key, &format!("{base}:deadlines")),
                None => key,
            })
            .collect();
        Ok(described)
    })
    .await
    .map_err(text)?
}

/// `queue [entry (deadline, listeners) …]`, as far as the server answers.
fn describe_line(connection: &mut redis::Connection, queue: &str, deadlines: &str) -> String {
    use redis::Commands;
    let entries: Vec<String> = connection.lrange(queue, 0, -1).unwrap_or_default();
    let described: Vec<String> = entries
        .iter()
        .map(|entry| {
            let deadline: Option<String> = connection.hget(deadlines, entry).unwrap_or(None);
            let listeners: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("dlock:wake:{entry}"))
                .query(connection)
                .unwrap_or_default();
            let listeners = listeners.first().map_or(0, |(_, n)| *n);
            format!("{entry} (deadline {deadline:?}, {listeners} listening)")
        })
        .collect();
    format!("{queue} [{}]", described.join(", "))
}

/// The lock nodes (`_c_…`) ZooKeeper holds anywhere on a path through a `prefix` node.
pub async fn zookeeper_leftovers(address: &str, prefix: &str) -> Result<Vec<String>, String> {
    check_prefix(prefix);
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        zookeeper_client::Client::connect(address),
    )
    .await
    .map_err(text)?
    .map_err(text)?;
    let mut leftovers = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(path) = pending.pop() {
        let listed = if path.is_empty() { "/" } else { path.as_str() };
        let children = match client.list_children(listed).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(error) => return Err(format!("listing {path}: {error}")),
        };
        for child in children {
            let child_path = format!("{path}/{child}");
            if child_path == "/zookeeper" {
                continue;
            }
            if child.starts_with("_c_") {
                if child_path.contains(prefix) {
                    leftovers.push(child_path);
                }
            } else {
                pending.push(child_path);
            }
        }
    }
    Ok(leftovers)
}

/// Every key etcd holds whose name contains `prefix` (each is a contender's entry in a
/// lock's line).
pub async fn etcd_leftovers(address: &str, prefix: &str) -> Result<Vec<String>, String> {
    check_prefix(prefix);
    let mut client = tokio::time::timeout(
        Duration::from_secs(10),
        etcd_client::Client::connect([address], None),
    )
    .await
    .map_err(text)?
    .map_err(text)?;
    let reply = client
        .get(
            format!("{prefix}/"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .map_err(text)?;
    Ok(reply
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}

fn check_prefix(prefix: &str) {
    assert!(
        !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "leftover checks need a plain prefix, not {prefix:?}"
    );
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}
