//! The TLS files of a backend URL, named the same for every backend: `?ca=`, `?cert=`,
//! `?key=` and `?domain=`.

use std::path::{Path, PathBuf};

use crate::backend_url::BackendUrl;
use crate::error::{LockError, Result};

/// The PEM files (and server name) of a TLS connection, as every backend's URL gives them.
///
/// ```
/// use dlock_core::support::TlsFiles;
/// use dlock_core::BackendUrl;
///
/// let url = BackendUrl::parse("etcds://h:2379?ca=/etc/ca.pem&prefix=app", 2379).unwrap();
/// let files = TlsFiles::from_url(&url, true, "etcds://").unwrap().unwrap();
/// assert_eq!(files.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
///
/// // On a plain-text URL the same parameter is a mistake, said so.
/// let plain = BackendUrl::parse("etcd://h:2379?ca=/etc/ca.pem", 2379).unwrap();
/// assert!(TlsFiles::from_url(&plain, false, "etcds://").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate authority that signed the servers' certificates (`?ca=`).
    pub ca: Option<PathBuf>,
    /// A client certificate, for servers that check clients (`?cert=`; needs `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (`?key=`).
    pub key: Option<PathBuf>,
    /// The name the servers' certificates must carry, if not the URL's host (`?domain=`);
    /// a backend whose client cannot check another name refuses it.
    pub domain: Option<String>,
}

impl TlsFiles {
    /// The URL parameters a [`TlsFiles`] is read from: a backend's own parameter loop skips
    /// them.
    pub const PARAMS: &'static [&'static str] = &["ca", "cert", "key", "domain"];

    /// The TLS files of `url`: `None` for a plain-text URL (`tls` false), where any of
    /// [`TlsFiles::PARAMS`] is [`LockError::InvalidUrl`] pointing to `tls_scheme`; a client
    /// certificate without its key (or the reverse) is `InvalidUrl` too.
    pub fn from_url(url: &BackendUrl, tls: bool, tls_scheme: &str) -> Result<Option<TlsFiles>> {
        let mut files = TlsFiles::default();
        for (name, value) in url.backend_params() {
            if !Self::PARAMS.contains(&name) {
                continue;
            }
            if !tls {
                return Err(url.invalid(format!("`{name}` needs TLS: use {tls_scheme}")));
            }
            match name {
                "ca" => files.ca = Some(value.into()),
                "cert" => files.cert = Some(value.into()),
                "key" => files.key = Some(value.into()),
                _ => files.domain = Some(value.to_owned()),
            }
        }
        if files.cert.is_some() != files.key.is_some() {
            return Err(url.invalid("a client certificate needs both `cert` and `key`"));
        }
        Ok(tls.then_some(files))
    }

    /// These files, for a `backend` whose client checks each server's certificate against
    /// the host it connects to and cannot be given another name: `?domain=` is
    /// [`LockError::InvalidUrl`] there.
    pub fn without_domain(self, url: &BackendUrl, backend: &str) -> Result<TlsFiles> {
        if self.domain.is_some() {
            return Err(url.invalid(format!(
                "`domain` is not supported for {backend}: each server's certificate must name \
                 the host it is reached by"
            )));
        }
        Ok(self)
    }

    /// The contents of the file at `path` (`what` it is, for the message), or
    /// [`LockError::InvalidOptions`] naming it.
    pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|error| {
            LockError::invalid_options(format!(
                "cannot read the TLS {what} {}: {error}",
                path.display()
            ))
        })
    }
}
