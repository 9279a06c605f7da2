//! TLS set-up shared by every `rediss://` client.

/// Makes `ring` rustls's process-wide crypto provider unless the application chose one.
pub(crate) fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
