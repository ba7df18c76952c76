//! The `realtime.*` settings. Defined when the library loads, which with
//! `shared_preload_libraries = 'realtime'` is in every backend and the worker.

use crate::bridge::log::Level;
use crate::bridge::settings::{BusNode, TlsFiles, relay_conninfo, settings_table};
use crate::bridge::{Limits, Settings};
use pgrx::pg_guard;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, pg_sys};
use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The table's expansion on this side (`crate::bridge::settings::settings_table`):
/// each setting's static and, for a secret, its show hook; [`define`], which
/// registers them; and [`read`], what the network side reads.
macro_rules! pg_settings {
    ($(
        $(#[$meta:meta])*
        $setting:ident: $kind:ident $([$($arg:tt)*])? = $default:expr,
            $name:expr, $context:ident, $flags:ident, $short:expr, $long:expr
            $(, net $field:ident: $type:ty = $conv:expr)?
            $(, limit $limit:ident: $limit_type:ty = $limit_conv:expr)?;
    )*) => {
        $(
            $(#[$meta])*
            pub static $setting: setting_type!($kind) = <setting_type!($kind)>::new($default);
            show_hook!($kind $([$($arg)*])?, $setting);
        )*

        /// Registers every setting; called from `_PG_init`.
        pub fn define() {
            $(
                register!(
                    $kind $([$($arg)*])?, $name, $short, $long, &$setting,
                    GucContext::$context, guc_flags!($flags)
                );
            )*
        }

        /// The settings the network side needs, read on the main thread (at
        /// start and on SIGHUP).
        pub fn read() -> Settings {
            Settings {
                $($($field: ($conv)(raw!($kind, $setting)),)?)*
                limits: Limits { $($($limit: ($limit_conv)(raw!($kind, $setting)),)?)* },
                allowed_roles: allowed_roles(),
                tls: SSL.get().then(|| TlsFiles {
                    cert_file: postgres_file("ssl_cert_file"),
                    key_file: postgres_file("ssl_key_file"),
                }),
                log_level: log_level(),
                bus: bus_node(),
            }
        }
    };
}

macro_rules! setting_type {
    (string) => { GucSetting<Option<CString>> };
    (secret) => { GucSetting<Option<CString>> };
    (bool) => { GucSetting<bool> };
    (int) => { GucSetting<i32> };
}

/// A setting's value as the table's conversions take it.
macro_rules! raw {
    (string, $setting:ident) => {
        text(&$setting)
    };
    (secret, $setting:ident) => {
        text(&$setting)
    };
    ($kind:ident, $setting:ident) => {
        $setting.get()
    };
}

macro_rules! guc_flags {
    (NONE) => {
        GucFlags::default()
    };
    ($flag:ident) => {
        GucFlags::$flag
    };
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

settings_table!(pg_settings);

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
