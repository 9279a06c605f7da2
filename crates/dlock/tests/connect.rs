//! `dlock::connect` from the user's side: schemes, features, options from the query.

use std::time::Duration;

use dlock::LockError;

#[tokio::test]
async fn memory_urls_share_one_process_wide_table() {
    let first = dlock::connect("memory://?prefix=connect-test")
        .await
        .unwrap();
    let second = dlock::connect("memory://?prefix=connect-test")
        .await
        .unwrap();
    let guard = first.acquire("shared").await.unwrap();
    assert!(second.try_acquire("shared").await.unwrap().is_none());
    guard.release().await.unwrap();
}

#[tokio::test]
async fn query_parameters_become_lock_options() {
    let locker = dlock::connect("memory://?prefix=p&lease=12s&wait=250ms&keepalive=false")
        .await
        .unwrap();
    let options = locker.options();
    assert_eq!(options.prefix, "p");
    assert_eq!(options.lease, Duration::from_secs(12));
    assert_eq!(options.wait, Some(Duration::from_millis(250)));
    assert!(!options.keepalive);
}

#[tokio::test]
async fn bad_urls_are_typed_errors() {
    for url in [
        "",
        "memory:/",
        "ftp://h",
        "memory://somehost",
        "memory://?lease=0s",
        "memory://?unknown=1",
    ] {
        let outcome = dlock::connect(url).await;
        assert!(
            matches!(outcome, Err(LockError::InvalidUrl { .. })),
            "{url:?}: {outcome:?}"
        );
    }
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn a_scheme_whose_feature_is_off_names_the_feature() {
    let error = dlock::connect("redis://127.0.0.1:6379").await.unwrap_err();
    assert!(error.to_string().contains("feature"), "{error}");
}

/// Every scheme a backend crate owns is routed to it: a closed port gives the backend's
/// connection error, never "unknown scheme".
#[tokio::test]
async fn every_backend_scheme_reaches_its_backend() {
    let closed = "127.0.0.1:1";
    #[allow(unused_mut)]
    let mut urls: Vec<String> = Vec::new();
    #[cfg(feature = "redis")]
    for scheme in dlock::redis::SCHEMES {
        let hosts = if scheme.ends_with("redlock") {
            format!("{closed},127.0.0.1:2,127.0.0.1:3")
        } else if scheme.ends_with("sentinel") {
            // Sentinels, and the name of the primary they watch.
            format!("{closed}/primary")
        } else {
            closed.to_owned()
        };
        urls.push(format!("{scheme}://{hosts}?connect_timeout=200ms&lease=5s"));
    }
    #[cfg(feature = "zookeeper")]
    for scheme in dlock::zookeeper::SCHEMES {
        // A TLS URL needs its CA file before it connects (any certificate will do here: the
        // port is closed before a handshake).
        let tls = if scheme.ends_with('s') {
            format!("&ca={}", test_ca().display())
        } else {
            String::new()
        };
        urls.push(format!(
            "{scheme}://{closed}?connect_timeout=200ms&prefix=p&wait=1s{tls}"
        ));
    }
    #[cfg(feature = "etcd")]
    for scheme in dlock::etcd::SCHEMES {
        urls.push(format!(
            "{scheme}://{closed}?connect_timeout=200ms&keepalive=false"
        ));
    }
    for url in urls {
        let outcome = dlock::connect(&url).await;
        assert!(
            matches!(outcome, Err(LockError::Connection { .. })),
            "{url}: {outcome:?}"
        );
    }
    let _ = std::fs::remove_file(test_ca_path());
}

/// A CA certificate in a file of this test process's own (`openssl req -x509`, P-256).
#[allow(dead_code)]
fn test_ca() -> std::path::PathBuf {
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlDCCATmgAwIBAgIUC2lvIkNm2jC0WTAoI8TXhmvNWPkwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUZGxvY2sgZmFjYWRlIHRlc3QgQ0EwHhcNMjYxMTI4MDIyNTUx
WhcNMzYxMTI1MDIyNTUxWjAfMR0wGwYDVQQDDBRkbG9jayBmYWNhZGUgdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMVzXROKlfZ/0nupJc8yVJP0iflC
PqR6YJWh+PXtgMfdmezDKrXLQb/C1pb+16OBLl80Y4777TAW4AgAkl2uJsajUzBR
MB0GA1UdDgQWBBSTC+7Fp4lJTWimdtAwHAAfRfqn8DAfBgNVHSMEGDAWgBSTC+7F
p4lJTWimdtAwHAAfRfqn8DAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA
MEYCIQD5Q/LgiYEw9iuUM5utBhFDwz1zyMaS+kC7AV0SPKkwZAIhANyKti2oYcLo
o67mtxK5rcOsFz1ClDl9Tg8m8omSxaqi
-----END CERTIFICATE-----\n";
    let path =
        std::env::temp_dir().join(format!("dlock-connect-test-ca-{}.pem", std::process::id()));
    std::fs::write(&path, CA).expect("the CA file");
    path
}

/// Where [`test_ca`] writes its file.
fn test_ca_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dlock-connect-test-ca-{}.pem", std::process::id()))
}
