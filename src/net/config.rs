//! What the network side needs to know, built from the `realtime.*` settings
//! on the main thread and handed over whole.

use super::tls::{self, Tls};
use crate::api_keys::ApiKeys;
use crate::bridge::Settings;
use crate::jwt::{ClaimValidators, FetchedKeys, Verifier};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

#[derive(Clone)]
pub struct ServerConfig {
    /// The settings as read; what follows is made from them.
    pub settings: Settings,
    pub listen: Vec<SocketAddr>,
    pub verifier: Arc<Verifier>,
    pub tls: Tls,
    /// `realtime.jwt_jwks_url`, when set.
    pub jwks_url: Option<String>,
    /// Problems found while building it, for the main thread to log.
    pub warnings: Vec<String>,
}

impl ServerConfig {
    /// The network side's view of the settings; `warnings` says what is wrong with them.
    /// `fetched`: the keys from `realtime.jwt_jwks_url`, which outlive it.
    pub fn new(settings: &Settings, fetched: &Arc<FetchedKeys>) -> ServerConfig {
        let mut warnings = Vec::new();
        let listen = parse_listen(&settings.listen_addresses, settings.port, &mut warnings);
        let (secret, jwks) = (settings.jwt_secret.as_deref(), settings.jwt_jwks.as_deref());
        let verifier = Verifier::new(secret, jwks).unwrap_or_else(|e| {
            warnings.push(format!("realtime.jwt_jwks is ignored: {e}"));
            Verifier::new(secret, None).expect("a secret alone always makes a verifier")
        });
        // A token is checked for the claims the settings name, and for a role
        // realtime_worker may assume; settings that cannot be read refuse every token.
        let validators = ClaimValidators::parse(settings.jwt_claim_validators.as_deref().unwrap_or_default());
        let verifier = match validators {
            Ok(validators) => {
                verifier.with_claim_validators(validators).with_allowed_roles(settings.allowed_roles.clone())
            }
            Err(e) => {
                warnings.push(format!("realtime.jwt_claim_validators: {e}; every token is refused until it is fixed"));
                verifier.with_allowed_roles(Vec::new())
            }
        };
        let verifier = verifier.with_fetched(fetched.clone());
        let verifier = match ApiKeys::parse(settings.api_keys.as_deref().unwrap_or_default()) {
            Ok(keys) => verifier.with_api_keys(keys),
            Err(e) => {
                warnings.push(format!("realtime.api_keys is ignored: {e}"));
                verifier
            }
        };
        let tls = match &settings.tls {
            None => Tls::Off,
            Some(files) => tls::server_config(files).map(Tls::On).unwrap_or_else(|e| {
                warnings.push(format!("realtime.ssl is on but {e}"));
                Tls::Unavailable
            }),
        };
        let jwks_url = settings.jwt_jwks_url.clone().filter(|u| !u.trim().is_empty());
        if secret.is_none() && jwks.is_none() && jwks_url.is_none() {
            warnings.push(
                "none of realtime.jwt_secret, realtime.jwt_jwks and realtime.jwt_jwks_url is set: every token is refused"
                    .into(),
            );
        }
        ServerConfig { listen, verifier: Arc::new(verifier), tls, jwks_url, settings: settings.clone(), warnings }
    }

    pub fn listen_description(&self) -> String {
        let addrs: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let scheme = match self.tls {
            Tls::Off => "ws://",
            Tls::On(_) => "wss://",
            Tls::Unavailable => "wss:// (no usable certificate: refusing connections)",
        };
        format!("{} ({scheme})", addrs.join(", "))
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
