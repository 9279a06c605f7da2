//! Where a lock lives in the ZooKeeper tree, and how its line of contenders is read.
//!
//! Layout: `/{namespace segments}/{prefix segments}/lock={key}/_c_{attempt id}-lock-{sequence}`
//! (an empty prefix segment is written `%`).
//!
//! - Every prefix segment and the key are escaped with [`LockKey::path_segment`], which only
//!   ever emits `A-Za-z0-9-_.~%`: any key is one legal path segment and two keys never meet.
//! - The key's node gets the `lock=` mark, which no escaped prefix segment can carry, so a
//!   key node never looks like a prefix node (prefix `a/b` key `k` and prefix `a` key `b` are
//!   apart) and the only children a key node ever has are lock nodes.
//! - Lock nodes are named the way Curator's "protected" mode names them: a random id per
//!   attempt finds a node again whose create reply a connection drop swallowed.

use dlock_core::{LockError, LockKey, Result};

/// What marks a key's node among prefix nodes.
const KEY_MARK: &str = "lock=";
/// What separates the attempt id from the server's sequence number in a lock node's name.
const SEQUENCE_MARK: &str = "-lock-";

/// The node under which the contenders for `key` line up, below the client's `namespace`
/// (the URL's `prefix`) and the lock options' `prefix`.
pub(crate) fn lock_dir(namespace: &str, prefix: &str, key: &LockKey) -> Result<String> {
    let mut path = prefix_path(namespace, prefix)?;
    path.push('/');
    path.push_str(&key_node_name(key));
    Ok(path)
}

/// The node whose children are the key nodes of every lock under `namespace` and `prefix`
/// (`/` when both are empty): what [`list`](crate::ZooKeeperBackend) reads.
pub(crate) fn prefix_dir(namespace: &str, prefix: &str) -> Result<String> {
    let path = prefix_path(namespace, prefix)?;
    Ok(if path.is_empty() {
        "/".to_owned()
    } else {
        path
    })
}

/// The path of `key`'s node below a [`prefix_dir`].
pub(crate) fn key_node(prefix_dir: &str, key: &LockKey) -> String {
    let parent = prefix_dir.trim_end_matches('/');
    format!("{parent}/{}", key_node_name(key))
}

/// `lock={escaped key}`.
fn key_node_name(key: &LockKey) -> String {
    format!("{KEY_MARK}{}", key.path_segment())
}

/// The key a child of a [`prefix_dir`] is the node of; `None` for prefix nodes and anything
/// this crate did not write (the escaping must come out the same way again, so two names
/// never stand for one key).
pub(crate) fn key_of(child: &str) -> Option<LockKey> {
    let escaped = child.strip_prefix(KEY_MARK)?;
    let bytes = escaped.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let key = LockKey::new(String::from_utf8(decoded).ok()?).ok()?;
    (key.path_segment() == escaped).then_some(key)
}

/// `/{namespace segments}/{prefix segments}`, escaped; empty for neither.
fn prefix_path(namespace: &str, prefix: &str) -> Result<String> {
    let mut path = String::with_capacity(namespace.len() + prefix.len() + 16);
    for segment in segments(namespace).chain(segments(prefix)) {
        let segment = match segment {
            // Escaping never writes a lone `%`, so an empty segment (`a//b`, `a/`, `/a`) stays
            // apart from every other prefix: two different prefixes never meet.
            "" => EMPTY_SEGMENT.to_owned(),
            segment => LockKey::new(segment)
                .map_err(|error| LockError::invalid_options(format!("key prefix: {error}")))?
                .path_segment(),
        };
        path.push('/');
        if path.len() == 1 && segment == "zookeeper" {
            // `/zookeeper` is the server's own tree; `z` is never escaped otherwise, so
            // `%7A` cannot collide with another segment.
            path.push_str("%7Aookeeper");
        } else {
            path.push_str(&segment);
        }
    }
    Ok(path)
}

/// What stands for an empty prefix segment.
const EMPTY_SEGMENT: &str = "%";

/// The `/`-separated segments of a namespace or prefix; none for an empty one.
fn segments(text: &str) -> impl Iterator<Item = &str> {
    (!text.is_empty())
        .then(|| text.split('/'))
        .into_iter()
        .flatten()
}

/// The name, before the server appends its sequence, of a new attempt's lock node:
/// `_c_{random uuid}-lock-`.
pub(crate) fn attempt_name() -> String {
    let id: u128 = rand::random();
    let hex = format!("{id:032x}");
    format!(
        "_c_{}-{}-4{}-a{}-{}{SEQUENCE_MARK}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The contenders among a key node's children, first in line first.
pub(crate) fn line(children: &[String]) -> Vec<(i64, &str)> {
    let mut line: Vec<(i64, &str)> = children
        .iter()
        .filter_map(|name| sequence(name).map(|sequence| (sequence, name.as_str())))
        .collect();
    line.sort_unstable();
    line
}

/// The sequence number of a lock node's name; `None` for anything else.
fn sequence(name: &str) -> Option<i64> {
    if !name.starts_with("_c_") {
        return None;
    }
    let (_, digits) = name.rsplit_once(SEQUENCE_MARK)?;
    if digits.len() < 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str) -> LockKey {
        LockKey::new(key).unwrap()
    }

    #[test]
    fn prefixes_and_keys_map_to_distinct_nodes() {
        assert_eq!(
            lock_dir("", "dlock", &key("a/b")).unwrap(),
            "/dlock/lock=a%2Fb"
        );
        assert_eq!(lock_dir("", "", &key("k")).unwrap(), "/lock=k");
        assert_eq!(lock_dir("", "a//b/", &key("k")).unwrap(), "/a/%/b/%/lock=k");
        for (one, other) in [("P//x", "P/x"), ("P/", "P"), ("/P", "P")] {
            assert_ne!(
                lock_dir("", one, &key("k")).unwrap(),
                lock_dir("", other, &key("k")).unwrap(),
                "{one} and {other} are different prefixes"
            );
        }
        assert_eq!(
            lock_dir("", "zookeeper", &key("k")).unwrap(),
            "/%7Aookeeper/lock=k"
        );
        assert_eq!(
            lock_dir("", "..", &key("..")).unwrap(),
            "/%2E%2E/lock=%2E%2E"
        );
        assert_ne!(
            lock_dir("", "a/b", &key("k")).unwrap(),
            lock_dir("", "a", &key("b/k")).unwrap()
        );
    }

    #[test]
    fn key_nodes_name_their_key_and_nothing_else() {
        for text in ["k", "a/b", "..", "50%", "ü x", "lock=k"] {
            let key = key(text);
            let dir = prefix_dir("ns", "p").unwrap();
            let node = key_node(&dir, &key);
            assert_eq!(node, lock_dir("ns", "p", &key).unwrap());
            let name = node.rsplit('/').next().unwrap();
            assert_eq!(key_of(name), Some(key));
        }
        assert_eq!(prefix_dir("", "").unwrap(), "/");
        assert_eq!(key_node("/", &key("k")), "/lock=k");
        for stranger in [
            "k",
            "lock=",
            "lock=a%2fb",
            "lock=a%2",
            "lock=a b",
            "lock=a%2E",
        ] {
            assert_eq!(key_of(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn the_line_is_ordered_by_sequence_and_ignores_strangers() {
        let first = format!("{}0000000007", attempt_name());
        let second = format!("{}0000000012", attempt_name());
        let children = vec![
            second.clone(),
            "lock=nested".to_owned(),
            "_c_x-lock-12".to_owned(),
            first.clone(),
        ];
        let line = line(&children);
        assert_eq!(line, vec![(7, first.as_str()), (12, second.as_str())]);
    }

    #[test]
    fn attempt_names_are_unique_and_curator_shaped() {
        let (a, b) = (attempt_name(), attempt_name());
        assert_ne!(a, b);
        assert_eq!(a.len(), "_c_".len() + 36 + SEQUENCE_MARK.len());
        assert!(a.ends_with("-lock-"));
    }
}
