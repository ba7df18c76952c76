//! Every Postgres call whose shape differs between the majors this extension
//! supports (15, 17, 18), and every function it declares itself because pgrx
//! binds no header that has it. Callers see one signature for all majors.
//!
//! The declarations here are called only through pgrx's guard
//! (`pg_guard_ffi_boundary`), so an ERROR they raise becomes a Rust panic the
//! caller's transaction or subtransaction catches, never a longjmp over Rust
//! frames. (The raw declarations meant for signal handlers live beside the
//! handlers: no guard belongs there.)

use pgrx::pg_sys;
use std::ffi::{CStr, c_char, c_int};

#[cfg(not(any(feature = "pg15", feature = "pg17", feature = "pg18")))]
compile_error!("realtime supports PostgreSQL 15, 17 and 18: build with --features pg15, pg17 or pg18");

unsafe extern "C-unwind" {
    /// `access/timeline.h`, the same from 15 to 18.
    fn readTimeLineHistory(target: pg_sys::TimeLineID) -> *mut pg_sys::List;
    fn tliSwitchPoint(tli: pg_sys::TimeLineID, history: *mut pg_sys::List, next: *mut pg_sys::TimeLineID) -> u64;
    /// `utils/timeout.h`.
    fn enable_timeout_after(id: c_int, delay_ms: c_int);
    fn disable_timeout(id: c_int, keep_indicator: bool);
}

#[cfg(feature = "pg15")]
unsafe extern "C-unwind" {
    /// `replication/message.h`: no flush flag before 17.
    fn LogLogicalMessage(prefix: *const c_char, message: *const c_char, size: usize, transactional: bool) -> u64;
}
#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe extern "C-unwind" {
    fn LogLogicalMessage(
        prefix: *const c_char,
        message: *const c_char,
        size: usize,
        transactional: bool,
        flush: bool,
    ) -> u64;
}

/// Creates the logical slot `$1` with this extension's output plugin. On 17+
/// it is a failover slot: standbys with `sync_replication_slots = on` keep a
/// copy that decoding continues from after a promotion.
#[cfg(feature = "pg15")]
pub const CREATE_LOGICAL_SLOT: &str = "SELECT pg_create_logical_replication_slot($1, 'realtime')";
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub const CREATE_LOGICAL_SLOT: &str = "SELECT pg_create_logical_replication_slot($1, 'realtime', temporary => false, twophase => false, failover => true)";

/// `STATEMENT_TIMEOUT` of `TimeoutId` (`utils/timeout.h`: 3 from 13 to 18).
const STATEMENT_TIMEOUT: c_int = 3;

/// Where timeline `old` ended in the history of timeline `current`.
/// Raises (as a panic) when `old` is not in that history.
///
/// # Safety
/// Main thread, in a transaction.
pub unsafe fn timeline_switch_point(old: u32, current: u32) -> u64 {
    unsafe {
        let history = pg_sys::ffi::pg_guard_ffi_boundary(|| readTimeLineHistory(current));
        pg_sys::ffi::pg_guard_ffi_boundary(|| tliSwitchPoint(old, history, std::ptr::null_mut()))
    }
}

/// Writes a non-transactional logical message; returns its end. `flush`
/// asks 17+ to flush it with the record; on 15 the caller flushes
/// ([`pg_sys::XLogFlush`]) and this returns the same.
///
/// # Safety
/// Main thread, on a primary, outside a critical section.
pub unsafe fn log_logical_message(prefix: &CStr, message: &[u8], flush: bool) -> u64 {
    let (prefix, body, len) = (prefix.as_ptr(), message.as_ptr().cast::<c_char>(), message.len());
    unsafe {
        #[cfg(feature = "pg15")]
        let end = {
            let end = pg_sys::ffi::pg_guard_ffi_boundary(|| LogLogicalMessage(prefix, body, len, false));
            if flush {
                pg_sys::XLogFlush(end);
            }
            end
        };
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let end = pg_sys::ffi::pg_guard_ffi_boundary(|| LogLogicalMessage(prefix, body, len, false, flush));
        end
    }
}

/// Arms the statement timeout (`STATEMENT_TIMEOUT`) to fire after `ms`.
///
/// # Safety
/// Main thread, after `InitPostgres`.
pub unsafe fn arm_statement_timeout(ms: i32) {
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| enable_timeout_after(STATEMENT_TIMEOUT, ms)) }
}

/// # Safety
/// Main thread, after `InitPostgres`.
pub unsafe fn disarm_statement_timeout() {
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| disable_timeout(STATEMENT_TIMEOUT, false)) }
}

/// A WaitEventSet that lives as long as the process (17+ ties a set to a
/// resource owner unless given none).
///
/// # Safety
/// Main thread.
pub unsafe fn long_lived_wait_event_set(events: c_int) -> *mut pg_sys::WaitEventSet {
    unsafe {
        #[cfg(feature = "pg15")]
        let set = pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, events);
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let set = {
            let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let set = pg_sys::CreateWaitEventSet(std::ptr::null_mut(), events);
            pg_sys::MemoryContextSwitchTo(previous);
            set
        };
        set
    }
}

/// Acquires the slot `name` for this process, raising when another has it
/// (18: or when it was invalidated).
///
/// # Safety
/// Main thread, in a transaction.
pub unsafe fn acquire_slot(name: &CStr) {
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg17"))]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
        #[cfg(feature = "pg18")]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true, true);
    }
}

/// Sets the handler of `signal` (18's `pqsignal` gives no previous handler
/// back: callers that chain name the one they chain to).
///
/// # Safety
/// Main thread.
pub unsafe fn set_signal_handler(signal: c_int, handler: unsafe extern "C-unwind" fn(c_int)) {
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg17"))]
        pg_sys::pqsignal(signal, Some(handler));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(signal, Some(handler));
    }
}

/// Whether decoding the failover slot this process holds waits for the
/// standbys named in `synchronized_standby_slots` (17+; never on 15).
///
/// # Safety
/// Main thread.
pub unsafe fn waits_for_standbys() -> bool {
    #[cfg(feature = "pg15")]
    let waits = false;
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let waits = unsafe {
        let slot = pg_sys::MyReplicationSlot;
        let names = pg_sys::synchronized_standby_slots;
        !slot.is_null() && (*slot).data.failover && !names.is_null() && *names != 0
    };
    waits
}

/// The value of `synchronized_standby_slots` (17+), for messages.
pub fn synchronized_standby_slots() -> String {
    #[cfg(feature = "pg15")]
    let names = String::new();
    // SAFETY: a GUC string of this process, read on the main thread.
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let names = unsafe {
        let names = pg_sys::synchronized_standby_slots;
        if names.is_null() { String::new() } else { CStr::from_ptr(names).to_string_lossy().into_owned() }
    };
    names
}

/// Whether the standbys named in `synchronized_standby_slots` have the WAL
/// before `lsn` (true when decoding does not wait for them).
///
/// # Safety
/// Main thread.
pub unsafe fn standbys_have(lsn: u64) -> bool {
    #[cfg(feature = "pg15")]
    let have = {
        let _ = lsn;
        true
    };
    // DEBUG2: a missing or lagging standby slot is reported by the worker
    // itself, once, not on every call.
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let have = unsafe { !waits_for_standbys() || pg_sys::StandbySlotsHaveCaughtup(lsn, pg_sys::DEBUG2 as c_int) };
    have
}

/// This process's index in `ProcGlobal->allProcs` (17+: `MyProcNumber`;
/// 15: `MyProc->pgprocno`).
///
/// # Safety
/// After `InitProcess`.
pub unsafe fn my_proc_number() -> i32 {
    unsafe {
        #[cfg(feature = "pg15")]
        let number = (*pg_sys::MyProc).pgprocno;
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let number = pg_sys::MyProcNumber;
        number
    }
}

/// The old and new tuples of an insert, update or delete change (17+ hold
/// `HeapTuple`s; 15 a `ReorderBufferTupleBuf` around one).
///
/// # Safety
/// `change` is a row change the reorder buffer handed to a callback.
pub unsafe fn change_tuples(
    change: *mut pg_sys::ReorderBufferChange,
) -> (Option<pg_sys::HeapTuple>, Option<pg_sys::HeapTuple>) {
    unsafe {
        let tp = &(*change).data.tp;
        #[cfg(feature = "pg15")]
        let tuple = |buf: *mut pg_sys::ReorderBufferTupleBuf| (!buf.is_null()).then(|| &raw mut (*buf).tuple);
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let tuple = |t: pg_sys::HeapTuple| (!t.is_null()).then_some(t);
        (tuple(tp.oldtuple), tuple(tp.newtuple))
    }
}
