//! The one TLS crypto provider of the process: ring.
//!
//! reqwest 0.12 (vendor APIs, object_store) picks ring itself. deltalake's kernel engine
//! builds reqwest 0.13 clients that take the process default, so the patched engine (see
//! `vendor/README.md`) compiles rustls without aws-lc-rs and ring is installed here, by
//! `Lake::open_with`: the engine is reached only through a lake.

/// Makes ring the process-wide rustls provider. Idempotent: a provider already installed
/// (by an earlier call or by an embedding program) stays.
pub fn install_ring() {
    // Err only means a default is already set, which is all this asks for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn ring_is_the_process_default_after_install() {
        super::install_ring();
        super::install_ring();
        let provider = rustls::crypto::CryptoProvider::get_default();
        assert!(
            provider.is_some(),
            "no process default provider after install_ring"
        );
        // ring's cipher suites are the ones installed.
        let ring = rustls::crypto::ring::default_provider();
        let got: Vec<_> = provider
            .unwrap()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let want: Vec<_> = ring.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(got, want);
    }
}
