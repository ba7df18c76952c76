//! The `realtime.*` settings. Defined when the library loads, which with
//! `shared_preload_libraries = 'realtime'` is in every backend and the worker.

use crate::bridge::log::Level;
use crate::bridge::settings::{BusNode, TlsFiles, relay_conninfo};
use crate::bridge::{Limits, Settings};
use pgrx::pg_guard;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, pg_sys};
use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Declares the settings, each once: its static, its registration (in
/// [`define`]) and, for a secret, its show hook. An entry is
/// `NAME: kind = default, "realtime.name", context, flags, "short", "long";`
/// with kind `string`, `bool`, `int[min, max]` or `secret[show_hook]`.
macro_rules! settings {
    ($(
        $(#[$meta:meta])*
        $vis:vis $setting:ident: $kind:ident $([$($arg:tt)*])? = $default:expr,
            $name:expr, $context:expr, $flags:expr, $short:expr, $long:expr;
    )*) => {
        $(
            $(#[$meta])*
            $vis static $setting: setting_type!($kind) = <setting_type!($kind)>::new($default);
            show_hook!($kind $([$($arg)*])?, $setting);
        )*

        /// Registers every setting; called from `_PG_init`.
        pub fn define() {
            $( register!($kind $([$($arg)*])?, $name, $short, $long, &$setting, $context, $flags); )*
        }
    };
}

macro_rules! setting_type {
    (string) => { GucSetting<Option<CString>> };
    (secret) => { GucSetting<Option<CString>> };
    (bool) => { GucSetting<bool> };
    (int) => { GucSetting<i32> };
}

macro_rules! show_hook {
    (secret[$hook:ident], $setting:ident) => {
        #[pg_guard]
        unsafe extern "C-unwind" fn $hook() -> *const c_char {
            show_secret(&$setting)
        }
    };
    ($($other:tt)*) => {};
}

macro_rules! register {
    (string, $name:expr, $short:expr, $long:expr, $setting:expr, $context:expr, $flags:expr) => {
        GucRegistry::define_string_guc($name, $short, $long, $setting, $context, $flags)
    };
    (bool, $name:expr, $short:expr, $long:expr, $setting:expr, $context:expr, $flags:expr) => {
        GucRegistry::define_bool_guc($name, $short, $long, $setting, $context, $flags)
    };
    (int[$min:expr, $max:expr], $name:expr, $short:expr, $long:expr, $setting:expr, $context:expr, $flags:expr) => {
        GucRegistry::define_int_guc($name, $short, $long, $setting, $min, $max, $context, $flags)
    };
    (secret[$hook:ident], $name:expr, $short:expr, $long:expr, $setting:expr, $context:expr, $flags:expr) => {
        define_secret($name, $short, $long, $setting, $context, $flags, $hook)
    };
}

settings! {
    pub DATABASE: string = Some(c"postgres"),
        c"realtime.database", GucContext::Postmaster, GucFlags::default(),
        c"Database the realtime worker connects to and serves.",
        c"The extension must be created in this database.";
    pub LISTEN_ADDRESSES: string = Some(c"127.0.0.1"),
        c"realtime.listen_addresses", GucContext::Sighup, GucFlags::default(),
        c"Addresses the realtime WebSocket server listens on.",
        c"Comma-separated IP addresses; * means every IPv4 and IPv6 address.";
    pub PORT: int[1, 65535] = 4000,
        c"realtime.port", GucContext::Sighup, GucFlags::default(),
        c"TCP port of the realtime WebSocket server.",
        c"";
    pub JWT_SECRET: secret[show_jwt_secret] = None,
        c"realtime.jwt_secret", GucContext::Sighup, GucFlags::default(),
        c"Secret that signs the HS256 JWTs clients present.",
        c"Changing it disconnects every socket. Shown to superusers only.";
    PRIMARY_CONNINFO: secret[show_primary_conninfo] = None,
        c"realtime.primary_conninfo", GucContext::Sighup, GucFlags::default(),
        c"How a hot standby's worker connects to the primary to relay client broadcasts.",
        c"Empty: the host, port, user, password and ssl settings of primary_conninfo, and realtime.database. TLS as libpq reads sslmode. Shown to superusers only.";
    METRICS_TOKEN: secret[show_metrics_token] = None,
        c"realtime.metrics_token", GucContext::Sighup, GucFlags::default(),
        c"Bearer token that /metrics asks for; unset, /metrics answers 404.",
        c"Prometheus scrapes with `Authorization: Bearer <token>`. Shown to superusers only.";
    JWT_JWKS_URL: string = None,
        c"realtime.jwt_jwks_url", GucContext::Sighup, GucFlags::default(),
        c"URL of a JSON Web Key Set to fetch signing keys from, e.g. https://<project>.supabase.co/auth/v1/.well-known/jwks.json.",
        c"Fetched at start, every 10 minutes, and when a token names an unknown kid (at most every 5 s); the last good set is kept when a fetch fails. Beside realtime.jwt_jwks and realtime.jwt_secret.";
    API_KEYS: secret[show_api_keys] = None,
        c"realtime.api_keys", GucContext::Sighup, GucFlags::default(),
        c"Supabase's opaque API keys (sb_publishable_..., sb_secret_...) and the role each stands for.",
        c"A JSON object {\"sb_publishable_...\": \"anon\", \"sb_secret_...\": \"service_role\"}; a mapped key is accepted wherever a JWT is. Changing it disconnects every socket. Shown to superusers only.";
    pub JWT_JWKS: secret[show_jwt_jwks] = None,
        c"realtime.jwt_jwks", GucContext::Sighup, GucFlags::default(),
        c"JSON Web Key Set for asymmetric JWTs (RS256, ES256, EdDSA) and oct keys.",
        c"A JSON object {\"keys\": [...]}; keys are picked by kid. Changing it disconnects every socket. Shown to superusers only.";
    pub JWT_CLAIM_VALIDATORS: string = None,
        c"realtime.jwt_claim_validators", GucContext::Sighup, GucFlags::default(),
        c"Claims every token must carry, as a JSON object, e.g. {\"iss\": \"https://example.supabase.co/auth/v1\"}.",
        c"Like Supabase's JWT_CLAIM_VALIDATORS: each claim must equal its value (an aud list must contain it). \
          A token without one of them is refused. Changing it disconnects every socket.";
    LOG_LEVEL: string = Some(c"info"),
        c"realtime.log_level", GucContext::Sighup, GucFlags::default(),
        c"Which of the realtime worker's own lines reach the log: warning or info.",
        c"warning: limits tripped, refused sockets, failed checks; info adds what the worker does \
          (listening, slow consumers cut off). Nothing is logged per message at either.";
    SSL: bool = false,
        c"realtime.ssl", GucContext::Sighup, GucFlags::default(),
        c"Serve wss:// and https:// with Postgres's own certificate (ssl_cert_file, ssl_key_file).",
        c"The files are read again on reload. Without a usable certificate, connections are refused, not served in the clear.";
    BUS: bool = false,
        c"realtime.bus", GucContext::Sighup, GucFlags::default(),
        c"On the primary: write decoded database broadcasts and published tables' changes into WAL for hot standbys.",
        c"Each is written once more, as a logical message, flushed per batch; every published table is decoded.";
    pub PRIVATE_ONLY: bool = false,
        c"realtime.private_only", GucContext::Sighup, GucFlags::default(),
        c"Refuse joins to public channels.",
        c"";
    /// In kB.
    pub MAX_PAYLOAD_SIZE: int[1, 1024 * 1024] = 3000,
        c"realtime.max_payload_size", GucContext::Sighup, GucFlags::UNIT_KB,
        c"Largest broadcast payload accepted.",
        c"Larger client broadcasts are refused with payload_size_exceeded.";
    pub MAX_CHANNELS_PER_CLIENT: int[1, 100_000] = 100,
        c"realtime.max_channels_per_client", GucContext::Sighup, GucFlags::default(),
        c"How many channels one WebSocket may join.",
        c"";
    /// In ms.
    pub JOIN_ERROR_DELAY: int[0, 5000] = 1000,
        c"realtime.join_error_delay", GucContext::Sighup, GucFlags::UNIT_MS,
        c"How long a refused join waits before its error reply.",
        c"Slows the endless rejoin loops of clients refused a private channel; keep it well under the clients' 10 s join timeout.";
    /// In ms.
    pub AUTHORIZATION_CACHE: int[0, 60_000] = 5000,
        c"realtime.authorization_cache", GucContext::Sighup, GucFlags::UNIT_MS,
        c"How long a private join's read check is remembered.",
        c"Joins with the same role, claims and topic within this time reuse the answer instead of probing \
          realtime.messages again. 0 probes every join.";
    /// In kB.
    pub MAX_RECORD_SIZE: int[1, 1024 * 1024] = 1024,
        c"realtime.max_record_size", GucContext::Sighup, GucFlags::UNIT_KB,
        c"Largest postgres_changes record sent whole.",
        c"Larger records keep only values of 64 bytes or less and carry the error \"Error 413: Payload Too Large\".";
    /// In ms.
    pub RESTART_GRACE: int[0, 60_000] = 5000,
        c"realtime.restart_grace", GucContext::Sighup, GucFlags::UNIT_MS,
        c"How long a starting worker holds database broadcasts for clients to rejoin.",
        c"Messages committed while the worker was down are delivered to the subscribers that rejoined within this time.";
    /// In MB.
    pub MAX_SLOT_WAL: int[16, i32::MAX] = 1024,
        c"realtime.max_slot_wal", GucContext::Sighup, GucFlags::UNIT_MB,
        c"Most WAL the worker's replication slot may hold back.",
        c"Past it the worker skips the slot ahead and logs what it skipped, rather than filling the disk.";
    /// In kB.
    pub MAX_MEMORY: int[16 * 1024, i32::MAX] = 256 * 1024,
        c"realtime.max_memory", GucContext::Sighup, GucFlags::UNIT_KB,
        c"Most memory the realtime worker holds for messages.",
        c"Decoded messages, batches waiting for the network side and frames queued on sockets together. \
          When it is full, decoding pauses (the replication slot keeps the rest) and a socket holding more than \
          its share is closed.";
    /// In kB.
    pub STATS_MEMORY: int[64, 1024 * 1024] = 1024,
        c"realtime.stats_memory", GucContext::Postmaster, GucFlags::UNIT_KB,
        c"Shared memory for realtime.stats, realtime.connections and realtime.channels.",
        c"Rows that do not fit are left out and counted (connections_left_out, channels_left_out). \
          About 200 bytes per connection row. Needs a restart.";
    /// In ms.
    pub STATEMENT_TIMEOUT: int[1, i32::MAX] = 5000,
        c"realtime.statement_timeout", GucContext::Sighup, GucFlags::UNIT_MS,
        c"Longest a query of the realtime worker may run.",
        c"Authorization probes, Postgres Changes checks, replay and maintenance each fail alone past it.";
    /// In ms.
    pub LOCK_TIMEOUT: int[1, i32::MAX] = 2000,
        c"realtime.lock_timeout", GucContext::Sighup, GucFlags::UNIT_MS,
        c"Longest a query of the realtime worker may wait for a lock.",
        c"";
    pub ALLOWED_ROLES: string = None,
        c"realtime.allowed_roles", GucContext::Sighup, GucFlags::default(),
        c"Roles a client's token may name besides anon, authenticated and service_role.",
        c"Comma-separated. The worker's role realtime_worker is made a member of exactly these (and the three); \
          a token naming any other role is refused. Superuser roles are never allowed.";
    /// In minutes, so it reads and writes as `3d`, `72h` or `4320min`.
    pub RETENTION: int[60, i32::MAX] = 3 * 24 * 60,
        c"realtime.retention", GucContext::Suset, GucFlags::UNIT_MIN,
        c"How long stored broadcast messages are kept.",
        c"Day partitions of realtime.messages older than this are dropped by the cleanup job.";
    // Supabase's tenant limits. Rates are rolling averages over the last
    // minute in 5 s steps, as Supabase counts them.
    pub MAX_CONCURRENT_USERS: int[1, i32::MAX] = 200,
        c"realtime.max_concurrent_users", GucContext::Sighup, GucFlags::default(),
        c"How many sockets may have joined channels at once.",
        c"Past it, connections get 429 \"Too many connected users\" and joins ConnectionRateLimitReached.";
    pub MAX_JOINS_PER_SECOND: int[1, i32::MAX] = 100,
        c"realtime.max_joins_per_second", GucContext::Sighup, GucFlags::default(),
        c"Joins per second one socket may make.",
        c"Past it the join is refused with ClientJoinRateLimitReached and the socket is closed.";
    pub MAX_EVENTS_PER_SECOND: int[1, i32::MAX] = 100,
        c"realtime.max_events_per_second", GucContext::Sighup, GucFlags::default(),
        c"Messages per second, per socket and in total.",
        c"Counts messages clients send, REST broadcasts and the deliveries they make. Past it a client's message \
          closes its channel with \"Too many messages per second\" and REST answers 429.";
    pub MAX_BYTES_PER_SECOND: int[1, i32::MAX] = 100_000,
        c"realtime.max_bytes_per_second", GucContext::Sighup, GucFlags::default(),
        c"Bytes per second one socket may send.",
        c"Past it a client's message closes its channel with \"Too many bytes per second\".";
    pub MAX_PRESENCE_EVENTS_PER_SECOND: int[1, i32::MAX] = 1000,
        c"realtime.max_presence_events_per_second", GucContext::Sighup, GucFlags::default(),
        c"Presence events per second in total.",
        c"Counts tracks, presence states sent at joins and presence diffs delivered. Past it a track or join \
          closes its channel with \"Too many presence messages per second\".";
    pub MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW: int[1, i32::MAX] = 5,
        c"realtime.max_client_presence_events_per_window", GucContext::Sighup, GucFlags::default(),
        c"Presence messages one channel may send per realtime.client_presence_window.",
        c"Past it the channel is closed with \"Client presence rate limit exceeded\".";
    /// In ms.
    pub CLIENT_PRESENCE_WINDOW: int[1, i32::MAX] = 30_000,
        c"realtime.client_presence_window", GucContext::Sighup, GucFlags::UNIT_MS,
        c"The window of realtime.max_client_presence_events_per_window.",
        c"";
    pub MAX_POSTGRES_CHANGES_PER_JOIN: int[1, i32::MAX] = 100,
        c"realtime.max_postgres_changes_per_join", GucContext::Sighup, GucFlags::default(),
        c"postgres_changes bindings one join may ask for.",
        c"";
}

/// A secret setting: `GUC_SUPERUSER_ONLY` alone still lets members of
/// `pg_read_all_settings` (and so `pg_monitor`) read it, through `SHOW`,
/// `current_setting()` and `pg_settings` (whose `reset_val` bypasses any show
/// hook). So it is left out of `pg_settings` and `SHOW ALL`
/// (`GUC_NO_SHOW_ALL`), and its show hook gives its value to superusers and
/// `********` to everyone else.
fn define_secret(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<Option<CString>>,
    context: GucContext,
    flags: GucFlags,
    show: unsafe extern "C-unwind" fn() -> *const c_char,
) {
    // SAFETY: while loading the library; the setting is a static.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            name.as_ptr(),
            short.as_ptr(),
            long.as_ptr(),
            setting.as_ptr(),
            std::ptr::null(),
            context as pg_sys::GucContext::Type,
            (flags | GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL).bits(),
            None,
            None,
            Some(show),
        );
    }
}

/// What a secret setting shows: its value to a superuser in a transaction
/// (where the role can be looked up), a mask otherwise, empty when unset.
fn show_secret(setting: &GucSetting<Option<CString>>) -> *const c_char {
    // SAFETY: reads the setting's current value, owned by the GUC machinery,
    // and the current user's role (catalog access only inside a transaction).
    unsafe {
        let value = *setting.as_ptr();
        if value.is_null() || *value == 0 {
            return c"".as_ptr();
        }
        if pg_sys::IsTransactionState() && pg_sys::superuser() {
            return value;
        }
    }
    c"********".as_ptr()
}

fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|v| CStr::to_string_lossy(&v).into_owned()).filter(|v| !v.is_empty())
}

pub fn database() -> String {
    text(&DATABASE).unwrap_or_else(|| "postgres".to_owned())
}

/// The settings the network side needs, read on the main thread (at start and on SIGHUP).
pub fn read() -> Settings {
    Settings {
        listen_addresses: text(&LISTEN_ADDRESSES).unwrap_or_default(),
        port: PORT.get() as u16,
        jwt_secret: text(&JWT_SECRET),
        jwt_jwks: text(&JWT_JWKS),
        jwt_claim_validators: text(&JWT_CLAIM_VALIDATORS),
        api_keys: text(&API_KEYS),
        jwt_jwks_url: text(&JWT_JWKS_URL),
        private_only: PRIVATE_ONLY.get(),
        max_payload_bytes: MAX_PAYLOAD_SIZE.get() as usize * 1024,
        max_channels_per_client: MAX_CHANNELS_PER_CLIENT.get() as usize,
        join_error_delay: Duration::from_millis(JOIN_ERROR_DELAY.get() as u64),
        authorization_cache: Duration::from_millis(AUTHORIZATION_CACHE.get() as u64),
        restart_grace: Duration::from_millis(RESTART_GRACE.get() as u64),
        max_memory_bytes: MAX_MEMORY.get() as usize * 1024,
        allowed_roles: allowed_roles(),
        limits: Limits {
            max_concurrent_users: MAX_CONCURRENT_USERS.get() as usize,
            max_joins_per_second: MAX_JOINS_PER_SECOND.get() as u32,
            max_events_per_second: MAX_EVENTS_PER_SECOND.get() as u32,
            max_bytes_per_second: MAX_BYTES_PER_SECOND.get() as u32,
            max_presence_events_per_second: MAX_PRESENCE_EVENTS_PER_SECOND.get() as u32,
            max_client_presence_events_per_window: MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW.get() as u32,
            client_presence_window: Duration::from_millis(CLIENT_PRESENCE_WINDOW.get() as u64),
            max_postgres_changes_per_join: MAX_POSTGRES_CHANGES_PER_JOIN.get() as usize,
        },
        metrics_token: text(&METRICS_TOKEN),
        log_level: log_level(),
        tls: SSL
            .get()
            .then(|| TlsFiles { cert_file: postgres_file("ssl_cert_file"), key_file: postgres_file("ssl_key_file") }),
        bus: bus_node(),
    }
}

/// This worker on the bus: an id of its own (for the life of the process)
/// and, on a standby, how to reach the primary.
fn bus_node() -> Option<BusNode> {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    if !BUS.get() {
        return None;
    }
    let origin = ORIGIN.get_or_init(|| uuid::Uuid::new_v4().to_string()).clone();
    let primary_conninfo = super::recovery::in_recovery().then(|| {
        text(&PRIMARY_CONNINFO).unwrap_or_else(|| relay_conninfo(&postgres_setting("primary_conninfo"), &database()))
    });
    Some(BusNode { origin, primary_conninfo })
}

fn log_level() -> Level {
    let value = text(&LOG_LEVEL).unwrap_or_default();
    Level::parse(&value).unwrap_or_else(|| {
        pgrx::warning!("realtime: realtime.log_level \"{value}\" is neither warning nor info; using info");
        Level::Info
    })
}

/// A file setting of Postgres itself, relative to the data directory unless absolute.
fn postgres_file(name: &str) -> PathBuf {
    // SAFETY: DataDir is set for the life of the process.
    let data_dir = unsafe { CStr::from_ptr(pg_sys::DataDir).to_string_lossy().into_owned() };
    PathBuf::from(data_dir).join(postgres_setting(name))
}

/// A setting of Postgres itself, as text ("" when unset).
fn postgres_setting(name: &str) -> String {
    let name = CString::new(name).expect("a setting name");
    // SAFETY: main thread; GetConfigOption returns the setting's current value (or NULL).
    unsafe {
        let value = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if value.is_null() { String::new() } else { CStr::from_ptr(value).to_string_lossy().into_owned() }
    }
}

/// `realtime.allowed_roles` as names; the defaults are added where they are used.
pub fn allowed_roles() -> Vec<String> {
    text(&ALLOWED_ROLES)
        .map(|list| list.split(',').map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect())
        .unwrap_or_default()
}

pub fn bus() -> bool {
    BUS.get()
}

pub fn max_record_bytes() -> usize {
    MAX_RECORD_SIZE.get() as usize * 1024
}

pub fn max_slot_wal_bytes() -> i64 {
    i64::from(MAX_SLOT_WAL.get()) * 1024 * 1024
}

pub fn statement_timeout_ms() -> i32 {
    STATEMENT_TIMEOUT.get()
}

pub fn lock_timeout_ms() -> i32 {
    LOCK_TIMEOUT.get()
}
