//! Where one lock lives in Redis, in each [`Layout`]: in dlock's own, its key, fence counter
//! and waiting line under one hash tag; in the standard layout of other libraries, the key as
//! they name it and a fence counter beside it. Everything that differs between the layouts'
//! names is decided here, and what differs in behaviour is the scripts' (`scripts.rs`).

use dlock_core::{LockKey, LockMode, LockOptions};

use crate::config::{Layout, RedisConfig};

/// The Redis keys of one lock. They share the hash tag `{…}`, so the layout works unchanged
/// on Redis Cluster (every script touches one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockNames {
    /// The lock itself: a string holding the owner id, acquisition time and owner
    /// description (see `scripts::HOLDER`), with the lease as its expiry.
    pub(crate) lock: String,
    /// The fence counter: bumped by every acquisition; it expires a few seconds after the
    /// lock does (tokens then restart from the server clock, see `scripts`).
    pub(crate) fence: String,
    /// The waiting line: a list of waiter ids, oldest first.
    pub(crate) queue: String,
    /// Each waiter's deadline (server milliseconds), a hash keyed by waiter id.
    pub(crate) deadlines: String,
    /// The index of held locks under the same namespace and prefix, for `list`: a sorted
    /// set of lock keys (all with score 0, so it is ordered by key bytes), living as long as
    /// its longest-held lock. Not under the lock's hash tag: one per prefix. On a Redis
    /// Cluster, where a script may touch one slot only, a set of the lock alone under its
    /// tag, which nobody lists (`list` is not offered there).
    pub(crate) index: String,
    /// The lock's key as the index names it.
    pub(crate) member: String,
    /// The shared and permit holders: a sorted set of their owner ids, scored by token (so
    /// oldest first). Each holder's own key is `holder_prefix` + its owner id.
    pub(crate) holders: String,
    /// The prefix of each shared or permit holder's own key, which holds what the lock key
    /// holds for an exclusive holder, expiring with that holder's lease.
    pub(crate) holder_prefix: String,
    /// The ids of the watchers waiting for the lock to change (`wait_for_change`).
    pub(crate) watchers: String,
    /// The keyspace channel of the lock key (`__keyspace@<db>__:<key>`), where the standard
    /// layout's waiters and watchers listen when the server publishes keyspace events;
    /// `None` in dlock's layout, whose scripts tell each waiter on a channel of its own.
    pub(crate) events: Option<String>,
    /// What each waiter's and watcher's wake channel is named with, before its id: the
    /// scripts derive a waiter's channel from its id, and count it alive while the channel
    /// has a listener. On a Redis Cluster it carries the lock's hash tag, so the channel is a
    /// sharded one in the lock's slot (see `link`).
    pub(crate) wake_prefix: String,
}

impl LockNames {
    /// The names for `key` under the lock's `prefix`, in the client's layout, namespace and
    /// database.
    pub(crate) fn new(config: &RedisConfig, prefix: &str, key: &LockKey) -> Self {
        match config.layout {
            Layout::Dlock => LockNames::dlock(&config.namespace, prefix, key, config.cluster),
            Layout::RedisStandard => LockNames::standard(config, prefix, key),
        }
    }

    /// The standard layout's names: the lock key is the key itself, after the namespace and
    /// any lock prefix but the default one, as they are; the fence counter sits beside it
    /// ([`fence_beside`]). The standard scripts touch only those two: the line's names are
    /// the fence counter's, never read or written, so that every call keeps dlock's layout's
    /// signature and its keys stay in one Cluster slot.
    fn standard(config: &RedisConfig, prefix: &str, key: &LockKey) -> Self {
        // The lock options' default prefix is dlock's own namespace: a foreign lock name gets
        // none unless one is asked for.
        let prefix = if prefix == LockOptions::default().prefix {
            ""
        } else {
            prefix
        };
        let lock = format!("{}{prefix}{}", config.namespace, key.as_str());
        let fence = fence_beside(&lock);
        LockNames {
            events: Some(format!("__keyspace@{}__:{lock}", config.db)),
            queue: fence.clone(),
            deadlines: fence.clone(),
            index: fence.clone(),
            member: key.as_str().to_owned(),
            holders: fence.clone(),
            holder_prefix: format!("{fence}:"),
            watchers: fence.clone(),
            wake_prefix: WAKE_CHANNEL_PREFIX.to_owned(),
            fence,
            lock,
        }
    }

    /// dlock's layout: the names for `key` under the client's `namespace` and the lock's
    /// `prefix`, on a Redis Cluster (`cluster`) or not.
    ///
    /// The tag is `escape(namespace) | escape(prefix) / key.path_segment()`: the escaping
    /// removes `{`, `}`, `|` and `%` from the free-form parts, and the path segment has no
    /// `/`, so different (namespace, prefix, key) triples never share a tag.
    fn dlock(namespace: &str, prefix: &str, key: &LockKey, cluster: bool) -> Self {
        let tag = format!(
            "{}|{}/{}",
            escape(namespace),
            escape(prefix),
            key.path_segment()
        );
        LockNames {
            lock: format!("dlock:{{{tag}}}:lock"),
            fence: format!("dlock:{{{tag}}}:fence"),
            queue: format!("dlock:{{{tag}}}:queue"),
            deadlines: format!("dlock:{{{tag}}}:deadlines"),
            index: if cluster {
                format!("dlock:{{{tag}}}:index")
            } else {
                index_name(namespace, prefix)
            },
            member: key.as_str().to_owned(),
            holders: format!("dlock:{{{tag}}}:holders"),
            holder_prefix: format!("dlock:{{{tag}}}:holder:"),
            watchers: format!("dlock:{{{tag}}}:watchers"),
            events: None,
            wake_prefix: if cluster {
                format!("dlock:{{{tag}{CLUSTER_WAKE_SEPARATOR}")
            } else {
                WAKE_CHANNEL_PREFIX.to_owned()
            },
        }
    }

    /// The key whose value says that `owner` (an owner id with its mode, see
    /// [`mode_suffix`]) holds the lock: the lock key for an exclusive holder, the holder's own
    /// key for a shared or permit one.
    pub(crate) fn key_of(&self, owner: &str) -> String {
        if owner.contains('@') {
            format!("{}{owner}", self.holder_prefix)
        } else {
            self.lock.clone()
        }
    }
}

/// What an owner or waiter id carries of its mode, after the client's sequence number:
/// nothing for [`LockMode::Exclusive`] (so exclusive ids are what they always were),
/// `@shared` or `@permit/<n>` otherwise. The scripts read the mode back from the id (see
/// `scripts::LINE`).
pub(crate) fn mode_suffix(mode: LockMode) -> String {
    match mode {
        LockMode::Exclusive => String::new(),
        other => format!("@{}", other.label()),
    }
}

/// The index of held locks under `namespace` and `prefix` (see [`LockNames::index`]); the
/// `:index` suffix keeps it apart from every lock's keys, even where its tag equals a lock's.
pub(crate) fn index_name(namespace: &str, prefix: &str) -> String {
    format!("dlock:{{{}|{}}}:index", escape(namespace), escape(prefix))
}

/// The prefix of the pub/sub channel a waiter is woken on (`<prefix><waiter id>`) on a
/// single instance, Redlock and Sentinel (see [`LockNames::wake_prefix`]).
const WAKE_CHANNEL_PREFIX: &str = "dlock:wake:";

/// What separates the lock's hash tag from the waiter id in a wake channel on a Redis
/// Cluster (`dlock:{<tag>}:wake:<waiter id>`): tags have no `}` (see [`escape`]).
const CLUSTER_WAKE_SEPARATOR: &str = "}:wake:";

/// The waiter (or watcher) id whose wake channel on a Redis Cluster is `channel`; `None`
/// for any other channel.
pub(crate) fn cluster_wake_waiter(channel: &str) -> Option<&str> {
    let (_, waiter) = channel
        .strip_prefix("dlock:{")?
        .split_once(CLUSTER_WAKE_SEPARATOR)?;
    Some(waiter)
}

/// The standard layout's fence counter of the lock key `lock`, a name no other library uses,
/// in the same Redis Cluster slot as `lock` where any name can be:
///
/// - `lock` has a hash tag `{t}` (the text between its first `{` and the next `}`, not
///   empty), which decides its slot: `{t}:dlock-fence:<lock>`;
/// - otherwise the whole key decides: `{<lock>}:dlock-fence`, when it has no `}` (a tag can
///   then be the whole key);
/// - a key with a `}` but no tag hashes as a whole, which no tag can repeat:
///   `dlock-fence:<lock>`, in a slot of its own (on a Redis Cluster the scripts then fail
///   with `CROSSSLOT`: such a key cannot be locked there in this layout).
///
/// Different lock keys never share a counter: the first two forms start with `{`, end
/// differently, and name the key in full or as the whole tag; the third starts otherwise.
pub(crate) fn fence_beside(lock: &str) -> String {
    if let Some(tag) = hash_tag(lock) {
        return format!("{{{tag}}}:dlock-fence:{lock}");
    }
    if lock.contains('}') {
        return format!("dlock-fence:{lock}");
    }
    format!("{{{lock}}}:dlock-fence")
}

/// The hash tag of `key` as Redis Cluster reads it: the text between the first `{` and the
/// first `}` after it, if that is not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// Whether keyspace events as `notify-keyspace-events` configures them (`flags`) tell a
/// standard-layout waiter or watcher every change of a lock key it needs: they must go to
/// the keyspace channel (`K`) and cover `del` and `expire` (`g`), `set` (`$`, an owner
/// update) and `expired` (`x`), which `A` stands for together.
pub(crate) fn keyspace_events_cover(flags: &str) -> bool {
    let all = flags.contains('A');
    flags.contains('K') && ['g', '$', 'x'].iter().all(|c| all || flags.contains(*c))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | '{' | '}' | '|' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(namespace: &str, prefix: &str, key: &str) -> String {
        LockNames::dlock(namespace, prefix, &LockKey::new(key).unwrap(), false).lock
    }

    #[test]
    fn one_hash_tag_per_lock() {
        let n = LockNames::dlock("", "p", &LockKey::new("a{b}").unwrap(), true);
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&n.lock), tag(&n.fence));
        assert_eq!(tag(&n.lock), tag(&n.queue));
        assert_eq!(tag(&n.lock), tag(&n.deadlines));
        assert_eq!(tag(&n.lock), tag(&n.holders));
        assert_eq!(tag(&n.lock), tag(&n.holder_prefix));
        assert_eq!(tag(&n.lock), tag(&n.watchers));
        // On a cluster, also everything a script touches besides: the index and the wake
        // channels it publishes on.
        assert_eq!(tag(&n.lock), tag(&n.index));
        assert_eq!(tag(&n.lock), tag(&n.wake_prefix));
        // The waiter is read back from its channel's name.
        let channel = format!("{}ab:1@shared:500", n.wake_prefix);
        assert_eq!(cluster_wake_waiter(&channel), Some("ab:1@shared:500"));
        assert_eq!(cluster_wake_waiter("dlock:wake:ab:1:500"), None);
    }

    #[test]
    fn distinct_triples_never_collide() {
        let triples = [
            ("", "a/b", "c"),
            ("", "a", "b/c"),
            ("a|", "b", "c"),
            ("a", "|b", "c"),
            ("", "p{", "k"),
            ("", "p%7B", "k"),
            ("x", "", "k"),
            ("", "x", "k"),
        ];
        let all: std::collections::HashSet<_> =
            triples.iter().map(|(n, p, k)| names(n, p, k)).collect();
        assert_eq!(all.len(), triples.len());
    }

    fn standard(url: &str, prefix: &str, key: &str) -> LockNames {
        let config = RedisConfig::from_url(url).unwrap();
        LockNames::new(&config, prefix, &LockKey::new(key).unwrap())
    }

    #[test]
    fn the_standard_layouts_key_is_the_key_itself() {
        let default_prefix = LockOptions::default().prefix;
        let n = standard(
            "redis://h/3?layout=redis-standard",
            &default_prefix,
            "jobs:7",
        );
        assert_eq!(n.lock, "jobs:7");
        assert_eq!(n.fence, "{jobs:7}:dlock-fence");
        assert_eq!(n.events.as_deref(), Some("__keyspace@3__:jobs:7"));
        // The prefixes go in front as they are.
        let n = standard("redis://h?layout=redis-standard&prefix=app:", "q/", "k");
        assert_eq!(n.lock, "app:q/k");
        let n = standard(
            "redis://h?layout=redis-standard&prefix=app:",
            &default_prefix,
            "k",
        );
        assert_eq!(n.lock, "app:k");
        // dlock's own layout is unchanged and has no keyspace channel.
        let n = standard("redis://h", &default_prefix, "k");
        assert_eq!(n.lock, "dlock:{|dlock/k}:lock");
        assert_eq!(n.events, None);
    }

    #[test]
    fn the_fence_counter_shares_the_keys_slot_and_no_other_counter() {
        assert_eq!(fence_beside("k"), "{k}:dlock-fence");
        assert_eq!(fence_beside("a{b}c"), "{b}:dlock-fence:a{b}c");
        assert_eq!(fence_beside("{b}"), "{b}:dlock-fence:{b}");
        assert_eq!(fence_beside("a{}b"), "dlock-fence:a{}b");
        assert_eq!(fence_beside("a}b"), "dlock-fence:a}b");
        assert_eq!(fence_beside("x{"), "{x{}:dlock-fence");
        for key in ["k", "a{b}c", "{b}", "x{", "a}b", "a{}b"] {
            let fence = fence_beside(key);
            // The counter hashes by what the key hashes by, where a tag can say it.
            let by = hash_tag(key).unwrap_or(key);
            if !by.contains('}') {
                assert_eq!(hash_tag(&fence), Some(by), "{key} -> {fence}");
            }
        }
        let keys = [
            "b",
            "{b}",
            "{b}:dlock-fence",
            "a}b",
            "dlock-fence:a}b",
            "x{",
            "x",
        ];
        let fences: std::collections::HashSet<String> =
            keys.iter().map(|k| fence_beside(k)).collect();
        assert_eq!(fences.len(), keys.len(), "{fences:?}");
    }

    #[test]
    fn keyspace_events_must_reach_the_keys_channel_for_every_change() {
        for on in ["KA", "AK", "KEA", "Kg$x", "K$gxe"] {
            assert!(keyspace_events_cover(on), "{on}");
        }
        for off in ["", "EA", "Kgx", "K$x", "Ex", "A", "Kg$"] {
            assert!(!keyspace_events_cover(off), "{off}");
        }
    }
}
