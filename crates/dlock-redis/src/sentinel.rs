//! Redis Sentinel: which instance is the primary now. The sentinels are asked in turn with
//! `SENTINEL get-master-addr-by-name`; the first that answers names the primary. The client
//! asks again when its primary fails it (connection errors, `READONLY` from a demoted
//! primary), see `Shared::suspect_primary`.
//!
//! Plain commands on a short-lived connection per question, not the `redis` crate's
//! `sentinel` feature: the client keeps its own connection manager per instance (wake-up
//! routing, resubscription) and only needs the address.

use dlock_core::{LockError, Result};

use crate::config::{Endpoint, RedisConfig};
use crate::node::client_for;

/// The primary the sentinels of `config` name for `master`.
pub(crate) async fn primary(config: &RedisConfig, master: &str) -> Result<Endpoint> {
    let mut last_error = None;
    for sentinel in &config.endpoints {
        match tokio::time::timeout(config.connect_timeout, ask(config, sentinel, master)).await {
            Ok(Ok(Some(primary))) => return Ok(primary),
            Ok(Ok(None)) => {
                last_error = Some(LockError::connection(
                    sentinel.to_string(),
                    format!("the sentinel knows no primary named `{master}`"),
                ))
            }
            Ok(Err(error)) => last_error = Some(LockError::connection(sentinel.to_string(), error)),
            Err(_) => {
                last_error = Some(LockError::connection(
                    sentinel.to_string(),
                    "the sentinel did not answer in time",
                ))
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| LockError::invalid_options("a Sentinel URL names no sentinel")))
}

async fn ask(
    config: &RedisConfig,
    sentinel: &Endpoint,
    master: &str,
) -> redis::RedisResult<Option<Endpoint>> {
    let client = client_for(config, sentinel, true)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let reply: Option<Vec<String>> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut connection)
        .await?;
    Ok(reply.and_then(|address| match address.as_slice() {
        [host, port] => Some(Endpoint {
            host: host.clone(),
            port: port.parse().ok()?,
        }),
        _ => None,
    }))
}
