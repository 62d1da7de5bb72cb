//! TLS built in: the server's certificate chain and key, read from PEM
//! files, as the rustls configuration the listener terminates TLS with.
//! Only HTTP/1.1 is offered (ALPN), as over plain TCP.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the certificate and key together.
    #[error("certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server configuration for the chain in `cert` (leaf first) and the
/// private key in `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem = |path: &Path, why: String| TlsError::Pem {
        path: path.display().to_string(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
