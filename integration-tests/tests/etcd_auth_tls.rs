//! The etcd backend against an etcd with users and authentication on, and against one that
//! speaks TLS with a freshly generated certificate.

use dlock_core::{LockError, LockOptions, Locker};
use dlock_etcd::etcd_client::{Client, Permission};
use dlock_test_servers::EtcdServer;

const PASSWORD: &str = "s3cr:t@pw";

fn options(test: &str) -> LockOptions {
    LockOptions::default().prefix(format!("dlock-auth/{test}"))
}

/// Takes and gives back a lock through `url`; the fencing helper works too.
async fn lock_round_trip(url: &str, test: &str) {
    let backend = dlock_etcd::connect(url).await.expect("connect");
    let locker = Locker::new(backend.clone())
        .with_options(options(test))
        .expect("options");
    let guard = locker.acquire("k").await.expect("acquire");
    assert!(locker.try_acquire("k").await.expect("try").is_none());
    let txn = dlock_etcd::fence::fenced_txn(&guard, [])
        .expect("txn")
        .and_then([dlock_etcd::etcd_client::TxnOp::put(
            format!("dlock-auth/{test}/data"),
            "v",
            None,
        )]);
    let mut client = backend.client().clone();
    assert!(client.txn(txn).await.expect("fenced txn").succeeded());
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_passwords_from_the_url() {
    let server = EtcdServer::start();
    let mut admin = Client::connect([server.address()], None)
        .await
        .expect("admin client");
    admin
        .user_add("root", "rootpw", None)
        .await
        .expect("root user");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("root role");
    admin.role_add("locks").await.expect("role");
    admin
        .role_grant_permission("locks", Permission::read_write("dlock-auth/").with_prefix())
        .await
        .expect("permission");
    admin
        .user_add("app", PASSWORD, None)
        .await
        .expect("app user");
    admin.user_grant_role("app", "locks").await.expect("grant");
    admin.auth_enable().await.expect("auth on");

    let address = server.address();
    // The password is percent-encoded in the URL (`:` and `@` are special there).
    lock_round_trip(&format!("etcd://app:s3cr%3At%40pw@{address}"), "auth").await;

    let wrong = dlock_etcd::connect(&format!("etcd://app:wrong-pw@{address}")).await;
    match wrong {
        Err(error) => {
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("wrong-pw"), "{shown}");
        }
        Ok(_) => panic!("a wrong password was accepted"),
    }

    // Without credentials etcd refuses the requests: a typed error, not a panic or a hang.
    let anonymous = dlock_etcd::connect(&format!("etcd://{address}?timeout=2s")).await;
    if let Ok(backend) = anonymous {
        let locker = Locker::new(backend)
            .with_options(options("anon"))
            .expect("options");
        let outcome = locker.try_acquire("k").await;
        assert!(
            matches!(outcome, Err(LockError::Backend { .. })),
            "{outcome:?}"
        );
    }

    // The debug output of a configured backend never shows the password either.
    let backend = dlock_etcd::connect(&format!("etcd://app:s3cr%3At%40pw@{address}"))
        .await
        .expect("connect");
    assert!(!format!("{backend:?}").contains("s3cr"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_certificate_authority() {
    let dir = tempfile::tempdir().expect("temporary directory");
    dlock_test_servers::make_test_certificates(dir.path());
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let server = EtcdServer::start_with(&[
        "--cert-file",
        cert.to_str().expect("path"),
        "--key-file",
        key.to_str().expect("path"),
    ]);
    let ca = dir.path().join("ca.pem");
    let url = format!("etcds://{}?ca={}", server.address(), ca.display());
    lock_round_trip(&url, "tls").await;

    // Without the private CA the server's certificate is not trusted.
    let untrusted = dlock_etcd::connect(&format!(
        "etcds://{}?connect_timeout=2s&timeout=2s",
        server.address()
    ))
    .await;
    assert!(
        matches!(untrusted, Err(LockError::Connection { .. })),
        "{untrusted:?}"
    );
    // A plain-text client cannot talk to it either.
    let plain = dlock_etcd::connect(&format!(
        "etcd://{}?connect_timeout=2s&timeout=2s",
        server.address()
    ))
    .await;
    assert!(plain.is_err(), "{plain:?}");
    // A CA file that does not exist is a typed error.
    let missing = dlock_etcd::connect(&format!(
        "etcds://{}?ca=/nonexistent/ca.pem",
        server.address()
    ))
    .await;
    assert!(
        matches!(missing, Err(LockError::InvalidOptions { .. })),
        "{missing:?}"
    );
}
