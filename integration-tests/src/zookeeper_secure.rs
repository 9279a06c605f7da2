//! A ZooKeeper 3.8 server with a TLS port and SASL users beside its plain-text port: what
//! production ensembles run, for the `zookeepers://` and `?auth=sasl` tests.
//!
//! The server (Netty connection factory, the jars Debian puts in `/usr/share/java`) listens
//! on a plain-text `clientPort` (four-letter words, admin clients from outside, SASL without
//! TLS) and a `secureClientPort` whose certificate a CA made here with `openssl` signed.
//! Clients of the secure port must show a certificate of that CA (`ssl.clientAuth=need`,
//! ZooKeeper's default). SASL DIGEST-MD5 users come from a JAAS `Server` section
//! ([`SASL_USERS`]), checked by `SASLAuthenticationProvider`.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::process::{at_exit, free_port, Cleanup};
use crate::test_certificates::make_test_certificates;
use crate::zookeeper::ZooKeeperServer;

/// The SASL users (`user`, `password`) the secure server knows.
pub const SASL_USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

/// A ZooKeeper server with a TLS port and SASL users, and the files a client needs.
#[derive(Debug)]
pub struct SecureZooKeeper {
    /// `127.0.0.1:PORT` of the plain-text port.
    pub address: String,
    /// `127.0.0.1:PORT` of the TLS port (`secureClientPort`).
    pub secure_address: String,
    /// The CA that signed the server's and the client's certificates (PEM).
    pub ca: PathBuf,
    /// A client certificate the server accepts (PEM, subject `CN=dlock-client`).
    pub client_cert: PathBuf,
    /// Its private key (PEM).
    pub client_key: PathBuf,
    /// Another CA, which signed nothing the server shows (PEM).
    pub other_ca: PathBuf,
}

impl SecureZooKeeper {
    /// `ca=…&cert=…&key=…`: the TLS parameters of a `zookeepers://` URL for this server.
    pub fn tls_params(&self) -> String {
        format!(
            "ca={}&cert={}&key={}",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }

    /// `zookeepers://127.0.0.1:PORT?ca=…&cert=…&key=…`.
    pub fn tls_url(&self) -> String {
        format!("zookeepers://{}?{}", self.secure_address, self.tls_params())
    }

    /// Starts one (certificates, JAAS file, then the JVM: a few seconds). The process and
    /// its files live until the test binary exits.
    pub fn start() -> SecureZooKeeper {
        let files = tempfile::Builder::new()
            .prefix("dlock-zookeeper-tls-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        at_exit(Cleanup::RemoveDir(files.clone()));
        make_test_certificates(&files);
        // ZooKeeper's PEM key store: the certificate and its key in one file.
        let keystore = files.join("server-keystore.pem");
        let mut pem = std::fs::read_to_string(files.join("server.pem")).expect("server.pem");
        pem.push_str(&std::fs::read_to_string(files.join("server.key")).expect("server.key"));
        std::fs::write(&keystore, pem).expect("key store");
        let jaas = files.join("jaas.conf");
        let users: String = SASL_USERS
            .iter()
            .map(|(user, password)| format!("\n    user_{user}=\"{password}\""))
            .collect();
        std::fs::write(
            &jaas,
            format!("Server {{\n    org.apache.zookeeper.server.auth.DigestLoginModule required{users};\n}};\n"),
        )
        .expect("jaas.conf");
        let secure_port = free_port();
        let ca = files.join("ca.pem");
        let config = [
            format!("secureClientPort={secure_port}"),
            "secureClientPortAddress=127.0.0.1".to_owned(),
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".to_owned(),
            format!("ssl.keyStore.location={}", keystore.display()),
            "ssl.keyStore.type=PEM".to_owned(),
            format!("ssl.trustStore.location={}", ca.display()),
            "ssl.trustStore.type=PEM".to_owned(),
            "ssl.clientAuth=need".to_owned(),
            "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider".to_owned(),
        ];
        let config: Vec<&str> = config.iter().map(String::as_str).collect();
        let server = ZooKeeperServer::start_with_jvm(
            &config,
            &[format!(
                "-Djava.security.auth.login.config={}",
                jaas.display()
            )],
        );
        wait_for_port(secure_port);
        let endpoint = server.0.into_shared();
        SecureZooKeeper {
            address: endpoint.address,
            secure_address: format!("127.0.0.1:{secure_port}"),
            client_cert: files.join("client.pem"),
            client_key: files.join("client.key"),
            other_ca: files.join("other-ca.pem"),
            ca,
        }
    }
}

/// The secure ZooKeeper this test binary shares, started on first use.
pub fn shared_secure_zookeeper() -> &'static SecureZooKeeper {
    static SHARED: OnceLock<SecureZooKeeper> = OnceLock::new();
    SHARED.get_or_init(SecureZooKeeper::start)
}

/// Waits until `port` accepts connections (the secure port opens with the plain one, but
/// readiness is checked on the plain one).
fn wait_for_port(port: u16) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "the secure port {port} never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
