//! The connection a [`Node`](crate::node::Node) sends its calls on: to one instance (a
//! self-reconnecting multiplexed connection), or to a Redis Cluster (the redis crate's cluster
//! client, which sends each call to the primary that owns its keys' slot, follows `MOVED` and
//! `ASK`, finds the new primary after a failover, and subscribes sharded channels again on
//! whichever node owns their slot now).
//!
//! A lock's keys, and in a cluster its waiters' wake channels, share one hash tag, so every
//! script runs on one slot; only the batched renewal spans locks, and [`slot`] lets it be
//! split per slot.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// One instance's connection, or a cluster's.
#[derive(Clone)]
pub(crate) enum Link {
    /// One instance (a single server, a Redlock instance, a Sentinel primary).
    Instance(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Link {
    /// Starts listening on `channel`. In a cluster the channel is a sharded one
    /// (`SSUBSCRIBE`, on the node that owns its slot, which is the lock's): the scripts
    /// publish with `SPUBLISH` and count listeners with `PUBSUB SHARDNUMSUB`, both local to
    /// that node, where plain channels would be broadcast to every node and counted on one.
    pub(crate) async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self.clone() {
            Link::Instance(mut connection) => connection.subscribe(channel).await,
            Link::Cluster(mut connection) => connection.ssubscribe(channel).await,
        }
    }

    /// Stops listening on `channel`.
    pub(crate) async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match self.clone() {
            Link::Instance(mut connection) => connection.unsubscribe(channel).await,
            Link::Cluster(mut connection) => connection.sunsubscribe(channel).await,
        }
    }

    /// Whether this is a cluster's connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Instance(connection) => connection.req_packed_command(cmd),
            Link::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Instance(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Instance(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
        }
    }
}

/// How many slots a Redis Cluster has.
const SLOTS: u16 = 16384;

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the
/// first `{` and the next `}`, if not empty), or of the whole key, modulo 16384. For
/// operators and tests that look for the node holding a lock's keys
/// ([`RedisBackend::lock_key_name`](crate::RedisBackend::lock_key_name)).
///
/// ```
/// assert_eq!(dlock_redis::cluster_slot("foo"), 12182);
/// assert_eq!(
///     dlock_redis::cluster_slot("dlock:{|dlock/k}:lock"),
///     dlock_redis::cluster_slot("dlock:{|dlock/k}:fence"),
/// );
/// ```
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let after = &bytes[open + 1..];
            let close = after.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &after[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_rules() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("user1000")
        );
        assert_eq!(
            cluster_slot("{user1000}.followers"),
            cluster_slot("user1000")
        );
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(cluster_slot("foo{}{bar}"), slot_of_whole("foo{}{bar}"));
        assert_eq!(cluster_slot("foo{{bar}}zap"), cluster_slot("{bar"));
        assert_eq!(cluster_slot("foo{bar}{zap}"), cluster_slot("bar"));
        assert_eq!(
            cluster_slot("dlock:{a|b/c}:lock"),
            cluster_slot("dlock:{a|b/c}:fence")
        );
    }

    fn slot_of_whole(key: &str) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(key.as_bytes()) % SLOTS
    }
}
