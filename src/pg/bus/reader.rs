//! A hot standby's bus reader: the bus messages in WAL recovery has replayed,
//! read with the decoder's page reader; and the replay hook that wakes the
//! worker as recovery replays one.

use super::envelope::open;
use crate::bridge::Commits;
use crate::bus_seal::Verifier;
use crate::pg::interrupts::shutdown_requested;
use crate::pg::sql_error::describe;
use crate::pg::wake;
use crate::pg::wal::{available_end, routine};
use crate::row_format::BUS_PREFIX;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, c_char};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

fn main_data(record: &pg_sys::DecodedXLogRecord) -> &[u8] {
    if record.main_data.is_null() {
        return &[];
    }
    // SAFETY: the decoded record owns `main_data_len` bytes at `main_data`.
    unsafe { std::slice::from_raw_parts(record.main_data as *const u8, record.main_data_len as usize) }
}

/// `access/xact.h`: the operation bits of an xact record's info, and the
/// two that commit.
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;

/// A commit record's commit time (Unix microseconds); None for other records.
fn commit_time(record: &pg_sys::DecodedXLogRecord) -> Option<i64> {
    let header = &record.header;
    let op = header.xl_info & XLOG_XACT_OPMASK;
    if header.xl_rmid as u32 != pg_sys::RmgrIds::RM_XACT_ID
        || !matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED)
    {
        return None;
    }
    // xl_xact_commit starts with its TimestampTz.
    let time = main_data(record).get(..8)?;
    Some(i64::from_ne_bytes(time.try_into().ok()?) + POSTGRES_EPOCH_US)
}

/// Recovery's redo of logical messages (`logicalmsg_redo`, which does nothing).
static mut REDO_LOGICAL_MESSAGE: Option<unsafe extern "C-unwind" fn(*mut pg_sys::XLogReaderState)> = None;

/// On a hot standby, recovery wakes the worker as it replays a bus message,
/// rather than the worker looking every few milliseconds. PostgreSQL 15 has
/// no hook for this, but its resource manager table is writable (for custom
/// resource managers): the redo of logical messages, which does nothing, is
/// wrapped; the original runs first. From `_PG_init` while preloading, so the
/// startup process, forked from the postmaster, inherits it.
pub fn wake_on_replay() {
    // SAFETY: the postmaster, single-threaded, before any process replays WAL;
    // RM_LOGICALMSG_ID is a built-in entry of the table.
    unsafe {
        let table = (&raw mut pg_sys::RmgrTable).cast::<pg_sys::RmgrData>();
        let entry = table.add(pg_sys::RmgrIds::RM_LOGICALMSG_ID as usize);
        REDO_LOGICAL_MESSAGE = (*entry).rm_redo;
        (*entry).rm_redo = Some(redo_logical_message);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn redo_logical_message(record: *mut pg_sys::XLogReaderState) {
    // SAFETY: a record recovery decoded, valid for the call; the saved redo
    // function is Postgres's own.
    unsafe {
        if let Some(redo) = REDO_LOGICAL_MESSAGE {
            redo(record);
        }
        let decoded = (*record).record;
        if !decoded.is_null() && our_message(main_data(&*decoded)).is_some() {
            wake::bus_replayed((*record).EndRecPtr);
        }
    }
}

/// `xl_logical_message` as PostgreSQL 15 lays it out, before its payload
/// (the NUL-terminated prefix, then the message).
#[repr(C)]
struct LogicalMessageHeader {
    db_id: pg_sys::Oid,
    transactional: bool,
    prefix_size: usize,
    message_size: usize,
}

/// The database and message of a logical message record's main data, if it
/// carries our prefix. Pure: reads only `data`.
fn our_message(data: &[u8]) -> Option<(u32, &[u8])> {
    let header = size_of::<LogicalMessageHeader>();
    if data.len() < header {
        return None;
    }
    let word = |at: usize| usize::from_ne_bytes(data[at..at + size_of::<usize>()].try_into().expect("a word"));
    let db = u32::from_ne_bytes(data[0..4].try_into().expect("four bytes"));
    if data[4] != 0 {
        return None; // transactional: not ours, ours are written after their commit
    }
    let (prefix_size, message_size) = (word(8), word(16));
    let payload = &data[header..];
    let prefix = payload.get(..prefix_size)?;
    let message = payload.get(prefix_size..prefix_size.checked_add(message_size)?)?;
    (prefix == BUS_PREFIX.to_bytes_with_nul()).then_some((db, message))
}

/// How a [`Reader::read`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Everything replayed has been read.
    CaughtUp,
    /// Stopped for time or size; more is waiting.
    Paused,
}

/// Reads this standby's replayed WAL for bus messages.
pub struct Reader {
    reader: *mut pg_sys::XLogReaderState,
    database: pg_sys::Oid,
    /// Where reading started, until the first record is read.
    start: u64,
    verifier: Verifier,
}

impl Reader {
    /// Starts reading at `start`, the end of a replayed record.
    pub fn open(start: u64) -> Reader {
        let mut routine = routine();
        // SAFETY: main thread; the reader lives in TopMemoryContext until `close`.
        unsafe {
            let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let reader = pg_sys::XLogReaderAllocate(
                pg_sys::wal_segment_size,
                std::ptr::null(),
                &mut routine,
                std::ptr::null_mut(),
            );
            pg_sys::MemoryContextSwitchTo(previous);
            if reader.is_null() {
                error!("realtime: out of memory for the bus reader");
            }
            pg_sys::XLogBeginRead(reader, start);
            Reader { reader, database: pg_sys::MyDatabaseId, start, verifier: Verifier::default() }
        }
    }

    /// Where reading started.
    pub fn started_at(&self) -> u64 {
        self.start
    }

    /// The end of the last record read.
    pub fn position(&self) -> u64 {
        // SAFETY: main thread; the reader is ours.
        let end = unsafe { (*self.reader).EndRecPtr };
        if end == 0 { self.start } else { end }
    }

    /// Appends the messages of records replayed since the last call to
    /// `out`, each with its position (its record's end), for up to
    /// `max_time` or `max_bytes` of messages.
    pub fn read(&mut self, out: &mut Vec<(u64, String)>, max_bytes: usize, max_time: Duration) -> Result<Read, String> {
        self.read_until(u64::MAX, out, max_bytes, max_time)
    }

    /// [`Reader::read`], up to `until` at most.
    pub fn read_until(
        &mut self,
        until: u64,
        out: &mut Vec<(u64, String)>,
        max_bytes: usize,
        max_time: Duration,
    ) -> Result<Read, String> {
        let mut bytes = 0;
        let database = self.database.to_u32();
        let reader = self.reader;
        let mut verifier = std::mem::take(&mut self.verifier);
        let read = self.each_record(until, max_time, |record| {
            if record.header.xl_rmid as u32 == pg_sys::RmgrIds::RM_LOGICALMSG_ID
                && let Some((db, message)) = our_message(main_data(record))
                && db == database
            {
                // SAFETY: the reader is ours; EndRecPtr is this record's end.
                let end = unsafe { (*reader).EndRecPtr };
                if let Some(body) = open(&mut verifier, end, message) {
                    bytes += body.len();
                    out.push((end, body));
                }
            }
            bytes >= max_bytes
        });
        self.verifier = verifier;
        read
    }

    /// Counts the transactions that committed from here up to `until` (in
    /// any database: a commit record does not always name its database).
    pub fn commits_until(&mut self, until: u64, max_time: Duration) -> Result<Commits, String> {
        let mut commits = Commits { count: 0, first_at_us: 0, last_at_us: 0 };
        let read = self.each_record(until, max_time, |record| {
            if let Some(at) = commit_time(record) {
                commits.count += 1;
                if commits.count == 1 {
                    commits.first_at_us = at;
                }
                commits.last_at_us = at;
            }
            false
        })?;
        match read {
            Read::CaughtUp => Ok(commits),
            Read::Paused => Err(format!("counting commits took longer than {max_time:?}")),
        }
    }

    /// Reads records up to `until` (or what is available), for up to
    /// `max_time`, handing each to `visit`, which says when to pause.
    fn each_record(
        &mut self,
        until: u64,
        max_time: Duration,
        mut visit: impl FnMut(&pg_sys::DecodedXLogRecord) -> bool,
    ) -> Result<Read, String> {
        let started = Instant::now();
        let reader = self.reader;
        let start = self.start;
        // SAFETY: main thread, outside a transaction; the reader allocates in
        // TopMemoryContext (trap A of the decoder), restored after.
        unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let result = PgTryBuilder::new(AssertUnwindSafe(|| {
                loop {
                    if shutdown_requested() || started.elapsed() >= max_time {
                        return Ok(Read::Paused);
                    }
                    let end = if (*reader).EndRecPtr == 0 { start } else { (*reader).EndRecPtr };
                    if available_end().min(until) <= end {
                        return Ok(Read::CaughtUp);
                    }
                    pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
                    let mut error: *mut c_char = std::ptr::null_mut();
                    let record = pg_sys::XLogReadRecord(reader, &mut error);
                    pg_sys::MemoryContextSwitchTo(context);
                    if record.is_null() {
                        if !error.is_null() {
                            let message = CStr::from_ptr(error).to_string_lossy().into_owned();
                            return Err(format!("could not read WAL: {message}"));
                        }
                        return Ok(Read::CaughtUp);
                    }
                    if visit(&*(*reader).record) {
                        return Ok(Read::Paused);
                    }
                }
            }))
            .catch_others(|e| Err(describe(&e).message))
            .execute();
            pg_sys::MemoryContextSwitchTo(context);
            result
        }
    }

    pub fn close(self) {
        // SAFETY: main thread; the reader is ours and not used again.
        unsafe { pg_sys::XLogReaderFree(self.reader) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(db: u32, prefix: &[u8], message: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend(db.to_ne_bytes());
        data.extend([0u8; 4]); // transactional, then padding
        data.extend(prefix.len().to_ne_bytes());
        data.extend(message.len().to_ne_bytes());
        data.extend(prefix);
        data.extend(message);
        data
    }

    #[test]
    fn our_prefix_only() {
        let row = br#"{"topic":"t"}"#;
        assert_eq!(our_message(&record(5, BUS_PREFIX.to_bytes_with_nul(), row)), Some((5, &row[..])));
        assert_eq!(our_message(&record(5, b"realtime.bus.v1\0", row)), None, "another version's");
        assert_eq!(our_message(&record(5, b"other\0", row)), None);
        let mut transactional = record(5, BUS_PREFIX.to_bytes_with_nul(), row);
        transactional[4] = 1;
        assert_eq!(our_message(&transactional), None, "transactional messages may belong to an abort");
    }

    #[test]
    fn short_or_lying_records_are_skipped() {
        let mut data = record(5, BUS_PREFIX.to_bytes_with_nul(), b"abc");
        data.truncate(data.len() - 1);
        assert_eq!(our_message(&data), None, "message shorter than its size");
        assert_eq!(our_message(&data[..10]), None, "header cut short");
        let mut huge = record(5, BUS_PREFIX.to_bytes_with_nul(), b"");
        huge[16..24].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(our_message(&huge), None, "sizes that overflow");
    }
}
