//! TLS for a standby's connection to the primary (`realtime.primary_conninfo`),
//! as libpq reads the same connection string: `sslmode` (`disable`, `allow`,
//! `prefer` — the default —, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert`, and `sslcert` / `sslkey` for a client certificate.
//! `prefer` and `require` encrypt without checking the server, unless a
//! root certificate is named, as in libpq; the `verify-` modes check the
//! chain against `sslrootcert` (by default `~/.postgresql/root.crt`), and
//! `verify-full` the host name too.

use super::tls::pem_certificates;
use crate::bridge::settings::conninfo_pairs;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's keys that tokio-postgres does not know: read here, or (those
/// about compression, protocol bounds, Kerberos, services and password
/// files) not used by the worker.
const LIBPQ_ONLY: [&str; 13] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "passfile",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "service",
];
/// Checks libpq would make that this connection does not: refused rather
/// than skipped, so a revoked certificate is never silently accepted.
const UNSUPPORTED: [&str; 3] = ["sslcrl", "sslcrldir", "requirepeer"];

/// What the worker connects with.
pub struct Connect {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// Reads a connection string; an error names what is wrong with it.
pub fn connect(conninfo: &str) -> Result<Connect, String> {
    let pairs = conninfo_pairs(conninfo);
    if let Some((key, _)) = pairs.iter().find(|(k, _)| UNSUPPORTED.contains(&k.as_str())) {
        return Err(format!("realtime.primary_conninfo: {key} is not supported for this connection"));
    }
    let get = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let rest: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| !LIBPQ_ONLY.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    let mut config: tokio_postgres::Config =
        rest.join(" ").parse().map_err(|e| format!("realtime.primary_conninfo: {e}"))?;
    if config.get_application_name().is_none() {
        config.application_name("realtime bus relay");
    }
    let mode = get("sslmode").unwrap_or("prefer");
    let named_root = get("sslrootcert").map(PathBuf::from);
    let check = match mode {
        "disable" => Check::Nothing,
        "allow" | "prefer" | "require" => named_root.map_or(Check::Nothing, Check::Chain),
        "verify-ca" => Check::Chain(named_root.unwrap_or_else(default_root)),
        "verify-full" => Check::ChainAndName(named_root.unwrap_or_else(default_root)),
        other => return Err(format!("realtime.primary_conninfo: invalid sslmode \"{other}\"")),
    };
    config.ssl_mode(match mode {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        _ => SslMode::Require,
    });
    let client_cert = match (get("sslcert"), get("sslkey")) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        _ => return Err("realtime.primary_conninfo: sslcert and sslkey go together".into()),
    };
    Ok(Connect { config, tls: MakeRustlsConnect::new(client_config(check, client_cert)?) })
}

/// libpq's default root certificate file, for the user the server runs as.
fn default_root() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".postgresql/root.crt")
}

enum Check {
    Nothing,
    Chain(PathBuf),
    ChainAndName(PathBuf),
}

fn client_config(check: Check, client_cert: Option<(PathBuf, PathBuf)>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &check {
        Check::Nothing => Arc::new(Lenient { chain: None, provider: provider.clone() }),
        Check::Chain(root) | Check::ChainAndName(root) => {
            let mut roots = RootCertStore::empty();
            let certs = pem_certificates(root)
                .map_err(|e| format!("cannot read root certificates from \"{}\": {e}", root.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("\"{}\" holds no usable root certificate", root.display()));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            match check {
                Check::ChainAndName(_) => webpki,
                _ => Arc::new(Lenient { chain: Some(webpki), provider: provider.clone() }),
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain =
                pem_certificates(&cert).map_err(|e| format!("cannot read sslcert \"{}\": {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| format!("cannot read sslkey \"{}\": {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert and sslkey: {e}"))
        }
    }
}

/// The lenient `sslmode`s: `prefer` and `require` check nothing of the
/// server (no `chain`); `verify-ca` checks the chain but not the host name.
/// Handshake signatures are always checked, so the handshake is what it
/// claims.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            checked => checked,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(conninfo: &str) -> SslMode {
        connect(conninfo).map(|c| c.config.get_ssl_mode()).unwrap()
    }

    #[test]
    fn sslmode_reads_as_libpq_reads_it() {
        assert_eq!(mode("host=h"), SslMode::Prefer, "libpq's default");
        assert_eq!(mode("host=h sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("host=h sslmode=allow"), SslMode::Prefer);
        assert_eq!(mode("host=h sslmode=require"), SslMode::Require);
        let e = connect("host=h sslmode=sometimes").err().unwrap();
        assert!(e.contains("invalid sslmode \"sometimes\""), "{e}");
    }

    #[test]
    fn libpq_only_keys_are_read_here_and_the_rest_reaches_tokio_postgres() {
        let c = connect("host=h port=5 user=u sslmode=prefer sslcompression=0 passfile=/p gssencmode=disable").unwrap();
        assert_eq!(c.config.get_ports(), [5]);
        assert_eq!(c.config.get_user(), Some("u"));
        assert_eq!(c.config.get_application_name(), Some("realtime bus relay"));
        let named = connect("host=h application_name=mine").unwrap();
        assert_eq!(named.config.get_application_name(), Some("mine"));
        assert!(connect("host=h nonsense=1").err().unwrap().contains("realtime.primary_conninfo"));
    }

    #[test]
    fn verify_modes_need_a_readable_root_certificate() {
        let e = connect("host=h sslmode=verify-full sslrootcert=/nonexistent/root.crt").err().unwrap();
        assert!(e.contains("\"/nonexistent/root.crt\""), "{e}");
        let e = connect("host=h sslmode=require sslrootcert=/nonexistent/root.crt").err().unwrap();
        assert!(e.contains("/nonexistent/root.crt"), "a named root is used under require too: {e}");
        let e = connect("host=h sslcert=/c.crt").err().unwrap();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
        let e = connect("host=h sslmode=verify-full sslcrl=/crl.pem").err().unwrap();
        assert!(e.contains("sslcrl is not supported"), "{e}");
    }
}
