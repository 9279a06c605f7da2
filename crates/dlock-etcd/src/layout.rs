//! Where locks live in etcd's key space, in dlock's own layout and in etcd's
//! `concurrency.Mutex` layout ([`Layout`]): everything that differs between the two is here.
//!
//! ## dlock's layout
//!
//! A lock is a *queue directory* `[namespace/]prefix/key-segment/#`, and every contender of
//! the lock puts one key in it: `…/#<lease id, hex>-<slot, hex>`. The contender with
//! the lowest create revision holds the lock. Names are reused by their session once their
//! key is gone (see `session::Name`), so a lock taken again and again by one client keeps
//! using one name, as etcd's own `concurrency.Mutex` does.
//!
//! A contender's [`LockMode`] is part of its key's name, because it never changes during the
//! key's life and every contender must learn the modes of those ahead of it from a
//! keys-only read: an exclusive contender's name is untagged, as it always was (older dlock
//! processes and etcd's own lock recipes queue the same way), a reader's starts with
//! `~shared-` and a semaphore permit's with `~permit-<n>-`. Every tag starts with `~`,
//! which sorts after the hex digits of an untagged name, so one range read finds the
//! untagged contenders alone ([`untagged_end`]) and another the permits alone
//! ([`permit_prefix`]): a reader learns the newest writer ahead of it without reading the
//! other readers.
//!
//! The `#` ends the directory because neither an escaped prefix nor a key segment can
//! contain one: the directory of one lock is never a string prefix of another lock's keys,
//! even when one prefix extends another (`app` and `app/k`). The lease id makes a key the
//! client's own; the slot number lets several tasks of one client contend for the same
//! lock (they share the lease) without being confused with one another.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlock_core::{LockKey, LockMode, LockOptions};
use etcd_client::GetOptions;

pub(crate) use crate::config::Layout;

/// What differs between the layouts. Everything else (the line of create revisions, the
/// enqueue and re-check reads, the watch on the one key ahead, release, renewal, fencing)
/// is the same code for both: etcd's `concurrency.Mutex` already queues the way dlock's
/// exclusive contenders do (put under the lease if absent, the lowest create revision
/// holds, wait for the deletion of the newest key created before ours, look again).
///
/// ## etcd's `concurrency.Mutex` layout
///
/// Go's `NewMutex(session, NAME)` (and so `etcdctl lock NAME`, the server's Lock RPC,
/// which runs that Mutex inside the server, and `concurrency.Election`) uses the prefix
/// `NAME/`; a session's key is `NAME/{lease id as %x}`, put with the session's lease only
/// if absent, and *every* key under `NAME/` is a contender, whoever wrote it. In that
/// layout the queue directory is `[namespace/][prefix/]key/` (unescaped), a contender key
/// is the directory followed by the lease id in Go's `%x`, every key found there is an
/// exclusive contender, and the value is the owner description as it is (no times: Go's
/// Mutex writes an empty value, `concurrency.Election` the leader's value).
impl Layout {
    /// The queue directory of `key` under `prefix` (and the configured namespace).
    pub(crate) fn queue_dir(self, namespace: Option<&str>, prefix: &str, key: &LockKey) -> String {
        match self {
            Layout::Dlock => queue_dir(namespace, prefix, key),
            Layout::EtcdConcurrency => concurrency_dir(namespace, prefix, key),
        }
    }

    /// Whether one lease can have only one contender key per queue directory (so a client
    /// needs a lease per concurrent contender of one lock).
    pub(crate) fn one_key_per_lease(self) -> bool {
        self == Layout::EtcdConcurrency
    }

    /// The key a contender in `mode` of the lease `lease_id` puts in `dir`, in its `slot`
    /// (always 0 where [`Layout::one_key_per_lease`]).
    pub(crate) fn contender_key(
        self,
        dir: &str,
        lease_id: i64,
        slot: u64,
        mode: LockMode,
    ) -> String {
        match self {
            Layout::Dlock => contender_key(dir, lease_id, slot, mode),
            Layout::EtcdConcurrency => format!("{dir}{}", go_hex(lease_id)),
        }
    }

    /// The mode of the contender key `key` of the queue `dir`.
    pub(crate) fn mode_of(self, dir: &str, key: &[u8]) -> LockMode {
        match self {
            Layout::Dlock => mode_of(dir, key),
            // Go's Mutex waits for every key under its prefix.
            Layout::EtcdConcurrency => LockMode::Exclusive,
        }
    }

    /// Whether a lock can be taken in `mode`.
    pub(crate) fn supports(self, mode: LockMode) -> bool {
        mode == LockMode::Exclusive || self == Layout::Dlock
    }

    /// The value a contender key carries.
    pub(crate) fn value(self, stamp: &Stamp) -> String {
        match self {
            Layout::Dlock => stamp.encode(),
            Layout::EtcdConcurrency => stamp.owner.clone(),
        }
    }

    /// Whether the value records when a waiter was granted (written once the lock has been
    /// held a while, see `EtcdBackend::stamp_grant`).
    pub(crate) fn records_grant_time(self) -> bool {
        self == Layout::Dlock
    }

    /// Whether the locks of a prefix can be listed: dlock's directories can be told apart
    /// from anything else, a foreign name can be any key.
    pub(crate) fn lists(self) -> bool {
        self == Layout::Dlock
    }

    /// The owner description and grant time a holder's key and value tell.
    pub(crate) fn holder(self, key: &[u8], value: &[u8]) -> (Option<String>, Option<SystemTime>) {
        match self {
            Layout::Dlock => match Stamp::decode(value) {
                Some(stamp) => (Some(stamp.owner.clone()), Some(stamp.acquired())),
                None => (None, None),
            },
            // The value is the owner (a leader's value); Go's Mutex writes none, and its key,
            // which names its lease, is what `etcdctl lock` prints for it.
            Layout::EtcdConcurrency => {
                let text = if value.is_empty() { key } else { value };
                (std::str::from_utf8(text).ok().map(str::to_owned), None)
            }
        }
    }
}

/// `[namespace/][prefix/]key/`: the lock name exactly as `etcdctl lock` and Go's
/// `NewMutex` are given it, and the `/` Go's Mutex appends. The lock options' default
/// prefix (`dlock`) is dlock's own namespace and is left out; any other prefix, and the
/// URL's namespace, go in front as they are (slashes at their ends dropped), as Go's
/// `namespace.NewKV(kv, "prefix/")` would put them.
fn concurrency_dir(namespace: Option<&str>, prefix: &str, key: &LockKey) -> String {
    let prefix = if prefix == LockOptions::default().prefix {
        ""
    } else {
        prefix.trim_matches('/')
    };
    let mut dir = String::new();
    for part in [namespace.unwrap_or(""), prefix] {
        if !part.is_empty() {
            dir.push_str(part);
            dir.push('/');
        }
    }
    dir.push_str(key.as_str());
    dir.push('/');
    dir
}

/// A lease id as Go's `fmt.Sprintf("%x", leaseID)` writes it: lower-case hex, no padding,
/// a `-` before the magnitude of a negative one.
fn go_hex(id: i64) -> String {
    if id < 0 {
        format!("-{:x}", id.unsigned_abs())
    } else {
        format!("{id:x}")
    }
}

/// Where the locks of `prefix` (and the configured namespace) live: every queue directory
/// of that prefix is this followed by a key segment and `/#`.
pub(crate) fn lock_base(namespace: Option<&str>, prefix: &str) -> String {
    let mut base = String::new();
    if let Some(namespace) = namespace {
        base.push_str(&escape_prefix(namespace));
        base.push('/');
    }
    base.push_str(&escape_prefix(prefix));
    base.push('/');
    base
}

/// The queue directory of `key` under `prefix` (and the configured namespace).
fn queue_dir(namespace: Option<&str>, prefix: &str, key: &LockKey) -> String {
    let mut dir = lock_base(namespace, prefix);
    dir.push_str(&key.path_segment());
    dir.push_str("/#");
    dir
}

/// Where a contender key found under `base` belongs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A key in the queue directory `dir` of the lock `key`.
    Lock {
        /// The queue directory (ends in `/#`).
        dir: String,
        /// The lock's key, unescaped.
        key: LockKey,
    },
    /// A key of a longer prefix (`base` + `segment/` + more): everything under `skip`
    /// belongs to it, and sorts after our own lock named `segment` (`#` sorts before every
    /// character an escaped name can hold).
    Nested {
        /// The key prefix to step over.
        skip: String,
    },
    /// Not a dlock key at all (written by someone else): step over this one key.
    Foreign,
}

/// Classifies `etcd_key`, which starts with `base`.
pub(crate) fn classify(base: &str, etcd_key: &[u8]) -> Found {
    let Some(rest) = etcd_key.strip_prefix(base.as_bytes()) else {
        return Found::Foreign;
    };
    let Some(slash) = rest.iter().position(|&b| b == b'/') else {
        return Found::Foreign;
    };
    let segment = &rest[..slash];
    let after = &rest[slash + 1..];
    let Ok(segment) = std::str::from_utf8(segment) else {
        return Found::Foreign;
    };
    if after.first() != Some(&b'#') {
        return Found::Nested {
            skip: format!("{base}{segment}/"),
        };
    }
    match unescape_segment(segment).and_then(|key| LockKey::new(key).ok()) {
        Some(key) if key.path_segment() == segment => Found::Lock {
            dir: format!("{base}{segment}/#"),
            key,
        },
        _ => Found::Foreign,
    }
}

/// The inverse of [`LockKey::path_segment`] (`None` for something it never produces).
fn unescape_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The start of the segments of every key that begins with `key_prefix`: the byte-wise
/// escape [`LockKey::path_segment`] applies. (The whole keys `.` and `..` are escaped
/// differently; they are found by the empty prefix only.)
pub(crate) fn escape_key_prefix(key_prefix: &str) -> String {
    let mut out = String::with_capacity(key_prefix.len());
    for byte in key_prefix.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: the range runs to the end of the key space.
    vec![0]
}

/// What a contender key's value says: who put it, when it queued and, once known, when it
/// was granted. Text lines, because the owner description has no control characters:
/// `dlock1`, queued-at and acquired-at in Unix milliseconds (the latter empty until a waiter
/// is granted; a key granted at once is acquired when it queued), then the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The owner description of the acquisition.
    pub(crate) owner: String,
    /// When the key was put.
    pub(crate) queued_at: SystemTime,
    /// When the key became the holder after waiting (`None`: at `queued_at`, or not yet
    /// written).
    pub(crate) acquired_at: Option<SystemTime>,
}

impl Stamp {
    /// A stamp put now by `owner`.
    pub(crate) fn now(owner: &str) -> Stamp {
        Stamp {
            owner: owner.to_owned(),
            queued_at: SystemTime::now(),
            acquired_at: None,
        }
    }

    /// The value to store.
    pub(crate) fn encode(&self) -> String {
        let millis = |at: SystemTime| {
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis())
        };
        format!(
            "dlock1\n{}\n{}\n{}",
            millis(self.queued_at),
            self.acquired_at
                .map(millis)
                .map_or(String::new(), |m| m.to_string()),
            self.owner
        )
    }

    /// Reads a stored value; `None` for an empty or foreign one.
    pub(crate) fn decode(value: &[u8]) -> Option<Stamp> {
        let text = std::str::from_utf8(value).ok()?;
        let mut lines = text.splitn(4, '\n');
        if lines.next()? != "dlock1" {
            return None;
        }
        let at = |text: &str| -> Option<SystemTime> {
            UNIX_EPOCH.checked_add(Duration::from_millis(text.parse().ok()?))
        };
        let queued_at = at(lines.next()?)?;
        let acquired = lines.next()?;
        let acquired_at = if acquired.is_empty() {
            None
        } else {
            Some(at(acquired)?)
        };
        Some(Stamp {
            owner: lines.next()?.to_owned(),
            queued_at,
            acquired_at,
        })
    }

    /// When the holder got the lock, as far as the value says.
    pub(crate) fn acquired(&self) -> SystemTime {
        self.acquired_at.unwrap_or(self.queued_at)
    }
}

/// The key one contender in `mode` puts in `dir`: exclusive ones untagged, as before modes
/// existed, the others tagged with their mode (see the module documentation).
fn contender_key(dir: &str, lease_id: i64, slot: u64, mode: LockMode) -> String {
    match mode {
        LockMode::Exclusive => format!("{dir}{lease_id:016x}-{slot:x}"),
        LockMode::Shared => format!("{dir}{SHARED_TAG}{lease_id:016x}-{slot:x}"),
        LockMode::Permit(permits) => {
            format!("{dir}{PERMIT_TAG}{permits}-{lease_id:016x}-{slot:x}")
        }
    }
}

/// What a reader's key name starts with, after the queue directory.
const SHARED_TAG: &str = "~shared-";
/// What a semaphore permit's key name starts with, after the queue directory; the permit
/// count and a `-` follow.
const PERMIT_TAG: &str = "~permit-";

/// The mode of the contender key `key` of the queue `dir`, from its name. Anything not
/// tagged is exclusive: dlock's own untagged keys, and keys of other lock clients queueing
/// in the directory, who must be waited for like any holder.
fn mode_of(dir: &str, key: &[u8]) -> LockMode {
    let name = key.strip_prefix(dir.as_bytes()).unwrap_or(key);
    if name.starts_with(SHARED_TAG.as_bytes()) {
        return LockMode::Shared;
    }
    name.strip_prefix(PERMIT_TAG.as_bytes())
        .and_then(|rest| {
            let digits = rest.iter().position(|&b| b == b'-')?;
            std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
        })
        .map_or(LockMode::Exclusive, LockMode::Permit)
}

/// The end of the range `[dir, untagged_end(dir))`, which holds exactly the untagged
/// (exclusive) contenders of `dir`: every tag starts with `~`. (A foreign key whose name
/// starts with `~` or a later byte is not in it; nothing of dlock or etcd's recipes puts
/// one there.)
pub(crate) fn untagged_end(dir: &str) -> String {
    format!("{dir}~")
}

/// The prefix of every semaphore permit's key in `dir`, whatever its count.
pub(crate) fn permit_prefix(dir: &str) -> String {
    format!("{dir}{PERMIT_TAG}")
}

/// Options for reading the newest contenders of a queue directory first (keys only).
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

/// Options for reading the oldest contenders of a queue directory first (keys only; no
/// limit for 0).
pub(crate) fn oldest_first(limit: i64) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Ascend,
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
    fn contender_keys_are_classified_back_to_their_lock() {
        let base = lock_base(Some("ns"), "app");
        for name in ["jobs/a", "50%", "..", "a b#c", "é"] {
            let dir = queue_dir(Some("ns"), "app", &key(name));
            let found = classify(
                &base,
                contender_key(&dir, 7, 1, LockMode::Exclusive).as_bytes(),
            );
            assert_eq!(
                found,
                Found::Lock {
                    dir,
                    key: key(name)
                }
            );
        }
        let nested = contender_key(
            &queue_dir(Some("ns"), "app/other", &key("k")),
            7,
            1,
            LockMode::Shared,
        );
        assert_eq!(
            classify(&base, nested.as_bytes()),
            Found::Nested {
                skip: "ns/app/other/".into()
            }
        );
        assert_eq!(classify(&base, b"ns/app/plain"), Found::Foreign);
        assert_eq!(classify(&base, b"ns/app/a%zz/#1"), Found::Foreign);
        assert!(escape_key_prefix("jobs/") < "jobs%2Fa".to_owned() + "~");
        assert!(key("jobs/a")
            .path_segment()
            .starts_with(&escape_key_prefix("jobs/")));
        assert_eq!(prefix_end(b"a/#"), b"a/$");
    }

    #[test]
    fn modes_are_read_back_from_key_names_and_sorted_apart() {
        let dir = queue_dir(None, "app", &key("k"));
        let modes = [
            LockMode::Exclusive,
            LockMode::Shared,
            LockMode::Permit(1),
            LockMode::Permit(1024),
        ];
        for mode in modes {
            for (lease, slot) in [(0, 0), (0x7fff_ffff_ffff_ffff, 0x1f), (0x694d_8c1a, 3)] {
                let name = contender_key(&dir, lease, slot, mode);
                assert_eq!(mode_of(&dir, name.as_bytes()), mode, "{name}");
                // Untagged keys, and only they, are in the untagged range.
                let untagged = name.as_str() < untagged_end(&dir).as_str();
                assert_eq!(untagged, mode == LockMode::Exclusive, "{name}");
                let permit = name.starts_with(&permit_prefix(&dir));
                assert_eq!(permit, matches!(mode, LockMode::Permit(_)), "{name}");
            }
        }
        // The exclusive key format is the one dlock always used.
        assert_eq!(
            contender_key("p/k/#", 0x2a, 0x1b, LockMode::Exclusive),
            "p/k/#000000000000002a-1b"
        );
        // etcd's own `concurrency.Mutex` key (unpadded lease) and anything else foreign
        // count as exclusive.
        assert_eq!(
            mode_of(&dir, format!("{dir}694d8c1a").as_bytes()),
            LockMode::Exclusive
        );
        assert_eq!(
            mode_of(&dir, format!("{dir}~permit-x-1").as_bytes()),
            LockMode::Exclusive
        );
    }

    #[test]
    fn concurrency_keys_are_gos() {
        let layout = Layout::EtcdConcurrency;
        let dir = layout.queue_dir(None, &LockOptions::default().prefix, &key("jobs/a b"));
        assert_eq!(dir, "jobs/a b/");
        assert_eq!(
            layout.contender_key(&dir, 0x694d_8c1a_0b2c_3d4e, 0, LockMode::Exclusive),
            "jobs/a b/694d8c1a0b2c3d4e"
        );
        assert_eq!(
            layout.contender_key("k/", 0x2a, 0, LockMode::Exclusive),
            "k/2a"
        );
        assert_eq!(
            layout.contender_key("k/", -0x2a, 0, LockMode::Exclusive),
            "k/-2a"
        );
        // The URL's namespace and a prefix other than the default go in front, raw.
        assert_eq!(
            layout.queue_dir(Some("ns/x"), "app/", &key("k")),
            "ns/x/app/k/"
        );
        assert_eq!(
            layout.queue_dir(Some("ns"), "dlock", &key("%2F..")),
            "ns/%2F../"
        );
        assert_eq!(layout.queue_dir(None, "", &key("/k")), "/k/");
        // Every key under the name's `/` is an exclusive contender, whatever its name.
        for name in ["694d8c1a", "~shared-1-2", "~permit-3-1-2", "sub/lock/1"] {
            assert_eq!(
                layout.mode_of(&dir, format!("{dir}{name}").as_bytes()),
                LockMode::Exclusive
            );
        }
        assert!(layout.supports(LockMode::Exclusive));
        assert!(!layout.supports(LockMode::Shared) && !layout.supports(LockMode::Permit(2)));
        // The value is the owner as it is; Go's empty value names the holder by its key.
        let stamp = Stamp::now("leader at 10.0.0.7");
        assert_eq!(layout.value(&stamp), "leader at 10.0.0.7");
        assert_eq!(
            layout.holder(b"k/2a", b"leader at 10.0.0.7"),
            (Some("leader at 10.0.0.7".to_owned()), None)
        );
        assert_eq!(layout.holder(b"k/2a", b""), (Some("k/2a".to_owned()), None));
        // dlock's own layout is unchanged.
        let own = Layout::Dlock;
        assert_eq!(
            own.queue_dir(None, "app", &key("k")),
            queue_dir(None, "app", &key("k"))
        );
        assert_eq!(
            own.contender_key("p/k/#", 0x2a, 0x1b, LockMode::Exclusive),
            "p/k/#000000000000002a-1b"
        );
        assert_eq!(own.holder(b"p/k/#1", b""), (None, None));
        assert_eq!(
            own.holder(b"p/k/#1", stamp.encode().as_bytes())
                .0
                .as_deref(),
            Some("leader at 10.0.0.7")
        );
    }

    #[test]
    fn stamps_round_trip() {
        let mut stamp = Stamp::now("host/1/prog with spaces");
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        stamp.queued_at = at;
        assert_eq!(
            Stamp::decode(stamp.encode().as_bytes()),
            Some(stamp.clone())
        );
        stamp.acquired_at = Some(at + Duration::from_millis(5));
        assert_eq!(
            Stamp::decode(stamp.encode().as_bytes()),
            Some(stamp.clone())
        );
        assert_eq!(stamp.acquired(), at + Duration::from_millis(5));
        assert_eq!(Stamp::decode(b""), None);
        assert_eq!(Stamp::decode(b"other"), None);
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
                for mode in [LockMode::Exclusive, LockMode::Shared, LockMode::Permit(3)] {
                    let contender = contender_key(b, 7, 1, mode);
                    assert_eq!(
                        i == j,
                        contender.starts_with(a.as_str()),
                        "{a} vs {contender}"
                    );
                }
            }
        }
    }
}
