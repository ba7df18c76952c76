//! The `realtime.*` settings: the table that declares each of them once, and
//! the plain values the network side reads, made from it and handed over
//! whole by the main thread (at start and on SIGHUP).

use super::log::Level;
use std::path::PathBuf;
use std::time::Duration;

/// Every `realtime.*` setting, once. An entry is
/// `STATIC: kind = default, "realtime.name", context, flags, "short", "long"`,
/// with kind `string`, `secret[show_hook]` (hidden but from superusers),
/// `bool` or `int[min, max]`, and, for what the network side reads, either
/// `net field: Type = conversion` (a field of [`Settings`]) or `limit field:
/// Type = conversion` (of [`Limits`]), the conversion taking the raw value.
/// Its callback expands it: here into [`Settings`], [`Limits`] and their
/// defaults; in `pg::settings` into the statics, their registration and
/// `read()`.
macro_rules! settings_table {
    ($callback:ident) => {
        $callback! {
            DATABASE: string = Some(c"postgres"),
                c"realtime.database", Postmaster, NONE,
                c"Database the realtime worker connects to and serves.",
                c"The extension must be created in this database.";
            LISTEN_ADDRESSES: string = Some(c"127.0.0.1"),
                c"realtime.listen_addresses", Sighup, NONE,
                c"Addresses the realtime WebSocket server listens on.",
                c"Comma-separated IP addresses; * means every IPv4 and IPv6 address.",
                net listen_addresses: String = |v: Option<String>| v.unwrap_or_default();
            PORT: int[1, 65535] = 4000,
                c"realtime.port", Sighup, NONE,
                c"TCP port of the realtime WebSocket server.",
                c"",
                net port: u16 = |v: i32| v as u16;
            JWT_SECRET: secret[show_jwt_secret] = None,
                c"realtime.jwt_secret", Sighup, NONE,
                c"Secret that signs the HS256 JWTs clients present.",
                c"Changing it disconnects every socket. Shown to superusers only.",
                net jwt_secret: Option<String> = |v: Option<String>| v;
            PRIMARY_CONNINFO: secret[show_primary_conninfo] = None,
                c"realtime.primary_conninfo", Sighup, NONE,
                c"How a hot standby's worker connects to the primary to relay client broadcasts.",
                c"Empty: the host, port, user, password and ssl settings of primary_conninfo, and realtime.database. TLS as libpq reads sslmode. Shown to superusers only.";
            METRICS_TOKEN: secret[show_metrics_token] = None,
                c"realtime.metrics_token", Sighup, NONE,
                c"Bearer token that /metrics asks for; unset, /metrics answers 404.",
                c"Prometheus scrapes with `Authorization: Bearer <token>`. Shown to superusers only.",
                net metrics_token: Option<String> = |v: Option<String>| v;
            JWT_JWKS_URL: string = None,
                c"realtime.jwt_jwks_url", Sighup, NONE,
                c"URL of a JSON Web Key Set to fetch signing keys from, e.g. https://<project>.supabase.co/auth/v1/.well-known/jwks.json.",
                c"Fetched at start, every 10 minutes, and when a token names an unknown kid (at most every 5 s); the last good set is kept when a fetch fails. Beside realtime.jwt_jwks and realtime.jwt_secret.",
                net jwt_jwks_url: Option<String> = |v: Option<String>| v;
            API_KEYS: secret[show_api_keys] = None,
                c"realtime.api_keys", Sighup, NONE,
                c"Supabase's opaque API keys (sb_publishable_..., sb_secret_...) and the role each stands for.",
                c"A JSON object {\"sb_publishable_...\": \"anon\", \"sb_secret_...\": \"service_role\"}; a mapped key is accepted wherever a JWT is. Changing it disconnects every socket. Shown to superusers only.",
                net api_keys: Option<String> = |v: Option<String>| v;
            JWT_JWKS: secret[show_jwt_jwks] = None,
                c"realtime.jwt_jwks", Sighup, NONE,
                c"JSON Web Key Set for asymmetric JWTs (RS256, ES256, EdDSA) and oct keys.",
                c"A JSON object {\"keys\": [...]}; keys are picked by kid. Changing it disconnects every socket. Shown to superusers only.",
                net jwt_jwks: Option<String> = |v: Option<String>| v;
            JWT_CLAIM_VALIDATORS: string = None,
                c"realtime.jwt_claim_validators", Sighup, NONE,
                c"Claims every token must carry, as a JSON object, e.g. {\"iss\": \"https://example.supabase.co/auth/v1\"}.",
                c"Like Supabase's JWT_CLAIM_VALIDATORS: each claim must equal its value (an aud list must contain it). \
                  A token without one of them is refused. Changing it disconnects every socket.",
                net jwt_claim_validators: Option<String> = |v: Option<String>| v;
            LOG_LEVEL: string = Some(c"info"),
                c"realtime.log_level", Sighup, NONE,
                c"Which of the realtime worker's own lines reach the log: warning or info.",
                c"warning: limits tripped, refused sockets, failed checks; info adds what the worker does \
                  (listening, slow consumers cut off). Nothing is logged per message at either.";
            SSL: bool = false,
                c"realtime.ssl", Sighup, NONE,
                c"Serve wss:// and https:// with Postgres's own certificate (ssl_cert_file, ssl_key_file).",
                c"The files are read again on reload. Without a usable certificate, connections are refused, not served in the clear.";
            BUS: bool = false,
                c"realtime.bus", Sighup, NONE,
                c"On the primary: write decoded database broadcasts and published tables' changes into WAL for hot standbys.",
                c"Each is written once more, as a logical message, flushed per batch; every published table is decoded.";
            PRIVATE_ONLY: bool = false,
                c"realtime.private_only", Sighup, NONE,
                c"Refuse joins to public channels.",
                c"",
                net private_only: bool = |v: bool| v;
            /// In kB.
            MAX_PAYLOAD_SIZE: int[1, 1024 * 1024] = 3000,
                c"realtime.max_payload_size", Sighup, UNIT_KB,
                c"Largest broadcast payload accepted.",
                c"Larger client broadcasts are refused with payload_size_exceeded.",
                net max_payload_bytes: usize = |v: i32| v as usize * 1024;
            MAX_CHANNELS_PER_CLIENT: int[1, 100_000] = 100,
                c"realtime.max_channels_per_client", Sighup, NONE,
                c"How many channels one WebSocket may join.",
                c"",
                net max_channels_per_client: usize = |v: i32| v as usize;
            /// In ms.
            JOIN_ERROR_DELAY: int[0, 5000] = 1000,
                c"realtime.join_error_delay", Sighup, UNIT_MS,
                c"How long a refused join waits before its error reply.",
                c"Slows the endless rejoin loops of clients refused a private channel; keep it well under the clients' 10 s join timeout.",
                net join_error_delay: Duration = |v: i32| Duration::from_millis(v as u64);
            /// In ms.
            AUTHORIZATION_CACHE: int[0, 60_000] = 5000,
                c"realtime.authorization_cache", Sighup, UNIT_MS,
                c"How long a private join's read check is remembered.",
                c"Joins with the same role, claims and topic within this time reuse the answer instead of probing \
                  realtime.messages again. 0 probes every join.",
                net authorization_cache: Duration = |v: i32| Duration::from_millis(v as u64);
            /// In kB.
            MAX_RECORD_SIZE: int[1, 1024 * 1024] = 1024,
                c"realtime.max_record_size", Sighup, UNIT_KB,
                c"Largest postgres_changes record sent whole.",
                c"Larger records keep only values of 64 bytes or less and carry the error \"Error 413: Payload Too Large\".";
            /// In ms.
            RESTART_GRACE: int[0, 60_000] = 5000,
                c"realtime.restart_grace", Sighup, UNIT_MS,
                c"How long a starting worker holds database broadcasts for clients to rejoin.",
                c"Messages committed while the worker was down are delivered to the subscribers that rejoined within this time.",
                net restart_grace: Duration = |v: i32| Duration::from_millis(v as u64);
            /// In MB.
            MAX_SLOT_WAL: int[16, i32::MAX] = 1024,
                c"realtime.max_slot_wal", Sighup, UNIT_MB,
                c"Most WAL the worker's replication slot may hold back.",
                c"Past it the worker skips the slot ahead and logs what it skipped, rather than filling the disk.";
            /// In kB.
            MAX_MEMORY: int[16 * 1024, i32::MAX] = 256 * 1024,
                c"realtime.max_memory", Sighup, UNIT_KB,
                c"Most memory the realtime worker holds for messages.",
                c"Decoded messages, batches waiting for the network side and frames queued on sockets together. \
                  When it is full, decoding pauses (the replication slot keeps the rest) and a socket holding more than \
                  its share is closed.",
                net max_memory_bytes: usize = |v: i32| v as usize * 1024;
            /// In kB.
            STATS_MEMORY: int[64, 1024 * 1024] = 1024,
                c"realtime.stats_memory", Postmaster, UNIT_KB,
                c"Shared memory for realtime.stats, realtime.connections and realtime.channels.",
                c"Rows that do not fit are left out and counted (connections_left_out, channels_left_out). \
                  About 200 bytes per connection row. Needs a restart.";
            /// In ms.
            STATEMENT_TIMEOUT: int[1, i32::MAX] = 5000,
                c"realtime.statement_timeout", Sighup, UNIT_MS,
                c"Longest a query of the realtime worker may run.",
                c"Authorization probes, Postgres Changes checks, replay and maintenance each fail alone past it.";
            /// In ms.
            LOCK_TIMEOUT: int[1, i32::MAX] = 2000,
                c"realtime.lock_timeout", Sighup, UNIT_MS,
                c"Longest a query of the realtime worker may wait for a lock.",
                c"";
            ALLOWED_ROLES: string = None,
                c"realtime.allowed_roles", Sighup, NONE,
                c"Roles a client's token may name besides anon, authenticated and service_role.",
                c"Comma-separated. The worker's role realtime_worker is made a member of exactly these (and the three); \
                  a token naming any other role is refused. Superuser roles are never allowed.";
            /// In minutes, so it reads and writes as `3d`, `72h` or `4320min`.
            RETENTION: int[60, i32::MAX] = 3 * 24 * 60,
                c"realtime.retention", Suset, UNIT_MIN,
                c"How long stored broadcast messages are kept.",
                c"Day partitions of realtime.messages older than this are dropped by the cleanup job.";
            // Supabase's tenant limits. Rates are rolling averages over the last
            // minute in 5 s steps, as Supabase counts them.
            MAX_CONCURRENT_USERS: int[1, i32::MAX] = 200,
                c"realtime.max_concurrent_users", Sighup, NONE,
                c"How many sockets may have joined channels at once.",
                c"Past it, connections get 429 \"Too many connected users\" and joins ConnectionRateLimitReached.",
                limit max_concurrent_users: usize = |v: i32| v as usize;
            MAX_JOINS_PER_SECOND: int[1, i32::MAX] = 100,
                c"realtime.max_joins_per_second", Sighup, NONE,
                c"Joins per second one socket may make.",
                c"Past it the join is refused with ClientJoinRateLimitReached and the socket is closed.",
                limit max_joins_per_second: u32 = |v: i32| v as u32;
            MAX_EVENTS_PER_SECOND: int[1, i32::MAX] = 100,
                c"realtime.max_events_per_second", Sighup, NONE,
                c"Messages per second, per socket and in total.",
                c"Counts messages clients send, REST broadcasts and the deliveries they make. Past it a client's message \
                  closes its channel with \"Too many messages per second\" and REST answers 429.",
                limit max_events_per_second: u32 = |v: i32| v as u32;
            MAX_BYTES_PER_SECOND: int[1, i32::MAX] = 100_000,
                c"realtime.max_bytes_per_second", Sighup, NONE,
                c"Bytes per second one socket may send.",
                c"Past it a client's message closes its channel with \"Too many bytes per second\".",
                limit max_bytes_per_second: u32 = |v: i32| v as u32;
            MAX_PRESENCE_EVENTS_PER_SECOND: int[1, i32::MAX] = 1000,
                c"realtime.max_presence_events_per_second", Sighup, NONE,
                c"Presence events per second in total.",
                c"Counts tracks, presence states sent at joins and presence diffs delivered. Past it a track or join \
                  closes its channel with \"Too many presence messages per second\".",
                limit max_presence_events_per_second: u32 = |v: i32| v as u32;
            MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW: int[1, i32::MAX] = 5,
                c"realtime.max_client_presence_events_per_window", Sighup, NONE,
                c"Presence messages one channel may send per realtime.client_presence_window.",
                c"Past it the channel is closed with \"Client presence rate limit exceeded\".",
                limit max_client_presence_events_per_window: u32 = |v: i32| v as u32;
            /// In ms.
            CLIENT_PRESENCE_WINDOW: int[1, i32::MAX] = 30_000,
                c"realtime.client_presence_window", Sighup, UNIT_MS,
                c"The window of realtime.max_client_presence_events_per_window.",
                c"",
                limit client_presence_window: Duration = |v: i32| Duration::from_millis(v as u64);
            MAX_POSTGRES_CHANGES_PER_JOIN: int[1, i32::MAX] = 100,
                c"realtime.max_postgres_changes_per_join", Sighup, NONE,
                c"postgres_changes bindings one join may ask for.",
                c"",
                limit max_postgres_changes_per_join: usize = |v: i32| v as usize;
        }
    };
}
pub(crate) use settings_table;

/// A setting's raw default, as the conversions take it.
macro_rules! raw_default {
    (string, $default:expr) => {{
        let default: Option<&std::ffi::CStr> = $default;
        default.map(|c| c.to_string_lossy().into_owned())
    }};
    (secret, $default:expr) => {
        raw_default!(string, $default)
    };
    ($kind:ident, $default:expr) => {
        $default
    };
}

macro_rules! settings_struct {
    ($(
        $(#[$meta:meta])*
        $setting:ident: $kind:ident $([$($arg:tt)*])? = $default:expr,
            $name:expr, $context:ident, $flags:ident, $short:expr, $long:expr
            $(, net $field:ident: $type:ty = $conv:expr)?
            $(, limit $limit:ident: $limit_type:ty = $limit_conv:expr)?;
    )*) => {
        /// What the network side reads of the settings: a field for each
        /// entry of the table it reads, and those made of several settings
        /// or of Postgres's own.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $($(pub $field: $type,)?)*
            /// The roles a token may name: anon, authenticated, service_role and the
            /// existing roles of `realtime.allowed_roles` (as the worker made them).
            pub allowed_roles: Vec<String>,
            pub limits: Limits,
            /// With `realtime.ssl` on: Postgres's own certificate and key files.
            pub tls: Option<TlsFiles>,
            /// `realtime.log_level`: the network side's lines kept.
            pub log_level: Level,
            /// This node on the bus (`realtime.bus`); None when it is off.
            pub bus: Option<BusNode>,
        }

        /// Supabase's tenant limits, named and defaulted as there.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Limits {
            $($(pub $limit: $limit_type,)?)*
        }

        /// The settings' defaults.
        impl Default for Settings {
            fn default() -> Self {
                Settings {
                    $($($field: ($conv)(raw_default!($kind, $default)),)?)*
                    allowed_roles: ["anon", "authenticated", "service_role"].map(String::from).into(),
                    limits: Limits::default(),
                    tls: None,
                    log_level: Level::Info,
                    bus: None,
                }
            }
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $($($limit: ($limit_conv)(raw_default!($kind, $default)),)?)* }
            }
        }
    };
}

settings_table!(settings_struct);

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

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_defaults_come_from_the_table() {
        let d = super::Settings::default();
        assert_eq!((d.listen_addresses.as_str(), d.port), ("127.0.0.1", 4000));
        assert_eq!(d.max_payload_bytes, 3000 * 1024, "realtime.max_payload_size is 3000 kB");
        assert_eq!(d.max_memory_bytes, 256 * 1024 * 1024);
        assert_eq!(d.join_error_delay, std::time::Duration::from_secs(1));
        assert_eq!((d.jwt_secret, d.private_only), (None, false));
        assert_eq!(d.limits.max_concurrent_users, 200);
        assert_eq!(d.limits.client_presence_window, std::time::Duration::from_secs(30));
    }

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
