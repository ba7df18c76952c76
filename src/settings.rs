//! The `realtime.*` settings. Defined when the library loads, which with
//! `shared_preload_libraries = 'realtime'` is in every backend and the worker.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static LISTEN_ADDRESSES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"127.0.0.1"));
pub static PORT: GucSetting<i32> = GucSetting::<i32>::new(4000);
pub static JWT_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// In minutes, so it reads and writes as `3d`, `72h` or `4320min`.
pub static RETENTION: GucSetting<i32> = GucSetting::<i32>::new(3 * 24 * 60);

pub fn define() {
    GucRegistry::define_string_guc(
        c"realtime.database",
        c"Database the realtime worker connects to and serves.",
        c"The extension must be created in this database.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"realtime.listen_addresses",
        c"Addresses the realtime WebSocket server listens on.",
        c"Comma-separated IP addresses; * means every IPv4 and IPv6 address.",
        &LISTEN_ADDRESSES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"realtime.port",
        c"TCP port of the realtime WebSocket server.",
        c"",
        &PORT,
        1,
        65535,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"realtime.jwt_secret",
        c"Secret that signs the HS256 JWTs clients present.",
        c"Changing it disconnects every socket. Readable by superusers only.",
        &JWT_SECRET,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"realtime.retention",
        c"How long stored broadcast messages are kept.",
        c"Day partitions of realtime.messages older than this are dropped by the cleanup job.",
        &RETENTION,
        60,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MIN,
    );
}
