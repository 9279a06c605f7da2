//! The ZooKeeper backend over TLS (`zookeepers://`, the server's `secureClientPort` with a CA
//! made in the test and client certificates required) and with SASL DIGEST-MD5 users
//! (`?auth=sasl`): the whole conformance suite over TLS, then what TLS and SASL must refuse.
//! One server for the binary ([`shared_secure_zookeeper`]).

use std::time::{Duration, Instant};

use dlock_core::{LockError, LockOptions, Locker};
use dlock_test_servers::{shared_secure_zookeeper, SASL_USERS};
use dlock_zookeeper::zookeeper_client::{self, Client, Error};
use dlock_zookeeper::ZooKeeperBackend;

mod conformance_support;
mod zookeeper_support;

use zookeeper_support::ZooKeeperTarget;

async fn tls_target() -> ZooKeeperTarget {
    let server = shared_secure_zookeeper();
    ZooKeeperTarget::new(&format!("zookeeper://{}", server.secure_address))
        .await
        .over_tls(&server.address, &server.tls_params())
}

dlock_conformance::conformance_tests!(tls_target());

fn unique(name: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let salt = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{name}-{salt:016x}")
}

async fn locker(url: &str, prefix: &str) -> Locker {
    let backend = dlock_zookeeper::connect(url).await.expect("connect");
    Locker::new(backend)
        .with_options(
            LockOptions::default()
                .lease(Duration::from_secs(10))
                .prefix(prefix),
        )
        .expect("options")
}

/// A SASL URL for user `index` of [`SASL_USERS`], on the plain-text port.
fn sasl_url(index: usize, password: Option<&str>) -> String {
    let server = shared_secure_zookeeper();
    let (user, right) = SASL_USERS[index];
    let password = password.unwrap_or(right);
    format!(
        "zookeeper://{user}:{password}@{}?auth=sasl&session_timeout=10s&connect_timeout=5s",
        server.address
    )
}

/// Asserts `outcome` is a connection error that came within `limit`.
fn assert_connection_error<T: std::fmt::Debug>(
    what: &str,
    started: Instant,
    limit: Duration,
    outcome: Result<T, LockError>,
) {
    assert!(
        matches!(outcome, Err(LockError::Connection { .. })),
        "{what}: {outcome:?}"
    );
    assert!(
        started.elapsed() < limit,
        "{what}: took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_locks_and_unlocks_through_the_url() {
    let server = shared_secure_zookeeper();
    let prefix = unique("tls-round-trip");
    let first = locker(&server.tls_url(), &prefix).await;
    let second = locker(&server.tls_url(), &prefix).await;
    let guard = first.acquire("k").await.expect("acquire over TLS");
    assert!(second.try_acquire("k").await.expect("try").is_none());
    guard.release().await.expect("release");
    let again = second.acquire("k").await.expect("the other client in turn");
    again.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_wrong_ca_is_a_connection_error_not_a_hang() {
    let server = shared_secure_zookeeper();
    let url = format!(
        "zookeepers://{}?ca={}&cert={}&key={}&connect_timeout=2s",
        server.secure_address,
        server.other_ca.display(),
        server.client_cert.display(),
        server.client_key.display()
    );
    let started = Instant::now();
    let outcome = dlock_zookeeper::connect(&url).await;
    assert_connection_error("wrong CA", started, Duration::from_secs(10), outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_client_certificate_is_refused() {
    let server = shared_secure_zookeeper();
    let url = format!(
        "zookeepers://{}?ca={}&connect_timeout=2s",
        server.secure_address,
        server.ca.display()
    );
    let started = Instant::now();
    let outcome = dlock_zookeeper::connect(&url).await;
    assert_connection_error("no client cert", started, Duration::from_secs(10), outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_to_the_secure_port_and_tls_to_the_plain_port_fail_cleanly() {
    let server = shared_secure_zookeeper();
    let started = Instant::now();
    let plain = dlock_zookeeper::connect(&format!(
        "zookeeper://{}?connect_timeout=2s",
        server.secure_address
    ))
    .await;
    assert_connection_error(
        "plain text to the TLS port",
        started,
        Duration::from_secs(10),
        plain,
    );
    let started = Instant::now();
    let tls = dlock_zookeeper::connect(&format!(
        "zookeepers://{}?{}&connect_timeout=2s",
        server.address,
        server.tls_params()
    ))
    .await;
    assert_connection_error(
        "TLS to the plain port",
        started,
        Duration::from_secs(10),
        tls,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_typed_errors() {
    let server = shared_secure_zookeeper();
    let missing = dlock_zookeeper::connect(&format!(
        "zookeepers://{}?ca=/nonexistent/ca.pem",
        server.secure_address
    ))
    .await;
    assert!(
        matches!(missing, Err(LockError::InvalidOptions { .. })),
        "{missing:?}"
    );
    // A file that holds no certificate (the key, given as the CA).
    let not_a_ca = dlock_zookeeper::connect(&format!(
        "zookeepers://{}?ca={}",
        server.secure_address,
        server.client_key.display()
    ))
    .await;
    assert!(
        matches!(not_a_ca, Err(LockError::InvalidOptions { .. })),
        "{not_a_ca:?}"
    );
    // The certificate given as the key.
    let not_a_key = dlock_zookeeper::connect(&format!(
        "zookeepers://{}?ca={}&cert={}&key={}",
        server.secure_address,
        server.ca.display(),
        server.client_cert.display(),
        server.client_cert.display()
    ))
    .await;
    assert!(
        matches!(not_a_key, Err(LockError::InvalidOptions { .. })),
        "{not_a_key:?}"
    );
    let no_ca = dlock_zookeeper::connect(&format!("zookeepers://{}", server.secure_address)).await;
    assert!(
        matches!(no_ca, Err(LockError::InvalidUrl { .. })),
        "{no_ca:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_with_the_right_password_locks_and_unlocks() {
    let prefix = unique("sasl-round-trip");
    let alice = locker(&sasl_url(0, None), &prefix).await;
    let guard = alice.acquire("k").await.expect("alice acquires");
    guard.release().await.expect("alice releases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_with_a_wrong_password_is_refused_at_once() {
    let started = Instant::now();
    let outcome = dlock_zookeeper::connect(&sasl_url(0, Some("not-alices-pw"))).await;
    match outcome {
        Err(error @ LockError::Backend { .. }) => {
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("not-alices-pw"), "{shown}");
            assert!(shown.contains("authentication failed"), "{shown}");
        }
        other => panic!("a wrong SASL password: {other:?}"),
    }
    // Refused, not retried until the 5 s connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sasl_user_cannot_delete_or_steal_the_lock_but_the_same_user_takes_it_in_turn() {
    let server = shared_secure_zookeeper();
    let prefix = unique("sasl-acl");
    let alice = locker(&sasl_url(0, None), &prefix).await;
    let guard = alice.acquire("k").await.expect("alice acquires");
    let node = ZooKeeperBackend::node_path(guard.lease())
        .expect("a zookeeper lease")
        .to_owned();

    // The node's ACL is alice's SASL identity alone.
    let (alice_pw, bob_pw) = (SASL_USERS[0].1, SASL_USERS[1].1);
    let raw_alice = Client::connector()
        .with_sasl(zookeeper_client::SaslOptions::digest_md5("alice", alice_pw))
        .connect(&server.address)
        .await
        .expect("alice's raw client");
    let (acl, _) = raw_alice.get_acl(&node).await.expect("alice reads the ACL");
    assert_eq!(acl.len(), 1, "{acl:?}");
    assert_eq!((acl[0].scheme(), acl[0].id()), ("sasl", "alice"), "{acl:?}");

    // Bob can neither delete the node nor its key node, nor read it.
    let raw_bob = Client::connector()
        .with_sasl(zookeeper_client::SaslOptions::digest_md5("bob", bob_pw))
        .connect(&server.address)
        .await
        .expect("bob's raw client");
    assert_eq!(raw_bob.delete(&node, None).await, Err(Error::NoAuth));
    assert_eq!(
        raw_bob.get_data(&node).await.map(|_| ()),
        Err(Error::NoAuth)
    );
    let key_node = node.rsplit_once('/').expect("parent").0;
    assert_eq!(
        raw_bob.list_children(key_node).await.map(|_| ()),
        Err(Error::NoAuth)
    );
    // Nor does bob through dlock get the lock: he may not even join the line.
    let bob = locker(&sasl_url(1, None), &prefix).await;
    let stolen = bob.try_acquire("k").await;
    assert!(
        matches!(stolen, Err(LockError::Backend { .. })),
        "{stolen:?}"
    );
    assert!(guard.is_held(), "alice still holds");

    // Alice from another client waits her turn and takes it on release.
    let alice_again = locker(&sasl_url(0, None), &prefix).await;
    assert!(alice_again.try_acquire("k").await.expect("try").is_none());
    let waiting = tokio::spawn(async move { alice_again.acquire("k").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    guard.release().await.expect("release");
    let next = waiting.await.expect("task").expect("alice's second client");
    next.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_over_tls_locks_and_its_nodes_carry_both_identities() {
    let server = shared_secure_zookeeper();
    let prefix = unique("sasl-tls");
    let url = format!(
        "zookeepers://alice:{}@{}?{}&auth=sasl&session_timeout=10s",
        SASL_USERS[0].1,
        server.secure_address,
        server.tls_params()
    );
    let alice = locker(&url, &prefix).await;
    let guard = alice.acquire("k").await.expect("alice acquires over TLS");
    let node = ZooKeeperBackend::node_path(guard.lease())
        .expect("a zookeeper lease")
        .to_owned();
    let raw_alice = Client::connector()
        .with_sasl(zookeeper_client::SaslOptions::digest_md5(
            "alice",
            SASL_USERS[0].1,
        ))
        .connect(&server.address)
        .await
        .expect("alice's raw client");
    let (acl, _) = raw_alice.get_acl(&node).await.expect("alice reads the ACL");
    let ids: Vec<(String, String)> = acl
        .iter()
        .map(|acl| (acl.scheme().to_owned(), acl.id().to_owned()))
        .collect();
    // What the crate docs say: the client certificate's identity is a creator too.
    assert!(
        ids.contains(&("sasl".to_owned(), "alice".to_owned())),
        "{ids:?}"
    );
    assert!(
        ids.iter()
            .any(|(scheme, id)| scheme == "x509" && id.contains("dlock-client")),
        "{ids:?}"
    );
    guard.release().await.expect("release");
}
