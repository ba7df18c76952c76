//! Streaming replication as the bus between nodes. On the primary, with
//! `realtime.bus` on, the worker writes every decoded database broadcast and
//! every change of a published table into WAL once more, as a
//! non-transactional logical message (prefix [`PREFIX`], the row as the
//! output plugin wrote it), after its commit was decoded, so only committed
//! rows travel, in commit order. On a hot standby, the worker reads those
//! messages from its own WAL, up to what recovery has replayed (so the rows
//! they name are visible there), routes row changes against its own replica
//! and delivers to its own sockets.
//!
//! PostgreSQL 15's `LogLogicalMessage` has no flush flag, so the writer
//! flushes once per batch: the walsender streams flushed WAL only.

use super::decoding::{available_end, read_available_page, wal_segment_close_raw, wal_segment_open_raw};
use super::interrupts::shutdown_requested;
use super::plugin::{BROADCAST, GAP, MARK, RELAYED, ROW_CHANGE};
use super::rls;
use crate::bridge::gap::lsn_text;
use crate::bridge::{AuthContext, Commits, DbBroadcast, Extension, Gap, RelayKind, Relayed, Resumed, Resumption};
use crate::bus_seal::{Refusal, Sealer, Verifier};
use crate::decoded::Row;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// The version is part of the prefix: a reader skips envelopes it does not
/// know (v2: presence rows, marks and gaps; a v1 reader would take presence
/// for broadcasts; v3: every message sealed, `crate::bus_seal`). Every node
/// runs the same version.
pub const PREFIX: &CStr = c"realtime.bus.v3";

unsafe extern "C-unwind" {
    /// `replication/message.h`, which pgrx does not bind.
    fn LogLogicalMessage(prefix: *const c_char, message: *const c_char, size: usize, transactional: bool) -> u64;
}

/// The bus message of a decoded row: its plugin tag and text (commits are
/// not sent: messages are written once their commit was decoded; relayed
/// rows came from the bus).
pub fn message(row: &Row) -> Option<String> {
    match row {
        Row::Broadcast(text) => Some(format!("{BROADCAST}{text}")),
        Row::Change(text) => Some(format!("{ROW_CHANGE}{text}")),
        Row::Commit { .. } | Row::Relayed(..) => None,
    }
}

/// The row a bus message carries; None for a tag this version does not know.
pub fn row(message: &str) -> Option<Row> {
    let mut chars = message.chars();
    match chars.next()? {
        BROADCAST => Some(Row::Broadcast(chars.as_str().to_owned())),
        ROW_CHANGE => Some(Row::Change(chars.as_str().to_owned())),
        RELAYED => Some(Row::Relayed(chars.as_str().to_owned(), 0)),
        _ => None,
    }
}

/// Bus messages that are not rows: they tell where the bus stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Everything committed before this position that had rows for the bus
    /// is on it (written by the primary after each batch, and about once a
    /// second while its decoder moves on without rows).
    Mark(u64),
    /// What the nodes could not deliver (written by a promoted primary).
    Gap(Gap),
}

impl Control {
    pub fn message(&self) -> String {
        match self {
            Control::Mark(lsn) => format!("{MARK}{lsn}"),
            Control::Gap(gap) => format!("{GAP}{}", serde_json::to_string(gap).expect("numbers serialize")),
        }
    }

    /// The control a bus message carries, if it is one this version reads.
    pub fn read(message: &str) -> Option<Control> {
        let mut chars = message.chars();
        match chars.next()? {
            MARK => chars.as_str().parse().ok().map(Control::Mark),
            GAP => serde_json::from_str(chars.as_str()).ok().map(Control::Gap),
            _ => None,
        }
    }
}

/// The most broadcasts one resume sends; past it, the rest is reported missed.
const RESUME_MAX: usize = 1000;
/// The most bus bytes, and the longest time, one resume reads (the main
/// thread does nothing else meanwhile; each socket has few requests in
/// flight, and joins are rate-limited).
const RESUME_BYTES: usize = 4 * 1024 * 1024;
const RESUME_TIME: Duration = Duration::from_millis(250);

/// A resuming channel's broadcasts: `topic`'s (the full `realtime:…` one)
/// database and client broadcasts on the bus after `after`, read back from
/// this node's WAL while it is kept. What cannot be read (WAL removed, a
/// position that is no record's end, more than a resume sends) is reported
/// as missed.
pub fn resume(
    topic: &str,
    private: bool,
    after: u64,
    system_identifier: Option<&str>,
    timeline: Option<u32>,
) -> Result<Resumption, String> {
    if !super::settings::bus() {
        return Err("UnableToResume: realtime.bus is off on this node".into());
    }
    // What a client says is checked before it reaches the WAL reader.
    if timeline == Some(0) {
        return Err("UnableToResume: timeline 0 is no timeline (they start at 1)".into());
    }
    // SAFETY: reads a setting fixed at startup.
    let segment_size = u64::from(unsafe { pg_sys::wal_segment_size } as u32);
    if !is_record_boundary(after, segment_size) {
        return Err(format!("UnableToResume: {} is not a position a WAL record ends at", lsn_text(after)));
    }
    let (ours, our_timeline) = epoch();
    let ours = ours.to_string();
    if let Some(asked) = system_identifier
        && asked != ours
    {
        return Err(format!(
            "UnableToResume: the position is from another database cluster (system identifier {asked}, this one is {ours})"
        ));
    }
    // Past the point where two timelines parted, the same position names
    // other WAL: a position of an older timeline resumes from that point.
    let after = match timeline {
        Some(asked) if asked > our_timeline => {
            return Err(format!(
                "UnableToResume: the position is from timeline {asked}, and this node is still on timeline {our_timeline}"
            ));
        }
        Some(asked) if asked < our_timeline => after.min(timeline_end(asked, our_timeline)?),
        _ => after,
    };
    let until = available_end();
    if after >= until {
        return Ok(Resumption { broadcasts: Vec::new(), until: after, missed: None });
    }
    let mut reader = Reader::open(after);
    let mut messages = Vec::new();
    let read = reader.read_until(until, &mut messages, RESUME_BYTES, RESUME_TIME);
    let reached = reader.position();
    reader.close();
    let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
    let mut broadcasts = Vec::new();
    let mut upto = match read {
        Ok(Read::CaughtUp) => until,
        Ok(Read::Paused) => reached,
        Err(_) => after, // nothing could be read
    };
    for (position, message) in &messages {
        if broadcasts.len() == RESUME_MAX {
            upto = broadcasts.last().map_or(after, |b: &Resumed| b.position);
            break;
        }
        let mut chars = message.chars();
        let resumed = match chars.next() {
            Some(BROADCAST) => DbBroadcast::parse(chars.as_str())
                .ok()
                .filter(|(m, _)| m.topic == sub_topic && m.private == private)
                .map(|(m, payload)| Resumed {
                    position: *position,
                    id: Some(m.id),
                    event: m.event,
                    payload: payload.into(),
                    binary: m.binary,
                }),
            Some(RELAYED) => Relayed::parse(chars.as_str())
                .ok()
                .filter(|(r, _)| r.kind == RelayKind::Broadcast && r.topic == topic && r.private == private)
                .map(|(r, payload)| Resumed {
                    position: *position,
                    id: None,
                    event: r.event,
                    payload: payload.into(),
                    binary: r.binary,
                }),
            _ => None,
        };
        broadcasts.extend(resumed);
    }
    let missed = (upto < until).then_some(Gap { from: upto, to: until, commits: None });
    Ok(Resumption { broadcasts, until, missed })
}

unsafe extern "C-unwind" {
    /// `access/timeline.h`, which pgrx does not bind.
    fn readTimeLineHistory(target: pg_sys::TimeLineID) -> *mut pg_sys::List;
    fn tliSwitchPoint(tli: pg_sys::TimeLineID, history: *mut pg_sys::List, next: *mut pg_sys::TimeLineID) -> u64;
}

/// Where timeline `old` ended in the history of timeline `current`.
/// Where a record can end (and so a read begin): not 0, and not inside a
/// page's header (a page's first byte is fine: the reader skips the header).
/// The first page of a segment has the long header. Pure.
fn is_record_boundary(position: u64, segment_size: u64) -> bool {
    let align = |n: usize| n.div_ceil(8) as u64 * 8;
    let header = if segment_size != 0 && position % segment_size < u64::from(pg_sys::XLOG_BLCKSZ) {
        align(size_of::<pg_sys::XLogLongPageHeaderData>())
    } else {
        align(size_of::<pg_sys::XLogPageHeaderData>())
    };
    let in_page = position % u64::from(pg_sys::XLOG_BLCKSZ);
    position != 0 && (in_page == 0 || in_page >= header)
}

fn timeline_end(old: u32, current: u32) -> Result<u64, String> {
    // SAFETY: main thread, in a transaction; the history list is palloc'd in
    // the subtransaction. The functions are declared here, not by pgrx: each
    // call goes through pgrx's guard, so an ERROR (a timeline not in the
    // history) becomes a panic the subtransaction catches and rolls back,
    // never a longjmp over Rust frames.
    super::subxact::rolled_back(|| unsafe {
        let history = pg_sys::ffi::pg_guard_ffi_boundary(|| readTimeLineHistory(current));
        pg_sys::ffi::pg_guard_ffi_boundary(|| tliSwitchPoint(old, history, std::ptr::null_mut()))
    })
    .map_err(|e| format!("UnableToResume: timeline {old} is not in this node's history: {e}"))
}

/// Writes client broadcasts ([`crate::bridge::Relayed`] rows) to the bus.
pub fn write_relayed(rows: &[String]) {
    write(&rows.iter().map(|r| format!("{RELAYED}{r}")).collect::<Vec<_>>());
}

/// A hot standby's worker relays its clients' broadcasts here, on the
/// primary (over `realtime.primary_conninfo`, as `realtime_relay`).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn bus_relay(rows: Vec<String>) {
    if in_recovery() {
        error!("realtime.bus_relay writes WAL: call it on the primary");
    }
    write_relayed(&rows);
    // Non-transactional messages wake no one at commit: the worker here
    // decodes them for its own sockets at once, not on its fallback timer.
    super::wake::wake_worker();
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION realtime.bus_relay(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.bus_relay(text[]) TO realtime_relay;
"#,
    name = "bus_relay_grants",
    requires = [bus_relay]
);

/// A standby's private-channel read check, run here on the primary as the
/// worker runs it (the probe writes). The checks act as the client's role:
/// the caller is `realtime_relay` (a member of the roles the worker may
/// act as) or a superuser; EXECUTE is granted to no one else.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn bus_read_permissions(
    role: String,
    claims: String,
    sub: Option<String>,
    topic: String,
    presence: bool,
    headers: default!(Option<String>, "NULL"),
) -> TableIterator<'static, (name!(broadcast, bool), name!(presence, bool))> {
    let ctx = AuthContext { role, claims_json: claims, sub, headers };
    match rls::read_permissions(&[rls::ReadProbe { ctx: &ctx, topic: &topic, presence }]).remove(0) {
        Ok(read) => TableIterator::once((read.broadcast, read.presence)),
        Err(e) => error!("{e}"),
    }
}

/// A standby's private-channel write check (`broadcast` or `presence`).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn bus_write_permission(
    role: String,
    claims: String,
    sub: Option<String>,
    topic: String,
    extension: String,
    headers: default!(Option<String>, "NULL"),
) -> bool {
    let ctx = AuthContext { role, claims_json: claims, sub, headers };
    let extension = match extension.as_str() {
        "presence" => Extension::Presence,
        _ => Extension::Broadcast,
    };
    rls::write_permission(&ctx, &topic, extension).unwrap_or_else(|e| error!("{e}"))
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.bus_write_permission(text, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean, text) TO realtime_relay;
GRANT EXECUTE ON FUNCTION realtime.bus_write_permission(text, text, text, text, text, text) TO realtime_relay;
"#,
    name = "bus_check_grants",
    requires = [bus_read_permissions, bus_write_permission]
);

thread_local! {
    /// This process's seals: a random writer id, then a counter.
    static SEALER: RefCell<Sealer> = RefCell::new(Sealer::new(uuid::Uuid::new_v4().as_u64_pair().0));
}

/// Writes bus messages, each sealed, and flushes them; returns the end of
/// each, its position on the bus (none on a standby, or without a key).
pub fn write(messages: &[String]) -> Vec<u64> {
    if in_recovery() {
        return Vec::new(); // a standby cannot write WAL; its relays go to the primary
    }
    let Some(key) = super::bus_key::key() else {
        refused(Refusal::NoKey);
        return Vec::new();
    };
    let ends: Vec<u64> = messages
        .iter()
        .map(|body| {
            // SAFETY: main thread, on a primary, outside any critical section;
            // both buffers outlive the call; an ERROR becomes a Rust panic.
            unsafe {
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    let position = pg_sys::GetXLogInsertRecPtr();
                    let sealed = SEALER.with(|s| s.borrow_mut().seal(key, position, body));
                    LogLogicalMessage(PREFIX.as_ptr(), sealed.as_ptr().cast(), sealed.len(), false)
                })
            }
        })
        .collect();
    if let Some(&end) = ends.last() {
        // SAFETY: main thread; flushing WAL this process wrote.
        unsafe { pg_sys::XLogFlush(end) };
    }
    ends
}

/// The body of a bus message that ends at `end`, if this node's key seals
/// it and `verifier` has not seen it; None otherwise (said in the log, at
/// most once a minute). With `realtime.bus` off, none.
pub fn open(verifier: &mut Verifier, end: u64, sealed: &[u8]) -> Option<String> {
    if !super::settings::bus() {
        return None;
    }
    match verifier.open(super::bus_key::key(), end, sealed) {
        Ok(body) => std::str::from_utf8(body).ok().map(str::to_owned),
        Err(refusal) => {
            refused(refusal);
            None
        }
    }
}

/// Says why bus messages are dropped, once a minute at most: a forged one
/// is somebody's attempt, and they could send a million.
fn refused(refusal: Refusal) {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
        static SINCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    SINCE.with(|n| n.set(n.get() + 1));
    if LAST.with(|l| l.get()).is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    LAST.with(|l| l.set(Some(Instant::now())));
    let dropped = SINCE.with(|n| n.replace(0));
    warning!("realtime: dropped {dropped} bus message(s) with prefix {PREFIX:?}: {refusal}");
}

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
            super::wake::bus_replayed((*record).EndRecPtr);
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
    (prefix == PREFIX.to_bytes_with_nul()).then_some((db, message))
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
        let mut routine = pg_sys::XLogReaderRoutine {
            page_read: Some(read_available_page),
            segment_open: Some(wal_segment_open_raw),
            segment_close: Some(wal_segment_close_raw),
        };
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
            .catch_others(|e| Err(super::subxact::describe(&e).message))
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

/// This server's epoch: its system identifier, and the timeline it writes
/// (a primary) or replays (a standby). A promotion starts a new timeline.
pub fn epoch() -> (u64, u32) {
    // SAFETY: reads shared state set at startup and by recovery.
    unsafe {
        let mut timeline: pg_sys::TimeLineID = 0;
        if pg_sys::RecoveryInProgress() {
            pg_sys::GetXLogReplayRecPtr(&mut timeline);
        } else {
            timeline = pg_sys::GetWALInsertionTimeLine();
        }
        (pg_sys::GetSystemIdentifier(), timeline)
    }
}

/// A hot standby serves clients only with `realtime.bus` on: a plain replica
/// opens no port. Waits for that, or a promotion; false on shutdown.
pub fn wait_until_serving() -> bool {
    super::maintenance::wait_until(
        "realtime: this server is a hot standby and realtime.bus is off: waiting for a promotion or realtime.bus = on",
        Duration::from_secs(1),
        || !in_recovery() || super::settings::bus(),
    )
}

/// Whether this server is a standby (in recovery).
pub fn in_recovery() -> bool {
    // SAFETY: reads shared state.
    unsafe { pg_sys::RecoveryInProgress() }
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
    fn record_boundaries_are_not_inside_page_headers() {
        let segment = 16 * 1024 * 1024;
        let page = u64::from(pg_sys::XLOG_BLCKSZ);
        assert!(!is_record_boundary(0, segment));
        assert!(!is_record_boundary(1, segment), "inside the segment's long header");
        assert!(!is_record_boundary(segment + 39, segment));
        assert!(is_record_boundary(segment + 40, segment));
        assert!(!is_record_boundary(segment + page + 16, segment), "inside a short header");
        assert!(is_record_boundary(segment + page + 24, segment));
        assert!(is_record_boundary(segment + page, segment), "a page's first byte: the reader skips its header");
        assert!(is_record_boundary(u64::MAX - 7, segment));
    }

    #[test]
    fn rows_travel_with_their_tag() {
        for row in [Row::Broadcast(r#"{"topic":"t"}"#.into()), Row::Change(r#"{"rel":1}"#.into())] {
            assert_eq!(super::row(&message(&row).unwrap()), Some(row));
        }
        assert_eq!(message(&Row::Relayed("r".into(), 7)), None, "relayed rows are on the bus already");
        assert_eq!(super::row("Xr"), Some(Row::Relayed("r".into(), 0)));
        assert_eq!(message(&Row::Commit { lsn: 1, committed_at_us: 2 }), None);
        assert_eq!(super::row("Z{}"), None, "unknown tags are skipped");
        assert_eq!(super::row(""), None);
    }

    #[test]
    fn controls_round_trip_and_rows_are_not_controls() {
        let gap = Gap { from: 1, to: 2, commits: Some(Commits { count: 3, first_at_us: 4, last_at_us: 5 }) };
        for control in [Control::Mark(0x4B08_A7D8), Control::Gap(gap)] {
            assert_eq!(Control::read(&control.message()), Some(control));
        }
        assert_eq!(Control::read("P"), None);
        assert_eq!(Control::read("Gnot json"), None);
        assert_eq!(Control::read(&message(&Row::Broadcast("{}".into())).unwrap()), None);
    }

    #[test]
    fn our_prefix_only() {
        let row = br#"{"topic":"t"}"#;
        assert_eq!(our_message(&record(5, PREFIX.to_bytes_with_nul(), row)), Some((5, &row[..])));
        assert_eq!(our_message(&record(5, b"realtime.bus.v1\0", row)), None, "another version's");
        assert_eq!(our_message(&record(5, b"other\0", row)), None);
        let mut transactional = record(5, PREFIX.to_bytes_with_nul(), row);
        transactional[4] = 1;
        assert_eq!(our_message(&transactional), None, "transactional messages may belong to an abort");
    }

    #[test]
    fn short_or_lying_records_are_skipped() {
        let mut data = record(5, PREFIX.to_bytes_with_nul(), b"abc");
        data.truncate(data.len() - 1);
        assert_eq!(our_message(&data), None, "message shorter than its size");
        assert_eq!(our_message(&data[..10]), None, "header cut short");
        let mut huge = record(5, PREFIX.to_bytes_with_nul(), b"");
        huge[16..24].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(our_message(&huge), None, "sizes that overflow");
    }
}
