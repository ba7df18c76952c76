//! Reading this server's own WAL without waiting: the page reader both the
//! decoder and the bus reader give Postgres's `XLogReader`.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicU64, Ordering};

/// How far the decoder may read, short of what is flushed: not past what the
/// standbys in `synchronized_standby_slots` have (17+). `u64::MAX`: no limit.
static READ_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Runs `f` with reads limited to `limit`.
pub fn with_read_limit<T>(limit: u64, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            READ_LIMIT.store(u64::MAX, Ordering::Relaxed);
        }
    }
    READ_LIMIT.store(limit, Ordering::Relaxed);
    let _reset = Reset;
    f()
}

unsafe extern "C-unwind" {
    // The reader's routine needs C function pointers; pgrx's `pg_sys`
    // functions of these names are Rust wrappers.
    #[link_name = "wal_segment_open"]
    fn wal_segment_open_raw(state: *mut pg_sys::XLogReaderState, seg: pg_sys::XLogSegNo, tli: *mut pg_sys::TimeLineID);
    #[link_name = "wal_segment_close"]
    fn wal_segment_close_raw(state: *mut pg_sys::XLogReaderState);
}

/// The routine of a reader that reads only what [`available_end`] allows.
pub fn routine() -> pg_sys::XLogReaderRoutine {
    pg_sys::XLogReaderRoutine {
        page_read: Some(read_available_page),
        segment_open: Some(wal_segment_open_raw),
        segment_close: Some(wal_segment_close_raw),
    }
}

/// How far WAL can be read: what is flushed on a primary, what recovery has
/// replayed on a standby.
pub fn available_end() -> u64 {
    // SAFETY: main thread; reads positions from shared memory.
    unsafe {
        if pg_sys::RecoveryInProgress() {
            pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut())
        } else {
            pg_sys::GetFlushRecPtr(std::ptr::null_mut())
        }
    }
}

/// Reads a WAL page only once it is available up to what the record needs
/// ([`available_end`]); otherwise says "not yet" (-1), which makes
/// `XLogReadRecord` return NULL without an error and retry the same record on
/// the next call. The stock `read_local_xlog_page` would sleep until the rest
/// is there, and `read_local_xlog_page_no_wait` writes into `private_data`,
/// which logical decoding uses for the context (trap B).
#[pg_guard]
unsafe extern "C-unwind" fn read_available_page(
    reader: *mut pg_sys::XLogReaderState,
    target_page: pg_sys::XLogRecPtr,
    request_len: c_int,
    target_record: pg_sys::XLogRecPtr,
    buffer: *mut c_char,
) -> c_int {
    // SAFETY: arguments from the WAL reader, passed on unchanged.
    unsafe {
        if target_page + request_len as u64 > available_end().min(READ_LIMIT.load(Ordering::Relaxed)) {
            return -1;
        }
        pg_sys::read_local_xlog_page(reader, target_page, request_len, target_record, buffer)
    }
}
