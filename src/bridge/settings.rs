//! The `realtime.*` settings as plain values, read on the main thread (at
//! start and on SIGHUP) and handed to the network side whole.

use super::log::Level;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen_addresses: String,
    pub port: u16,
    pub jwt_secret: Option<String>,
    pub jwt_jwks: Option<String>,
    /// `realtime.jwt_claim_validators`: a JSON object of claims tokens must carry.
    pub jwt_claim_validators: Option<String>,
    /// `realtime.api_keys`: a JSON object of opaque `sb_` key → role.
    pub api_keys: Option<String>,
    /// `realtime.jwt_jwks_url`: where to fetch a key set from.
    pub jwt_jwks_url: Option<String>,
    pub private_only: bool,
    pub max_payload_bytes: usize,
    pub max_channels_per_client: usize,
    pub join_error_delay: Duration,
    /// How long a private join's read check is remembered (0: not at all).
    pub authorization_cache: Duration,
    /// How long a starting worker holds database broadcasts for clients to rejoin.
    pub restart_grace: Duration,
    /// `realtime.max_memory`: everything the worker holds, in bytes.
    pub max_memory_bytes: usize,
    /// The roles a token may name: anon, authenticated, service_role and the
    /// existing roles of `realtime.allowed_roles` (as the worker made them).
    pub allowed_roles: Vec<String>,
    pub limits: Limits,
    /// `realtime.metrics_token`: the bearer token `/metrics` asks for (unset: no `/metrics`).
    pub metrics_token: Option<String>,
    /// With `realtime.ssl` on: Postgres's own certificate and key files.
    pub tls: Option<TlsFiles>,
    /// `realtime.log_level`: the network side's lines kept.
    pub log_level: Level,
    /// This node on the bus (`realtime.bus`); None when it is off.
    pub bus: Option<BusNode>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BusNode {
    /// This worker's id in the client broadcasts it relays.
    pub origin: String,
    /// On a hot standby: how to reach the primary, which writes relayed
    /// client broadcasts to the bus.
    pub primary_conninfo: Option<String>,
}

/// The connection string a standby's worker uses for the primary: the
/// host, port, user, password and TLS settings of Postgres's
/// `primary_conninfo` (the keyword/value form `pg_basebackup -R` writes),
/// and the worker's database. Off loopback, an `sslmode` that would accept
/// a server it cannot verify (none, `allow`, or the `prefer` that
/// `pg_basebackup -R` writes) becomes `verify-full`: the relay carries
/// clients' claims and broadcasts. An explicit `disable` or `require` stays.
pub fn relay_conninfo(primary_conninfo: &str, database: &str) -> String {
    const KEPT: [&str; 9] =
        ["host", "hostaddr", "port", "user", "password", "sslmode", "sslrootcert", "sslcert", "sslkey"];
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut pairs: Vec<(String, String)> =
        conninfo_pairs(primary_conninfo).into_iter().filter(|(k, _)| KEPT.contains(&k.as_str())).collect();
    let value = |pairs: &[(String, String)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let host = value(&pairs, "hostaddr").or_else(|| value(&pairs, "host")).unwrap_or_default();
    let unverified = matches!(value(&pairs, "sslmode").as_deref(), None | Some("allow" | "prefer"));
    if unverified && !is_loopback(&host) {
        pairs.retain(|(k, _)| k != "sslmode");
        pairs.push(("sslmode".into(), "verify-full".into()));
    }
    let mut kept: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    kept.push(format!("dbname={}", quote(database)));
    kept.join(" ")
}

/// A host libpq reaches without leaving the machine: none (the default
/// socket), a socket directory, `localhost`, or a loopback address (every
/// host of a comma-separated list must be).
fn is_loopback(hosts: &str) -> bool {
    hosts.split(',').map(str::trim).all(|host| {
        host.is_empty()
            || host.starts_with('/')
            || host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// `key=value` pairs of a libpq connection string; values may be quoted
/// with `'`, and `\` escapes within them.
pub fn conninfo_pairs(conninfo: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|&c| c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_conninfo_keeps_where_and_who_from_primary_conninfo() {
        let written_by_basebackup = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
            host=127.0.0.1 port=54410 sslmode=prefer sslcompression=0 target_session_attrs=any";
        assert_eq!(
            relay_conninfo(written_by_basebackup, "postgres"),
            "user='postgres' host='127.0.0.1' port='54410' sslmode='prefer' dbname='postgres'"
        );
        assert_eq!(
            relay_conninfo(r"host = db password='it''s \'a b\'' ", "my db"),
            r"host='db' password='it' sslmode='verify-full' dbname='my db'",
            "a malformed pair ends the list"
        );
        assert_eq!(relay_conninfo(r"password='a \'b\' c' port=5", "d"), r"password='a \'b\' c' port='5' dbname='d'");
        assert_eq!(relay_conninfo("", "d"), "dbname='d'");
    }

    #[test]
    fn off_loopback_the_relay_verifies_the_primary_unless_told_otherwise() {
        let off = "host=db.internal port=5432 user=realtime_relay sslmode=prefer";
        assert_eq!(
            relay_conninfo(off, "d"),
            "host='db.internal' port='5432' user='realtime_relay' sslmode='verify-full' dbname='d'"
        );
        assert!(relay_conninfo("host=10.0.0.5", "d").contains("sslmode='verify-full'"));
        assert!(relay_conninfo("host=127.0.0.1,db.internal sslmode=allow", "d").contains("sslmode='verify-full'"));
        for kept in ["sslmode=disable", "sslmode=require", "sslmode=verify-ca"] {
            let mode = kept.trim_start_matches("sslmode=");
            assert!(relay_conninfo(&format!("host=db.internal {kept}"), "d").contains(&format!("sslmode='{mode}'")));
        }
        for local in ["host=127.0.0.1 sslmode=prefer", "host=localhost", "host=/var/run/postgresql", "host=::1", ""] {
            assert!(!relay_conninfo(local, "d").contains("verify-full"), "{local}");
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Supabase's tenant limits, named and defaulted as there.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Sockets with a joined channel.
    pub max_concurrent_users: usize,
    /// Joins per second, per socket (rolling average).
    pub max_joins_per_second: u32,
    /// Messages per second, per socket and in total (rolling averages).
    pub max_events_per_second: u32,
    /// Bytes a socket sends per second (rolling average).
    pub max_bytes_per_second: u32,
    /// Presence events per second in total (rolling average).
    pub max_presence_events_per_second: u32,
    /// A client's presence messages per `client_presence_window`.
    pub max_client_presence_events_per_window: u32,
    pub client_presence_window: Duration,
    /// `postgres_changes` bindings one join may ask for.
    pub max_postgres_changes_per_join: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_users: 200,
            max_joins_per_second: 100,
            max_events_per_second: 100,
            max_bytes_per_second: 100_000,
            max_presence_events_per_second: 1000,
            max_client_presence_events_per_window: 5,
            client_presence_window: Duration::from_secs(30),
            max_postgres_changes_per_join: 100,
        }
    }
}

impl Settings {
    /// A change that needs the listening sockets bound again.
    pub fn listen_changed(&self, other: &Settings) -> bool {
        (&self.listen_addresses, self.port) != (&other.listen_addresses, other.port)
    }

    /// A change that invalidates every token already accepted.
    pub fn jwt_changed(&self, other: &Settings) -> bool {
        (&self.jwt_secret, &self.jwt_jwks, &self.jwt_claim_validators, &self.allowed_roles, &self.api_keys)
            != (&other.jwt_secret, &other.jwt_jwks, &other.jwt_claim_validators, &other.allowed_roles, &other.api_keys)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bus: None,
            listen_addresses: "127.0.0.1".into(),
            port: 4000,
            jwt_secret: None,
            jwt_jwks: None,
            jwt_claim_validators: None,
            jwt_jwks_url: None,
            api_keys: None,
            private_only: false,
            max_payload_bytes: 3000 * 1024,
            max_channels_per_client: 100,
            join_error_delay: Duration::from_secs(1),
            authorization_cache: Duration::from_secs(5),
            restart_grace: Duration::from_secs(5),
            max_memory_bytes: 256 * 1024 * 1024,
            allowed_roles: ["anon", "authenticated", "service_role"].map(String::from).into(),
            limits: Limits::default(),
            metrics_token: None,
            tls: None,
            log_level: Level::Info,
        }
    }
}
