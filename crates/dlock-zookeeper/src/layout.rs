//! Where a lock lives in the ZooKeeper tree, and how its line of contenders is read, in
//! dlock's own layout and in kazoo's and Curator's ([`Layout`]).
//!
//! dlock's layout: `/{namespace segments}/{prefix segments}/lock={key}/_c_{attempt id}-lock-{sequence}`
//! (an empty prefix segment is written `%`).
//!
//! - Every prefix segment and the key are escaped with [`LockKey::path_segment`], which only
//!   ever emits `A-Za-z0-9-_.~%`: any key is one legal path segment and two keys never meet.
//! - The key's node gets the `lock=` mark, which no escaped prefix segment can carry, so a
//!   key node never looks like a prefix node (prefix `a/b` key `k` and prefix `a` key `b` are
//!   apart) and the only children a key node ever has are lock nodes.
//! - Lock nodes are named the way Curator's "protected" mode names them: a random id per
//!   attempt finds a node again whose create reply a connection drop swallowed.
//! - A contender's [`LockMode`] is in its node's name, so one `getChildren` tells every
//!   contender's mode (as Curator's read-write lock marks `__READ__` and `__WRIT__`): an
//!   exclusive contender's name is unchanged (`_c_{id}-lock-{sequence}`), a reader's is
//!   `_c_{id}-shared-lock-{sequence}`, a semaphore's `_c_{id}-permit.{n}-lock-{sequence}`.
//!   The `-lock-` mark stays last, so a dlock from before modes sees readers and permit
//!   holders as exclusive contenders: it waits for them, and never takes a key they hold.

use dlock_core::{turn, LockError, LockKey, LockMode, LockOptions, Result, Turn, MAX_PERMITS};

use crate::config::Layout;

/// What marks a key's node among prefix nodes.
const KEY_MARK: &str = "lock=";
/// What separates the attempt id from the server's sequence number in a lock node's name.
const SEQUENCE_MARK: &str = "-lock-";

/// The node under which the contenders for `key` line up in `layout`, below the client's
/// `namespace` (the URL's `prefix`) and the lock options' `prefix`.
pub(crate) fn lock_dir(
    layout: Layout,
    namespace: &str,
    prefix: &str,
    key: &LockKey,
) -> Result<String> {
    if layout.is_foreign() {
        return foreign_dir(namespace, prefix, key);
    }
    let mut path = prefix_path(namespace, prefix)?;
    path.push('/');
    path.push_str(&key_node_name(key));
    Ok(path)
}

/// A foreign library's lock path: the key is the path as that library is given it (`k` and
/// `/k` alike, empty segments dropped as kazoo's `normpath` and Curator's `ZKPaths` do),
/// after the namespace and any prefix but the default one, unescaped.
fn foreign_dir(namespace: &str, prefix: &str, key: &LockKey) -> Result<String> {
    // The lock options' default prefix is dlock's own namespace; a foreign lock path gets
    // none unless one is asked for.
    let prefix = if prefix == LockOptions::default().prefix {
        ""
    } else {
        prefix
    };
    let mut path = String::with_capacity(namespace.len() + prefix.len() + key.as_str().len() + 3);
    for segment in [namespace, prefix, key.as_str()]
        .into_iter()
        .flat_map(|part| part.split('/'))
    {
        match segment {
            "" => continue,
            "." | ".." => {
                return Err(LockError::invalid_options(format!(
                    "the lock path `{}` has a `.` or `..` segment",
                    key.as_str()
                )))
            }
            segment => {
                path.push('/');
                path.push_str(segment);
            }
        }
    }
    if path.is_empty() {
        return Err(LockError::invalid_options(format!(
            "the lock path `{}` names no node",
            key.as_str()
        )));
    }
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

/// kazoo's mark between the attempt id and the sequence.
const KAZOO_MARK: &str = "__lock__";
/// What Curator's `StandardLockInternalsDriver` sorts by: the text after the last `lock-`.
const CURATOR_LOCK_NAME: &str = "lock-";

/// What a reader's node name carries before the `-lock-` mark.
const SHARED_TAG: &str = "shared";
/// What a semaphore contender's node name carries before its permit count.
const PERMIT_TAG: &str = "permit.";

/// One contender in a key's line: its node's name, and the mode that name carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Contender<'a> {
    /// The node's name within the key node.
    pub(crate) name: &'a str,
    /// How it holds or waits for the key.
    pub(crate) mode: LockMode,
}

/// The name, before the server appends its sequence, of a new attempt's lock node:
/// `_c_{random uuid}-lock-` (dlock and Curator), `{uuid hex}__lock__` (kazoo); in dlock's
/// layout a shared or permit contender's mode goes before the `-lock-` mark. Foreign layouts
/// take only [`LockMode::Exclusive`] (the backend refuses the others before this).
pub(crate) fn attempt_name(layout: Layout, mode: LockMode) -> String {
    let id: u128 = rand::random();
    let hex = format!("{id:032x}");
    if layout == Layout::Kazoo {
        // kazoo's `uuid.uuid4().hex`: 32 lower-case hex digits.
        return format!("{hex}{KAZOO_MARK}");
    }
    let tag = match (layout, mode) {
        (Layout::Dlock, LockMode::Shared) => format!("-{SHARED_TAG}"),
        (Layout::Dlock, LockMode::Permit(permits)) => format!("-{PERMIT_TAG}{permits}"),
        _ => String::new(),
    };
    format!(
        "_c_{}-{}-4{}-a{}-{}{tag}{SEQUENCE_MARK}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The mode a dlock lock node's name carries (see the module documentation). A name with no
/// mode, or one this version does not know, is an exclusive contender: what every dlock
/// before modes wrote, and the one assumption that never lets two holders in together.
fn mode_of(name: &str) -> LockMode {
    let Some((head, _)) = name.rsplit_once(SEQUENCE_MARK) else {
        return LockMode::Exclusive;
    };
    // The attempt id's last group is 12 hex digits, so it never reads as a tag.
    let tag = head.rsplit_once('-').map_or("", |(_, tag)| tag);
    if tag == SHARED_TAG {
        return LockMode::Shared;
    }
    tag.strip_prefix(PERMIT_TAG)
        .filter(|count| !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|count| count.parse().ok())
        .filter(|permits| (1..=MAX_PERMITS).contains(permits))
        .map_or(LockMode::Exclusive, LockMode::Permit)
}

/// How many contenders at the head of `line` hold the key, by [`turn`]: holders always
/// stand first (whoever waits makes everyone behind it wait too), so this is where the
/// waiters begin. A contender whose mode cannot share the line counts as waiting: it is
/// about to leave it.
pub(crate) fn holders(line: &[Contender<'_>]) -> usize {
    let modes: Vec<LockMode> = line.iter().map(|contender| contender.mode).collect();
    (0..modes.len())
        .take_while(|&i| matches!(turn("", modes[i], &modes[..i]), Ok(Turn::Granted)))
        .count()
}

/// The contenders among a key node's children in `layout`, first in line first, ordered
/// exactly as that layout's own library orders them (so that both agree who holds the lock
/// and whom each waiter watches), each with its mode (always exclusive in a foreign layout).
pub(crate) fn line(layout: Layout, children: &[String]) -> Vec<Contender<'_>> {
    let names = names_in_line(layout, children);
    names
        .into_iter()
        .map(|name| Contender {
            name,
            mode: match layout {
                Layout::Dlock => mode_of(name),
                Layout::Kazoo | Layout::Curator => LockMode::Exclusive,
            },
        })
        .collect()
}

/// The names of [`line`], in order.
fn names_in_line(layout: Layout, children: &[String]) -> Vec<&str> {
    match layout {
        Layout::Dlock => {
            let mut line: Vec<(i64, &str)> = children
                .iter()
                .filter_map(|name| sequence(name).map(|sequence| (sequence, name.as_str())))
                .collect();
            line.sort_unstable();
            line.into_iter().map(|(_, name)| name).collect()
        }
        // kazoo's `_get_predecessor`: only children matching `__lock__(-?\d{10})$` count, and
        // they are compared by that matched text (a string: a wrapped-around negative
        // sequence sorts first, as in kazoo).
        Layout::Kazoo => {
            let mut line: Vec<(&str, &str)> = children
                .iter()
                .filter_map(|name| kazoo_sequence(name).map(|sequence| (sequence, name.as_str())))
                .collect();
            line.sort_unstable();
            line.into_iter().map(|(_, name)| name).collect()
        }
        // Curator's `LockInternals.getSortedChildren`: every child, sorted (stably) by
        // `fixForSorting`, the text after the last `lock-`, or the whole name without one.
        Layout::Curator => {
            let mut line: Vec<&str> = children.iter().map(String::as_str).collect();
            line.sort_by_key(|name| match name.rfind(CURATOR_LOCK_NAME) {
                Some(at) => &name[at + CURATOR_LOCK_NAME.len()..],
                None => name,
            });
            line
        }
    }
}

/// The text kazoo's contender pattern `__lock__(-?\d{10})$` captures in `name`.
fn kazoo_sequence(name: &str) -> Option<&str> {
    let digits_at = name.len().checked_sub(10)?;
    if !name.is_char_boundary(digits_at) || !name[digits_at..].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let before = &name[..digits_at];
    if before.ends_with(KAZOO_MARK) {
        Some(&name[digits_at..])
    } else if before.strip_suffix('-')?.ends_with(KAZOO_MARK) {
        Some(&name[digits_at - 1..])
    } else {
        None
    }
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
            lock_dir(Layout::Dlock, "", "dlock", &key("a/b")).unwrap(),
            "/dlock/lock=a%2Fb"
        );
        assert_eq!(
            lock_dir(Layout::Dlock, "", "", &key("k")).unwrap(),
            "/lock=k"
        );
        assert_eq!(
            lock_dir(Layout::Dlock, "", "a//b/", &key("k")).unwrap(),
            "/a/%/b/%/lock=k"
        );
        for (one, other) in [("P//x", "P/x"), ("P/", "P"), ("/P", "P")] {
            assert_ne!(
                lock_dir(Layout::Dlock, "", one, &key("k")).unwrap(),
                lock_dir(Layout::Dlock, "", other, &key("k")).unwrap(),
                "{one} and {other} are different prefixes"
            );
        }
        assert_eq!(
            lock_dir(Layout::Dlock, "", "zookeeper", &key("k")).unwrap(),
            "/%7Aookeeper/lock=k"
        );
        assert_eq!(
            lock_dir(Layout::Dlock, "", "..", &key("..")).unwrap(),
            "/%2E%2E/lock=%2E%2E"
        );
        assert_ne!(
            lock_dir(Layout::Dlock, "", "a/b", &key("k")).unwrap(),
            lock_dir(Layout::Dlock, "", "a", &key("b/k")).unwrap()
        );
    }

    #[test]
    fn key_nodes_name_their_key_and_nothing_else() {
        for text in ["k", "a/b", "..", "50%", "ü x", "lock=k"] {
            let key = key(text);
            let dir = prefix_dir("ns", "p").unwrap();
            let node = key_node(&dir, &key);
            assert_eq!(node, lock_dir(Layout::Dlock, "ns", "p", &key).unwrap());
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
        let first = format!(
            "{}0000000007",
            attempt_name(Layout::Dlock, LockMode::Exclusive)
        );
        let second = format!(
            "{}0000000012",
            attempt_name(Layout::Dlock, LockMode::Exclusive)
        );
        let children = vec![
            second.clone(),
            "lock=nested".to_owned(),
            "_c_x-lock-12".to_owned(),
            first.clone(),
        ];
        let line = names_in_line(Layout::Dlock, &children);
        assert_eq!(line, vec![first.as_str(), second.as_str()]);
    }

    #[test]
    fn foreign_lock_paths_are_the_key_itself() {
        for layout in [Layout::Kazoo, Layout::Curator] {
            let dir = |ns: &str, prefix: &str, k: &str| lock_dir(layout, ns, prefix, &key(k));
            assert_eq!(dir("", "dlock", "k").unwrap(), "/k");
            assert_eq!(dir("", "dlock", "/k").unwrap(), "/k");
            assert_eq!(dir("", "dlock", "/a//b/").unwrap(), "/a/b");
            assert_eq!(dir("app", "", "/a/b").unwrap(), "/app/a/b");
            assert_eq!(dir("app", "jobs", "x").unwrap(), "/app/jobs/x");
            assert!(dir("", "dlock", "/").is_err());
            assert!(dir("", "dlock", "a/../b").is_err());
        }
    }

    #[test]
    fn kazoo_orders_by_the_sequence_text_after_its_mark() {
        let children: Vec<String> = [
            "bbb__lock__0000000003",
            "aaa__lock__0000000001",
            "ccc__rlock__0000000000",
            "ddd__lock__-2147483648",
            "eee__lock__00000000012",
            "_c_x-lock-0000000000",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            names_in_line(Layout::Kazoo, &children),
            [
                "ddd__lock__-2147483648",
                "aaa__lock__0000000001",
                "bbb__lock__0000000003"
            ]
        );
        let name = attempt_name(Layout::Kazoo, LockMode::Exclusive);
        assert!(name.ends_with("__lock__") && name.len() == 32 + 8, "{name}");
    }

    #[test]
    fn curator_orders_every_child_by_the_text_after_lock() {
        let children: Vec<String> = [
            "_c_b-lock-0000000002",
            "nested",
            "lock-0000000001",
            "_c_a-lock-0000000003",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            names_in_line(Layout::Curator, &children),
            [
                "lock-0000000001",
                "_c_b-lock-0000000002",
                "_c_a-lock-0000000003",
                "nested"
            ]
        );
    }

    #[test]
    fn attempt_names_are_unique_and_curator_shaped() {
        let (a, b) = (
            attempt_name(Layout::Dlock, LockMode::Exclusive),
            attempt_name(Layout::Dlock, LockMode::Exclusive),
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), "_c_".len() + 36 + SEQUENCE_MARK.len());
        assert!(a.ends_with("-lock-"));
    }

    #[test]
    fn modes_are_read_back_from_names() {
        let exclusive = attempt_name(Layout::Dlock, LockMode::Exclusive);
        // Exclusive names are what every dlock wrote before modes.
        assert_eq!(exclusive.len(), "_c_".len() + 36 + SEQUENCE_MARK.len());
        for mode in [
            LockMode::Exclusive,
            LockMode::Shared,
            LockMode::Permit(1),
            LockMode::Permit(MAX_PERMITS),
        ] {
            let name = format!("{}0000000042", attempt_name(Layout::Dlock, mode));
            assert_eq!(mode_of(&name), mode, "{name}");
            // A dlock from before modes still reads it as a contender.
            assert_eq!(sequence(&name), Some(42), "{name}");
            let children = vec![name.clone()];
            assert_eq!(line(Layout::Dlock, &children)[0].mode, mode);
        }
        for stranger in [
            "_c_x-permit.0-lock-0000000001",
            "_c_x-permit.+3-lock-0000000001",
            "_c_x-permit.99999-lock-0000000001",
            "_c_x-reader-lock-0000000001",
        ] {
            assert_eq!(mode_of(stranger), LockMode::Exclusive, "{stranger}");
        }
        // Foreign layouts write and read exclusive contenders only.
        let curator = format!(
            "{}0000000001",
            attempt_name(Layout::Curator, LockMode::Exclusive)
        );
        assert_eq!(
            line(Layout::Curator, &[curator])[0].mode,
            LockMode::Exclusive
        );
    }

    #[test]
    fn holders_are_the_granted_head_of_the_line() {
        let of = |modes: &[LockMode]| {
            let line: Vec<Contender<'_>> = modes
                .iter()
                .map(|&mode| Contender { name: "", mode })
                .collect();
            holders(&line)
        };
        let (w, r, p) = (LockMode::Exclusive, LockMode::Shared, LockMode::Permit(2));
        assert_eq!(of(&[]), 0);
        assert_eq!(of(&[w, w]), 1);
        assert_eq!(of(&[r, r, w, r]), 2);
        assert_eq!(of(&[w, r, r]), 1);
        assert_eq!(of(&[p, p, p]), 2);
        assert_eq!(of(&[p, LockMode::Permit(3), p]), 1);
    }
}
