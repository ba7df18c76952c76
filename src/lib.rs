//! realtime: Supabase Realtime served from inside PostgreSQL.
//!
//! The SQL surface lives in `sql/`; this library adds the settings and, when
//! preloaded, the background worker that serves the WebSocket protocol.

use pgrx::prelude::*;

mod api_keys;
#[cfg(test)]
mod arbitrary_json;
mod bridge;
mod bus_seal;
mod changes;
mod decoded;
mod jwt;
mod net;
mod pg;
mod protocol;
mod redelivery;
mod row_format;
mod wal_clock;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/realtime.sql", name = "realtime_schema", bootstrap);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a flag Postgres sets while it loads preloaded libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        // Loaded later, its settings that only a server start may set would
        // end the session (FATAL); an ERROR says what to do instead.
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "realtime must be loaded when the server starts",
            "_PG_init",
        )
        .set_hint("Add 'realtime' to shared_preload_libraries (with wal_level = logical) and restart PostgreSQL.")
        .report(PgLogLevel::ERROR);
    }
    pg::settings::define();
    pg::wake::init();
    pg::bus::wake_on_replay();
    pg::stats::init();
    pg::worker::register();
}

/// The background worker's entry point: the Postgres side runs on this
/// thread and starts the network side, which it knows only through the bridge.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn realtime_worker_main(_arg: pg_sys::Datum) {
    pg::worker::main(net::spawn);
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn send_adds_the_row_id_to_the_payload() {
        Spi::run("select realtime.send('{\"a\":1}', 'e', 'room:1', false)").unwrap();
        let matches = Spi::get_one::<bool>(
            "select (payload->>'id')::uuid = id and payload->>'a' = '1' and not private
             from realtime.messages where topic = 'room:1'",
        );
        assert_eq!(matches, Ok(Some(true)));
    }

    #[pg_test]
    fn retention_setting_reads_as_an_interval() {
        Spi::run("set realtime.retention = '36h'").unwrap();
        let retention = Spi::get_one::<bool>("select realtime.retention() = interval '36 hours'");
        assert_eq!(retention, Ok(Some(true)));
    }
}

/// Used by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'realtime'", "wal_level = logical"]
    }
}
