//! Chroot and digest authentication of the ZooKeeper backend, on the shared server.

use std::time::Duration;

use dlock_core::{LockError, LockOptions, Locker};
use dlock_test_servers::shared_zookeeper;
use dlock_zookeeper::zookeeper_client::{Client, Error};
use dlock_zookeeper::ZooKeeperBackend;

fn unique(name: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let salt = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{name}-{salt:016x}")
}

async fn locker(url: &str) -> Locker {
    let backend = dlock_zookeeper::connect(url).await.expect("connect");
    Locker::new(backend)
        .with_options(LockOptions::default().lease(Duration::from_secs(10)))
        .expect("options")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_live_under_the_chroot_with_the_creators_acl() {
    let server = shared_zookeeper();
    let chroot = unique("/dlock-auth");
    let url = format!(
        "zookeeper://alice:s3cret@{}{chroot}?session_timeout=10s",
        server.address
    );
    let alice = locker(&url).await;
    assert!(!format!("{alice:?}").contains("s3cret"), "{alice:?}");
    let guard = alice.acquire("k").await.expect("alice acquires");
    let node = ZooKeeperBackend::node_path(guard.lease())
        .expect("a zookeeper lease")
        .to_owned();

    // From outside, the node sits below the chroot and only alice's identity may touch it.
    let outsider = Client::connect(&server.address).await.expect("outsider");
    let full = format!("{chroot}{node}");
    assert_eq!(
        outsider.get_acl(&full).await.map(|_| ()),
        Err(Error::NoAuth)
    );
    let insider = Client::connector()
        .with_auth("digest", b"alice:s3cret")
        .connect(&server.address)
        .await
        .expect("alice's own raw client");
    let (acl, _) = insider
        .get_acl(&full)
        .await
        .expect("the node is below the chroot");
    assert_eq!(acl.len(), 1);
    assert_eq!(acl[0].scheme(), "digest");
    assert!(acl[0].id().starts_with("alice:"), "{acl:?}");
    assert!(!acl[0].id().contains("s3cret"));
    let key_node = full.rsplit_once('/').expect("parent").0;
    assert_eq!(
        outsider.delete(&full, None).await,
        Err(Error::NoAuth),
        "an unauthenticated client deleted the lock node"
    );

    // Another user of the same chroot cannot join the line: a typed error, not a hang.
    let mallory = locker(&format!(
        "zookeeper://mallory:guess@{}{chroot}",
        server.address
    ))
    .await;
    let tried = mallory.try_acquire("k").await;
    assert!(matches!(tried, Err(LockError::Backend { .. })), "{tried:?}");
    assert!(outsider.check_stat(key_node).await.expect("stat").is_some());

    // Alice, in another session with the same credentials, is in line as usual.
    let alice_again = locker(&url).await;
    assert!(alice_again.try_acquire("k").await.expect("try").is_none());
    guard.release().await.expect("release");
    let next = alice_again.try_acquire("k").await.expect("try");
    assert!(next.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_typed_errors_without_the_password() {
    for url in [
        "zookeeper://alice:hunter2@127.0.0.1:notaport",
        "zookeeper://alice:hunter2@127.0.0.1:2181?session_timeout=forever",
        "zookeeper://alice:hunter2@127.0.0.1:2181/a/../b",
        "zookeeper://alice:hunter2@127.0.0.1:2181?unknown=1",
    ] {
        match dlock_zookeeper::connect(url).await {
            Err(LockError::InvalidUrl { url: shown, reason }) => {
                assert!(!shown.contains("hunter2") && !reason.contains("hunter2"));
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}
