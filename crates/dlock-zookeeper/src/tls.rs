//! TLS settings for `zookeepers://` clients, read from PEM files.

use dlock_core::LockError;
use zookeeper_client::TlsOptions;

use crate::config::TlsFiles;

/// The client TLS options `files` describe. A file that cannot be read or holds no
/// certificate or key is [`LockError::InvalidOptions`], naming the file.
pub(crate) fn client_options(files: &TlsFiles) -> Result<TlsOptions, LockError> {
    // `zookeeper-client` builds its rustls configuration with the process's default crypto
    // provider; with both of rustls's providers compiled in there is none until one is
    // installed (the Redis backend installs the same one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = TlsOptions::new();
    if let Some(ca) = &files.ca {
        let pem = read(ca, "CA certificate")?;
        options = options
            .with_pem_ca(&pem)
            .map_err(|error| bad_file(ca, "CA certificate", error))?;
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        let cert_pem = read(cert, "client certificate")?;
        let key_pem = read(key, "client key")?;
        options = options
            .with_pem_identity(&cert_pem, &key_pem)
            .map_err(|error| bad_file(cert, "client certificate or key", error))?;
    }
    Ok(options)
}

fn read(path: &std::path::Path, what: &str) -> Result<String, LockError> {
    String::from_utf8(TlsFiles::read(path, what)?).map_err(|error| bad_file(path, what, error))
}

fn bad_file(path: &std::path::Path, what: &str, error: impl std::fmt::Display) -> LockError {
    LockError::invalid_options(format!(
        "cannot use the TLS {what} {}: {error}",
        path.display()
    ))
}
