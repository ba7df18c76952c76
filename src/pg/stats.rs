//! `realtime.stats`, `realtime.connections`, `realtime.channels`: the worker
//! writes a JSON snapshot into shared memory once a second; any session reads
//! it through `realtime.stats_json()`. The area is a seqlock: the writer never
//! waits for readers, and a reader that overlaps a write copies again.
//! Its size is `realtime.stats_memory` (set before the postmaster starts).

use super::settings::STATS_MEMORY;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering, fence};

#[repr(C)]
struct Header {
    /// Odd while a write is under way; 0 before the first.
    seq: AtomicU64,
    len: AtomicU64,
    capacity: u64,
}

static AREA: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn area_bytes() -> usize {
    STATS_MEMORY.get().max(64) as usize * 1024
}

/// From `_PG_init` while preloading (after the settings are defined).
pub fn init() {
    // SAFETY: hooks are installed once, while the postmaster loads the library.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_request);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: called by the postmaster in its shmem-request phase.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(size_of::<Header>() + area_bytes());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: as pgrx's own shared memory: under AddinShmemInitLock, the
    // first process to get here initializes the header.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let capacity = area_bytes();
        let header = pg_sys::ShmemInitStruct(c"realtime_stats".as_ptr(), size_of::<Header>() + capacity, &mut found)
            .cast::<Header>();
        if !found {
            header.write(Header { seq: AtomicU64::new(0), len: AtomicU64::new(0), capacity: capacity as u64 });
        }
        pg_sys::LWLockRelease(lock);
        AREA.store(header, Ordering::Release);
    }
}

fn area() -> Option<(&'static Header, *mut u8)> {
    let header = AREA.load(Ordering::Acquire);
    // SAFETY: set once to shared memory that lives as long as the server.
    unsafe { header.as_ref().map(|h| (h, header.add(1).cast::<u8>())) }
}

/// Room for a snapshot, in bytes (0 without the shared memory).
pub fn capacity() -> usize {
    area().map_or(0, |(h, _)| h.capacity as usize)
}

/// Writes a snapshot (the worker's main thread is the only writer).
pub fn publish(json: &str) {
    let Some((header, bytes)) = area() else { return };
    let len = json.len().min(header.capacity as usize);
    let seq = header.seq.load(Ordering::Relaxed);
    header.seq.store(seq + 1, Ordering::Relaxed);
    fence(Ordering::Release);
    // SAFETY: within the area; readers check `seq` around their copy.
    unsafe { std::ptr::copy_nonoverlapping(json.as_ptr(), bytes, len) };
    header.len.store(len as u64, Ordering::Relaxed);
    header.seq.store(seq + 2, Ordering::Release);
}

/// The latest snapshot; `None` before the worker's first.
pub fn snapshot() -> Option<String> {
    let (header, bytes) = area()?;
    let mut copy = Vec::new();
    for _ in 0..10_000 {
        let before = header.seq.load(Ordering::Acquire);
        if before == 0 {
            return None;
        }
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let len = (header.len.load(Ordering::Relaxed) as usize).min(header.capacity as usize);
        copy.resize(len, 0);
        // SAFETY: within the area; a copy torn by a write is thrown away below.
        unsafe { std::ptr::copy_nonoverlapping(bytes, copy.as_mut_ptr(), len) };
        fence(Ordering::Acquire);
        if header.seq.load(Ordering::Relaxed) == before {
            return String::from_utf8(copy).ok();
        }
    }
    None
}

/// The worker's latest snapshot as JSON text: NULL before its first.
/// The views `realtime.stats`, `realtime.connections` and `realtime.channels`
/// read it.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn stats_json() -> Option<String> {
    if AREA.load(Ordering::Acquire).is_null() {
        error!("realtime: no stats: the library is not in shared_preload_libraries");
    }
    snapshot()
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION realtime.stats_json() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.stats_json() TO pg_read_all_stats;

-- One row: the worker's figures, as of taken_at (about once a second).
CREATE VIEW realtime.stats AS
SELECT to_timestamp((s->>'taken_at_ms')::float8 / 1000) AS taken_at,
       (s->>'sockets')::bigint AS sockets,
       (s->>'channels')::bigint AS channels,
       (s->>'joins_per_second')::float8 AS joins_per_second,
       (s->>'messages_in_per_second')::float8 AS messages_in_per_second,
       (s->>'messages_out_per_second')::float8 AS messages_out_per_second,
       (s->>'bytes_out_per_second')::float8 AS bytes_out_per_second,
       (s->>'decode_lag_bytes')::bigint AS decode_lag_bytes,
       (s->>'decode_lag_ms')::float8 AS decode_lag_ms,
       (s->>'decode_idle_ms')::bigint AS decode_idle_ms,
       (s#>>'{commit_to_send,p50_ms}')::float8 AS commit_to_send_p50_ms,
       (s#>>'{commit_to_send,p90_ms}')::float8 AS commit_to_send_p90_ms,
       (s#>>'{commit_to_send,p99_ms}')::float8 AS commit_to_send_p99_ms,
       (s#>>'{commit_to_send,count}')::bigint AS commits_sent_last_minute,
       (s->>'rls_checks_per_second')::float8 AS rls_checks_per_second,
       (s#>>'{rls_check,p50_ms}')::float8 AS rls_check_p50_ms,
       (s#>>'{rls_check,p99_ms}')::float8 AS rls_check_p99_ms,
       (s#>>'{rls_check,count}')::bigint AS rls_checks_last_minute,
       (s->>'queued_bytes')::bigint AS queued_bytes,
       (s->>'max_memory_bytes')::bigint AS max_memory_bytes,
       (s->>'worker_rss_bytes')::bigint AS worker_rss_bytes,
       s->'refused_joins' AS refused_joins,
       s->'limit_trips' AS limit_trips,
       (s->>'connections_left_out')::bigint AS connections_left_out,
       (s->>'channels_left_out')::bigint AS channels_left_out,
       to_timestamp((s->>'stats_reset_ms')::float8 / 1000) AS stats_reset,
       (s#>>'{totals,joins}')::bigint AS joins_total,
       (s#>>'{totals,messages_in}')::bigint AS messages_in_total,
       (s#>>'{totals,messages_out}')::bigint AS messages_out_total,
       (s#>>'{totals,bytes_out}')::bigint AS bytes_out_total,
       (s#>>'{totals,database_messages}')::bigint AS database_messages_total,
       (s#>>'{totals,rls_checks}')::bigint AS rls_checks_total
FROM (SELECT realtime.stats_json()::jsonb AS s) snapshot
WHERE s IS NOT NULL;

-- One row per WebSocket.
CREATE VIEW realtime.connections AS
SELECT c.id, c.role, c.sub, NULLIF(c.remote_address, '')::inet AS remote_address, c.remote_port,
       c.protocol_version, to_timestamp(c.connected_at_ms::float8 / 1000) AS connected_since,
       c.channels, c.queued_bytes
FROM (SELECT realtime.stats_json()::jsonb AS s) snapshot,
     jsonb_to_recordset(snapshot.s->'connections') AS c(
       id bigint, role text, sub text, remote_address text, remote_port int, protocol_version text,
       connected_at_ms bigint, channels int, queued_bytes bigint);

-- One row per topic with a subscriber (public and private are different rows).
CREATE VIEW realtime.channels AS
SELECT c.topic, c.private, c.subscribers, c.presence_members, c.postgres_changes_subscribers,
       c.postgres_changes_bindings
FROM (SELECT realtime.stats_json()::jsonb AS s) snapshot,
     jsonb_to_recordset(snapshot.s->'channel_rows') AS c(
       topic text, private boolean, subscribers int, presence_members int, postgres_changes_subscribers int,
       postgres_changes_bindings int);

REVOKE ALL ON realtime.stats, realtime.connections, realtime.channels FROM PUBLIC;
GRANT SELECT ON realtime.stats, realtime.connections, realtime.channels TO pg_read_all_stats;
GRANT USAGE ON SCHEMA realtime TO pg_read_all_stats;
"#,
    name = "stats_views",
    requires = [stats_json]
);
