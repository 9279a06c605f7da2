//! Where one lock lives in Redis: its key, fence counter and waiting line, under one hash tag.

use dlock_core::{LockKey, LockMode};

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
    /// its longest-held lock. Not under the lock's hash tag: one per prefix.
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
}

impl LockNames {
    /// The names for `key` under the client's `namespace` and the lock's `prefix`.
    ///
    /// The tag is `escape(namespace) | escape(prefix) / key.path_segment()`: the escaping
    /// removes `{`, `}`, `|` and `%` from the free-form parts, and the path segment has no
    /// `/`, so different (namespace, prefix, key) triples never share a tag.
    pub(crate) fn new(namespace: &str, prefix: &str, key: &LockKey) -> Self {
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
            index: index_name(namespace, prefix),
            member: key.as_str().to_owned(),
            holders: format!("dlock:{{{tag}}}:holders"),
            holder_prefix: format!("dlock:{{{tag}}}:holder:"),
            watchers: format!("dlock:{{{tag}}}:watchers"),
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

/// The prefix of the pub/sub channel a waiter is woken on (`<prefix><waiter id>`); scripts
/// derive the channel from a waiter id, so this prefix is passed to them. Whether the channel
/// has a listener is how scripts tell a live waiter from one that is gone.
pub(crate) const WAKE_CHANNEL_PREFIX: &str = "dlock:wake:";

/// The wake channel of the waiter `waiter` (its id).
pub(crate) fn wake_channel(waiter: &str) -> String {
    format!("{WAKE_CHANNEL_PREFIX}{waiter}")
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
        LockNames::new(namespace, prefix, &LockKey::new(key).unwrap()).lock
    }

    #[test]
    fn one_hash_tag_per_lock() {
        let n = LockNames::new("", "p", &LockKey::new("a{b}").unwrap());
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&n.lock), tag(&n.fence));
        assert_eq!(tag(&n.lock), tag(&n.queue));
        assert_eq!(tag(&n.lock), tag(&n.deadlines));
        assert_eq!(tag(&n.lock), tag(&n.holders));
        assert_eq!(tag(&n.lock), tag(&n.holder_prefix));
        assert_eq!(tag(&n.lock), tag(&n.watchers));
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
}
