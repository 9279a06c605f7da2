//! Where locks live in etcd's key space.
//!
//! A lock is a *queue directory* `[namespace/]prefix/key-segment/#`, and every contender of
//! the lock puts one key in it: `…/#<lease id, hex>-<sequence, hex>`. The contender with
//! the lowest create revision holds the lock.
//!
//! The `#` ends the directory because neither an escaped prefix nor a key segment can
//! contain one: the directory of one lock is never a string prefix of another lock's keys,
//! even when one prefix extends another (`app` and `app/k`). The lease id makes a key the
//! client's own; the sequence number lets several tasks of one client contend for the same
//! lock (they share the lease) without being confused with one another.

use dlock_core::LockKey;
use etcd_client::GetOptions;

/// The queue directory of `key` under `prefix` (and the configured namespace).
pub(crate) fn queue_dir(namespace: Option<&str>, prefix: &str, key: &LockKey) -> String {
    let mut dir = String::new();
    if let Some(namespace) = namespace {
        dir.push_str(&escape_prefix(namespace));
        dir.push('/');
    }
    dir.push_str(&escape_prefix(prefix));
    dir.push('/');
    dir.push_str(&key.path_segment());
    dir.push_str("/#");
    dir
}

/// The key one contender puts in `dir`.
pub(crate) fn contender_key(dir: &str, lease_id: i64, sequence: u64) -> String {
    format!("{dir}{lease_id:016x}-{sequence:x}")
}

/// Options for reading the newest contenders of a queue directory first.
pub(crate) fn newest_first(limit: i64) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Descend,
        )
        .with_limit(limit)
}

/// A prefix as readable key path: slashes and the characters `path_segment` keeps stay,
/// every other byte (`#` included) is `%XX`-escaped, so the mapping is one-to-one.
fn escape_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for byte in prefix.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> LockKey {
        LockKey::new(k).unwrap()
    }

    #[test]
    fn one_lock_directory_never_prefixes_another_locks_keys() {
        let locks = [
            (None, "app", "other"),
            (None, "app/other", "k"),
            (None, "app/other/k/#x", "k"),
            (Some("ns"), "app", "k"),
            (None, "a#b", "k"),
            (None, "a", "b#"),
        ];
        let dirs: Vec<String> = locks
            .iter()
            .map(|(ns, prefix, k)| queue_dir(*ns, prefix, &key(k)))
            .collect();
        for (i, a) in dirs.iter().enumerate() {
            for (j, b) in dirs.iter().enumerate() {
                let contender = contender_key(b, 7, 1);
                assert_eq!(
                    i == j,
                    contender.starts_with(a.as_str()),
                    "{a} vs {contender}"
                );
            }
        }
    }
}
