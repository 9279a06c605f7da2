//! TLS settings for `etcds://` clients, read from PEM files.

use dlock_core::LockError;
use etcd_client::{Certificate, Identity, TlsOptions};

use crate::config::TlsFiles;

/// The client TLS configuration `files` describe.
pub(crate) fn client_config(files: &TlsFiles) -> Result<TlsOptions, LockError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(Certificate::from_pem(TlsFiles::read(ca, "CA certificate")?));
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        tls = tls.identity(Identity::from_pem(
            TlsFiles::read(cert, "client certificate")?,
            TlsFiles::read(key, "client key")?,
        ));
    }
    if let Some(domain) = &files.domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(tls)
}
