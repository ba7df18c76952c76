//! Wake-up at commit: a transaction that inserted into `realtime.messages`
//! (a statement trigger notes it) sets the worker's latch as it commits, so
//! the worker decodes at once instead of on its fallback timer. While any
//! channel has `postgres_changes` bindings, every transaction that wrote in
//! the worker's database does the same. On a hot standby, recovery does it
//! as it replays a bus message (`super::bus::wake_on_replay`).

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgAtomic, pg_shmem_init};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

/// The worker's PGPROC number, -1 when no worker runs.
static WORKER_PROCNO: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"realtime_worker_procno") };
/// The worker's database while it routes row changes, else 0 (InvalidOid).
static WATCHED_DATABASE: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"realtime_watched_database") };
/// On a hot standby: the end of the last bus message recovery replayed
/// (the replay position passes it just after).
static BUS_REPLAYED: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"realtime_bus_replayed") };
/// Set once the shared memory above exists (the library was preloaded).
static SHMEM_READY: AtomicBool = AtomicBool::new(false);
/// This backend's transaction wrote a message.
static WAKE_AT_COMMIT: AtomicBool = AtomicBool::new(false);

/// From `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(WORKER_PROCNO = AtomicI32::new(-1));
    pg_shmem_init!(WATCHED_DATABASE = AtomicU32::new(0));
    pg_shmem_init!(BUS_REPLAYED = AtomicU64::new(0));
    SHMEM_READY.store(true, Ordering::Relaxed);
    // SAFETY: registering a process-lifetime callback with no argument.
    unsafe { pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut()) };
}

/// The worker announces itself (or its exit, with None).
pub fn set_worker(procno: Option<i32>) {
    if SHMEM_READY.load(Ordering::Relaxed) {
        WORKER_PROCNO.get().store(procno.unwrap_or(-1), Ordering::SeqCst);
    }
}

/// Recovery replayed a bus message ending at `end`: wakes the worker.
pub fn bus_replayed(end: u64) {
    if SHMEM_READY.load(Ordering::Relaxed) {
        BUS_REPLAYED.get().fetch_max(end, Ordering::SeqCst);
        wake_worker();
    }
}

/// The end of the last bus message recovery replayed (0: none yet).
pub fn last_bus_replayed() -> u64 {
    if SHMEM_READY.load(Ordering::Relaxed) { BUS_REPLAYED.get().load(Ordering::SeqCst) } else { 0 }
}

/// The worker routes row changes (or stops): writes in its database wake it.
pub fn watch_writes(on: bool) {
    if SHMEM_READY.load(Ordering::Relaxed) {
        // SAFETY: MyDatabaseId is set once the worker is connected.
        let database = if on { unsafe { pg_sys::MyDatabaseId.to_u32() } } else { 0 };
        WATCHED_DATABASE.get().store(database, Ordering::Relaxed);
    }
}

/// The statement trigger on `realtime.messages`.
///
/// # Safety
/// Called by Postgres as a trigger function.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn realtime_wake_worker(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    WAKE_AT_COMMIT.store(true, Ordering::Relaxed);
    pg_sys::Datum::from(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_realtime_wake_worker() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        // Before the commit the transaction still knows whether it wrote.
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_PRE_COMMIT
            if wrote_in_watched_database() =>
        {
            WAKE_AT_COMMIT.store(true, Ordering::Relaxed);
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
            if WAKE_AT_COMMIT.swap(false, Ordering::Relaxed) =>
        {
            wake_worker();
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            WAKE_AT_COMMIT.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}

fn wrote_in_watched_database() -> bool {
    if !SHMEM_READY.load(Ordering::Relaxed) {
        return false;
    }
    let database = WATCHED_DATABASE.get().load(Ordering::Relaxed);
    // SAFETY: plain reads of this backend's state.
    database != 0
        && unsafe {
            pg_sys::MyDatabaseId.to_u32() == database
                && pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId
        }
}

/// Sets the worker's latch, if a worker runs.
pub fn wake_worker() {
    if !SHMEM_READY.load(Ordering::Relaxed) {
        return;
    }
    let procno = WORKER_PROCNO.get().load(Ordering::SeqCst);
    // SAFETY: ProcGlobal is set up before any backend runs; the index is
    // checked against its size. A stale number wakes some other process's
    // latch, which is harmless.
    unsafe {
        let global = pg_sys::ProcGlobal;
        if procno < 0 || global.is_null() || procno as u32 >= (*global).allProcCount {
            return;
        }
        let proc = (*global).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*proc).procLatch);
    }
}
