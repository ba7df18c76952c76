//! `realtime.ssl`: wss:// and https:// with the certificate and key Postgres
//! itself uses (`ssl_cert_file`, `ssl_key_file`), through rustls.

use crate::bridge::settings::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// How the listeners treat new connections.
#[derive(Clone, Default)]
pub enum Tls {
    #[default]
    Off,
    On(Arc<rustls::ServerConfig>),
    /// `realtime.ssl` is on but no certificate could be loaded: connections
    /// are refused rather than served in the clear.
    Unavailable,
}

/// Every certificate in a PEM file.
pub fn pem_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// A rustls configuration from PEM files, or why there is none.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let cert_path = files.cert_file.display();
    let certs = pem_certificates(&files.cert_file)
        .map_err(|e| format!("cannot read certificates from ssl_cert_file \"{cert_path}\": {e}"))?;
    if certs.is_empty() {
        return Err(format!("ssl_cert_file \"{cert_path}\" holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("cannot read a private key from ssl_key_file \"{}\": {e}", files.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("ssl_cert_file and ssl_key_file do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_missing_file_is_named() {
        let files = TlsFiles { cert_file: PathBuf::from("/nonexistent/server.crt"), key_file: PathBuf::from("/x.key") };
        let e = server_config(&files).err().unwrap();
        assert!(e.contains("ssl_cert_file \"/nonexistent/server.crt\""), "{e}");
    }
}
