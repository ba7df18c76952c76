//! Housekeeping on the main thread: waiting for the extension, letting the
//! session load its own output plugin, and the cleanup job (day partitions
//! ahead, old ones dropped).

use super::subxact;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::Duration;

const EXTENSION_POLL: Duration = Duration::from_secs(2);

/// Waits, without crash-looping, until `CREATE EXTENSION realtime` has run.
/// False when told to stop meanwhile.
pub fn wait_for_extension(database: &str) -> bool {
    let waiting = format!("realtime: waiting for CREATE EXTENSION realtime in database \"{database}\"");
    wait_until(&waiting, EXTENSION_POLL, || {
        let exists = BackgroundWorker::transaction(|| {
            Spi::connect(|c| {
                c.select("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'realtime')", None, &[])?
                    .first()
                    .get_one::<bool>()
            })
        });
        exists == Ok(Some(true))
    })
}

/// Before serving: polls `ready` every `poll`, taking reloads meanwhile, and
/// logs `waiting` once if it has to wait; false on shutdown.
pub fn wait_until(waiting: &str, poll: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let mut told = false;
    while !ready() {
        if !told {
            log!("{waiting}");
            told = true;
        }
        // False on postmaster death.
        if !BackgroundWorker::wait_latch(Some(poll)) || super::interrupts::shutdown_requested() {
            return false;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    true
}

/// The `search_path` the worker's session started with (the server's and
/// the database's setting): what clients' checks run with, as they would in
/// a session of their own.
static CLIENT_SEARCH_PATH: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// The worker's own queries resolve names in `pg_catalog` alone: a role that
/// may create objects in `public` (or any schema on the database's path)
/// could otherwise plant a better-matching function or operator there that
/// the worker, a superuser, would run. Clients' checks switch to the
/// session's original path once they act as the client's role
/// ([`client_search_path`]). Called right after connecting, before any query.
pub fn pin_search_path() {
    // SAFETY: main thread; GetConfigOption returns the setting's current
    // string, copied before the setting changes.
    unsafe {
        let current = pg_sys::GetConfigOption(c"search_path".as_ptr(), false, false);
        let current = if current.is_null() { c"" } else { std::ffi::CStr::from_ptr(current) };
        let _ = CLIENT_SEARCH_PATH.set(current.to_owned());
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

/// The path clients' checks resolve names with, as their own sessions would.
pub fn client_search_path() -> &'static str {
    CLIENT_SEARCH_PATH.get().and_then(|p| p.to_str().ok()).unwrap_or("\"$user\", public")
}

/// Sets a setting for the worker's own session.
pub fn set_session(name: &str, value: &str) {
    let set = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select("SELECT pg_catalog.set_config($1, $2, false)", None, &[name.into(), value.into()]).map(|_| ())
        })
    });
    if let Err(e) = set {
        warning!("realtime: cannot set {name} to {value} for the worker: {e}");
    }
}

/// A background worker starts with `session_authorization` unset, and a
/// `SET LOCAL` of it (`rls::act_for_clients`) would then not be undone when
/// its transaction ends: give it the worker's own user first.
pub fn pin_session_authorization() {
    let pinned = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select("SELECT set_config('session_authorization', session_user, false)", None, &[]).map(|_| ())
        })
    });
    if let Err(e) = pinned {
        error!("realtime: cannot set the worker's session authorization: {e}");
    }
}

/// Recent PostgreSQL minor releases only load output plugins listed in
/// `output_plugin_libraries`; the worker adds its own, for its session only.
pub fn allow_output_plugin() {
    let allowed = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT set_config('output_plugin_libraries', setting || ', realtime', false)
                 FROM pg_settings WHERE name = 'output_plugin_libraries'
                   AND 'realtime' <> ALL (string_to_array(replace(setting, ' ', ''), ','))",
                None,
                &[],
            )
            .map(|_| ())
        })
    });
    if let Err(e) = allowed {
        warning!("realtime: cannot allow the realtime output plugin: {e}");
    }
}

/// The roles a client may always name, as the extension grants them.
const DEFAULT_CLIENT_ROLES: [&str; 3] = ["anon", "authenticated", "service_role"];

/// Makes `realtime_worker` a member of exactly the roles clients may assume;
/// returns them (the defaults and the named roles that exist; the defaults
/// alone if that fails). A standby cannot write: there, the roles the
/// primary's worker granted, which replicate.
pub fn sync_worker_roles(named: &[String]) -> Vec<String> {
    if super::recovery::in_recovery() {
        return worker_roles();
    }
    let synced = BackgroundWorker::transaction(|| {
        subxact::committed(|| {
            Spi::connect_mut(|c| {
                c.update("SELECT realtime.sync_worker_roles($1)", None, &[named.to_vec().into()])?
                    .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
                    .collect::<Result<Vec<String>, _>>()
            })
        })
    });
    roles_or_defaults(synced, "set")
}

/// The roles `realtime_worker` is a member of, as the primary's worker set
/// them (on a standby, which cannot change them); the defaults if that fails.
fn worker_roles() -> Vec<String> {
    let read = BackgroundWorker::transaction(|| {
        subxact::committed(|| {
            Spi::connect(|c| {
                c.select(
                    "SELECT r.rolname::text FROM pg_auth_members m
                     JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles w ON w.oid = m.member
                     WHERE w.rolname = 'realtime_worker' ORDER BY 1",
                    None,
                    &[],
                )?
                .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<String>, _>>()
            })
        })
    });
    roles_or_defaults(read, "read")
}

/// The roles a query gave, or the defaults, with a warning, if it failed.
fn roles_or_defaults(
    result: Result<Result<Vec<String>, impl std::fmt::Display>, impl std::fmt::Display>,
    doing: &str,
) -> Vec<String> {
    let failed = match result {
        // Possibly none: a default role that is a superuser is never one.
        Ok(Ok(roles)) => return roles,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    warning!("realtime: cannot {doing} the roles realtime_worker may assume: {failed}");
    DEFAULT_CLIENT_ROLES.map(String::from).into()
}

/// The cleanup job: day partitions ahead, old ones dropped.
pub fn partitions() {
    let result = BackgroundWorker::transaction(|| {
        subxact::committed(|| {
            let created = Spi::get_one::<String>("SELECT string_agg(p, ', ') FROM realtime.create_partitions() p");
            let dropped = Spi::get_one::<String>("SELECT string_agg(p, ', ') FROM realtime.drop_old_partitions() p");
            (created, dropped)
        })
    });
    match result {
        Ok((created, dropped)) => {
            if let Ok(Some(created)) = created {
                log!("realtime: created partitions {created}");
            }
            if let Ok(Some(dropped)) = dropped {
                log!("realtime: dropped partitions older than the retention: {dropped}");
            }
        }
        Err(e) => warning!("realtime: PartitionCreationFailed: partition maintenance failed: {e}"),
    }
}

/// Memory freed after a burst goes back to the system: large buffers are
/// mapped on their own and returned when freed (no growing thresholds), and
/// [`trim_memory`] hands back the free pages in between.
pub fn tune_allocator() {
    // SAFETY: mallopt only tunes this process's allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// The worker's resident memory, from /proc (0 when it cannot be read).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64
}

pub fn trim_memory() {
    // SAFETY: releases free pages of every arena; safe at any time.
    unsafe { libc::malloc_trim(0) };
}

/// Each WebSocket is a file descriptor: allow as many as the hard limit does.
pub fn raise_fd_limit() {
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
