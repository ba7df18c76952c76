//! What the network side needs to know, built from the `realtime.*` settings
//! on the main thread and handed over whole.

use crate::auth::jwt::Verifier;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// The secret and key set, to tell whether a reload changed them.
    pub jwt_settings: (Option<String>, Option<String>),
    pub verifier: Arc<Verifier>,
    pub private_only: bool,
    pub max_payload_bytes: usize,
    pub max_channels_per_client: usize,
    pub join_error_delay: Duration,
    /// How long a starting worker holds database broadcasts (see `realtime.restart_grace`).
    pub restart_grace: Duration,
    /// Problems found while building it, for the main thread to log.
    pub warnings: Vec<String>,
}

impl ServerConfig {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        listen_addresses: &str,
        port: u16,
        jwt_secret: Option<String>,
        jwt_jwks: Option<String>,
        private_only: bool,
        max_payload_bytes: usize,
        max_channels_per_client: usize,
        join_error_delay: Duration,
        restart_grace: Duration,
    ) -> ServerConfig {
        let mut warnings = Vec::new();
        let listen = parse_listen(listen_addresses, port, &mut warnings);
        let verifier = Verifier::new(jwt_secret.as_deref(), jwt_jwks.as_deref()).unwrap_or_else(|e| {
            warnings.push(format!("realtime.jwt_jwks is ignored: {e}"));
            Verifier::new(jwt_secret.as_deref(), None).expect("a secret alone always makes a verifier")
        });
        if jwt_secret.is_none() && jwt_jwks.is_none() {
            warnings.push("neither realtime.jwt_secret nor realtime.jwt_jwks is set: every token is refused".into());
        }
        ServerConfig {
            listen,
            jwt_settings: (jwt_secret, jwt_jwks),
            verifier: Arc::new(verifier),
            private_only,
            max_payload_bytes,
            max_channels_per_client,
            join_error_delay,
            restart_grace,
            warnings,
        }
    }

    pub fn listen_description(&self) -> String {
        let addrs: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        addrs.join(", ")
    }
}

/// `listen_addresses` as Postgres spells it: comma-separated addresses, `*`
/// for every address, `localhost` for loopback.
fn parse_listen(spec: &str, port: u16, warnings: &mut Vec<String>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ips: Vec<IpAddr> = match item {
            "*" => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
            "localhost" => vec![Ipv4Addr::LOCALHOST.into()],
            other => match other.parse() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    warnings.push(format!("realtime.listen_addresses: \"{other}\" is not an IP address; skipped"));
                    continue;
                }
            },
        };
        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_like_postgres() {
        let mut w = Vec::new();
        assert_eq!(parse_listen("127.0.0.1", 4000, &mut w), vec!["127.0.0.1:4000".parse().unwrap()]);
        assert_eq!(parse_listen("*", 1, &mut w).len(), 2);
        assert_eq!(
            parse_listen("localhost, ::1", 5, &mut w),
            vec!["127.0.0.1:5".parse().unwrap(), "[::1]:5".parse().unwrap()]
        );
        assert!(w.is_empty());
        assert!(parse_listen("nonsense", 5, &mut w).is_empty());
        assert_eq!(w.len(), 1);
    }
}
