//! Certificates for the TLS tests of every backend, made with the `openssl` command.

use std::path::Path;
use std::process::Command;

/// Makes in `dir`, with the `openssl` command (P-256 keys, valid one day): a CA
/// (`ca.pem`, `ca.key`), a server certificate it signed for 127.0.0.1 and `localhost`
/// (`server.pem`, `server.key`), a client certificate it signed (`client.pem`, `client.key`,
/// subject `CN=dlock-client`), and an unrelated CA (`other-ca.pem`) for the tests of a wrong
/// CA.
pub fn make_test_certificates(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    // The server checks a client's certificate against the address it connects from.
    std::fs::write(
        dir.join("client.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=clientAuth\n",
    )
    .expect("extensions file");
    let ca = |name: &str, subject: &str| -> Vec<String> {
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-subj",
            subject,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let signed = |name: &str, subject: &str| -> [Vec<String>; 2] {
        [
            [
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ]
            .map(str::to_owned)
            .to_vec(),
            [
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ]
            .map(str::to_owned)
            .to_vec(),
        ]
    };
    let mut steps = vec![
        ca("ca", "/CN=dlock test CA"),
        ca("other-ca", "/CN=another test CA"),
    ];
    steps.extend(signed("server", "/CN=127.0.0.1"));
    steps.extend(signed("client", "/CN=dlock-client"));
    for args in steps {
        let status = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl command (Debian package openssl)");
        assert!(status.success(), "openssl {args:?} failed");
    }
}
