//! One long-lived logical decoding context on the worker's slot, read with
//! this library's own output plugin: woken at commit, it reads only WAL that
//! is new and flushed, and never waits for more. What the plugin writes lands
//! in an [`Output`] (memory, then a spill file) until the worker routes it and
//! hands it to the network side; the slot is confirmed only up to what the
//! network side has fanned out.
//!
//! The PostgreSQL 15 call sequence follows `pg_logical_slot_get_changes` and
//! the walsender; the traps (memory contexts, the page reader, historic versus
//! present catalog caches) are described where they are handled.

mod plugin;
pub mod slot;

pub use plugin::{commits_decoded, set_watched};

use super::compat;
use super::interrupts::shutdown_requested;
use super::sql_error::describe;
use super::subxact::committed;
use super::wal;
use crate::bridge::Budget;
use crate::decoded::Output;
use crate::row_format::Row;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use slot::SLOT;
use std::ffi::{CStr, CString, c_char};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

unsafe extern "C-unwind" {
    /// `replication/decode.h`, which pgrx does not bind.
    fn LogicalDecodingProcessRecord(ctx: *mut pg_sys::LogicalDecodingContext, record: *mut pg_sys::XLogReaderState);
}

/// How a [`Decoder::step`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every flushed record has been decoded.
    CaughtUp,
    /// The step's time or output budget ran out; more may be waiting.
    Paused,
    /// SIGTERM.
    Stopped,
}

/// On 17+, a failover slot's decoding goes no further than the WAL the
/// standbys in `synchronized_standby_slots` have, as a walsender's would: what
/// subscribers see is on the standby a failover promotes. Asks the standbys
/// about the flush position, and while they have not got there, about the one
/// asked before, so a steady stream still moves on.
#[derive(Default)]
struct StandbyGate {
    /// The standbys have the WAL before this.
    have: u64,
    asked: u64,
    have_moved: Option<Instant>,
}

impl StandbyGate {
    fn limit(&mut self, flush: u64) -> u64 {
        // SAFETY: main thread; the slot is acquired.
        let have = |lsn| unsafe { compat::standbys_have(lsn) };
        let before = self.have;
        if have(flush) {
            self.have = flush;
        } else {
            if self.asked > self.have && have(self.asked) {
                self.have = self.asked;
            }
            if self.asked <= self.have {
                self.asked = flush;
            }
        }
        if self.have != before || self.have_moved.is_none() {
            self.have_moved = Some(Instant::now());
        }
        self.have
    }
}

pub struct Decoder {
    ctx: *mut pg_sys::LogicalDecodingContext,
    standbys: StandbyGate,
    /// Flushed WAL the standbys do not have yet waits (17+, failover slot).
    held_back: bool,
    /// What the plugin wrote; the context's writer points at it, so it is boxed.
    output: Box<Output>,
    /// Where the reader stood when a step last caught up: everything before
    /// it has been decoded into `output` (or was not for us).
    caught_up_at: u64,
}

/// Why the decoder could not open.
pub enum OpenError {
    /// The slot lost its WAL (`max_slot_wal_keep_size`), or never had any.
    SlotLost,
    Failed(String),
}

impl Decoder {
    /// Acquires the slot and creates the decoding context, positioned at the
    /// slot's `restart_lsn`; commits before its `confirmed_flush` are skipped.
    pub fn open(budget: &Arc<Budget>, spill: PathBuf, memory_limit: usize) -> Result<Decoder, OpenError> {
        let mut output = Box::new(Output::new(spill, budget, memory_limit));
        let output_ptr: *mut Output = &mut *output;
        let name = CString::new(SLOT).expect("no NUL in the slot name");
        // In a transaction: the plugin's startup reads the catalogs, and a
        // context created inside one leaves PROC_IN_LOGICAL_DECODING unset,
        // so the snapshots of the worker's own queries still hold back VACUUM.
        let opened = BackgroundWorker::transaction(AssertUnwindSafe(|| {
            // SAFETY: main thread, in a transaction; `output` is boxed and
            // moves into the decoder with the context.
            committed(|| unsafe { create(&name, output_ptr) })
        }));
        match opened {
            Ok(Ok(ctx)) => {
                Ok(Decoder { ctx, standbys: StandbyGate::default(), held_back: false, output, caught_up_at: 0 })
            }
            Ok(Err(lost)) => Err(lost),
            Err(e) => {
                // SAFETY: main thread; a slot acquired before the error is ours.
                unsafe {
                    if !pg_sys::MyReplicationSlot.is_null() {
                        pg_sys::ReplicationSlotRelease();
                    }
                }
                Err(OpenError::Failed(e.message))
            }
        }
    }

    pub fn output(&mut self) -> &mut Output {
        &mut self.output
    }

    /// The slot's confirmed position when it was opened.
    pub fn confirmed_flush(&self) -> u64 {
        // SAFETY: main thread; the slot is acquired, and only this process moves it.
        unsafe { (*pg_sys::MyReplicationSlot).data.confirmed_flush }
    }

    /// The end of the last WAL record read.
    pub fn read_position(&self) -> u64 {
        // SAFETY: main thread; the context and its reader live as long as the decoder.
        unsafe { (*(*self.ctx).reader).EndRecPtr }
    }

    pub fn caught_up_at(&self) -> u64 {
        self.caught_up_at
    }

    /// How long flushed WAL has waited for the standbys in
    /// `synchronized_standby_slots`, if it waits now.
    pub fn waiting_for_standbys(&self) -> Option<Duration> {
        self.held_back.then(|| self.standbys.have_moved.map_or(Duration::ZERO, |t| t.elapsed()))
    }

    /// Decodes flushed WAL until caught up, or until `max_time` passes or the
    /// output grew by `max_bytes`. Runs outside any transaction (replaying a
    /// commit starts its own). An error leaves the decoder unusable: close it.
    pub fn step(&mut self, max_bytes: u64, max_time: Duration) -> Result<Step, String> {
        let ctx = self.ctx;
        let started = Instant::now();
        let output: *const Output = &*self.output;
        // SAFETY: reads of the boxed output, which the plugin's writer appends to.
        let written = move || unsafe { (*output).memory_bytes() as u64 + (*output).spilled_bytes() };
        let start_bytes = written();
        self.caught_up_at = 0;
        // SAFETY: main thread; reads a position from shared memory.
        let flush = unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) };
        // SAFETY: main thread; the slot is acquired.
        let limit = if unsafe { compat::waits_for_standbys() } { self.standbys.limit(flush) } else { u64::MAX };
        self.held_back = limit < flush;
        // SAFETY: main thread, outside a transaction, with a context created by
        // `open`; memory context and resource owner are restored after every
        // record, since replaying a commit leaves TopMemoryContext current and
        // no resource owner.
        let result = unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            let result = PgTryBuilder::new(AssertUnwindSafe(|| {
                wal::with_read_limit(limit, || {
                    loop {
                        if shutdown_requested() {
                            return Ok((Step::Stopped, 0));
                        }
                        let grown = written().saturating_sub(start_bytes);
                        if grown >= max_bytes || started.elapsed() >= max_time {
                            return Ok((Step::Paused, 0));
                        }
                        // Nothing flushed past the last record: caught up, without
                        // asking the reader, whose "not yet" would also close and
                        // reopen the WAL segment on the next read.
                        let end = (*(*ctx).reader).EndRecPtr;
                        if end != 0 && limit.min(pg_sys::GetFlushRecPtr(std::ptr::null_mut())) <= end {
                            return Ok((Step::CaughtUp, end));
                        }
                        // Trap A: the reader allocates its buffers in the current
                        // context, which must live as long as the decoding context.
                        pg_sys::MemoryContextSwitchTo((*ctx).context);
                        let mut error: *mut c_char = std::ptr::null_mut();
                        let record = pg_sys::XLogReadRecord((*ctx).reader, &mut error);
                        if record.is_null() {
                            pg_sys::MemoryContextSwitchTo(context);
                            if !error.is_null() {
                                let message = CStr::from_ptr(error).to_string_lossy().into_owned();
                                return Err(format!("could not read WAL: {message}"));
                            }
                            return Ok((Step::CaughtUp, (*(*ctx).reader).EndRecPtr));
                        }
                        pg_sys::ffi::pg_guard_ffi_boundary(|| LogicalDecodingProcessRecord(ctx, (*ctx).reader));
                        pg_sys::MemoryContextSwitchTo(context);
                        pg_sys::CurrentResourceOwner = owner;
                    }
                })
            }))
            .catch_others(|e| Err(describe(&e).message))
            .execute();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            result
        };
        let (step, at) = result?;
        self.caught_up_at = at;
        Ok(step)
    }

    /// Confirms that everything before `lsn` has been received, so the slot
    /// may let go of it (and skips it after a restart). Not written to disk
    /// until [`Decoder::save`] or a checkpoint.
    pub fn confirm(&self, lsn: u64) {
        // SAFETY: main thread; the slot is this process's, acquired in `open`.
        unsafe {
            pg_sys::LogicalConfirmReceivedLocation(lsn);
            pg_sys::ReplicationSlotMarkDirty();
        }
    }

    /// Writes the slot's confirmed position to disk (an fsync).
    pub fn save(&self) {
        // SAFETY: main thread; the slot is acquired.
        unsafe { pg_sys::ReplicationSlotSave() };
    }

    /// Frees the context and releases the slot.
    pub fn close(self) {
        let ctx = self.ctx;
        // SAFETY: main thread; after an error inside a step, the replay's
        // transaction (if any) is aborted first and any lightweight lock let
        // go, as the walsender's error cleanup does.
        unsafe {
            let freed = PgTryBuilder::new(AssertUnwindSafe(|| {
                if pg_sys::IsTransactionState() {
                    pg_sys::AbortCurrentTransaction();
                }
                pg_sys::LWLockReleaseAll();
                pg_sys::FreeDecodingContext(ctx);
                Ok(())
            }))
            .catch_others(|e| Err(describe(&e).message))
            .execute();
            if let Err(e) = freed {
                warning!("realtime: freeing the decoding context failed: {e}");
            }
            if !pg_sys::MyReplicationSlot.is_null() {
                pg_sys::ReplicationSlotRelease();
            }
        }
        drop(self.output);
    }
}

/// # Safety
/// Main thread, inside a transaction; `output` outlives the context.
unsafe fn create(name: &CStr, output: *mut Output) -> Result<*mut pg_sys::LogicalDecodingContext, OpenError> {
    unsafe {
        pg_sys::CheckLogicalDecodingRequirements();
        compat::acquire_slot(name);
        let slot = pg_sys::MyReplicationSlot;
        let restart_lsn = (*slot).data.restart_lsn;
        if restart_lsn == 0 {
            pg_sys::ReplicationSlotRelease();
            return Err(OpenError::SlotLost);
        }
        // The reorder buffer spills to disk past the session's
        // logical_decoding_work_mem, which the worker sets (`worker::apply_session_settings`).
        let mut routine = wal::routine();
        // The context's memory is a child of the current context: make it
        // the worker's lifetime, not the transaction's.
        let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let ctx = pg_sys::CreateDecodingContext(
            0, // start at the slot's confirmed_flush
            std::ptr::null_mut(),
            false,
            &mut routine,
            Some(prepare_write),
            Some(write),
            None,
        );
        pg_sys::MemoryContextSwitchTo(previous);
        (*ctx).output_writer_private = output.cast();
        pg_sys::XLogBeginRead((*ctx).reader, restart_lsn);
        Ok(ctx)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn prepare_write(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last: bool,
) {
    // SAFETY: the context's output buffer.
    unsafe { pg_sys::resetStringInfo((*ctx).out) };
}

/// Copies one plugin row into the decoder's [`Output`]. A commit row's LSN
/// is the transaction's end, which is what the slot may be confirmed to.
#[pg_guard]
unsafe extern "C-unwind" fn write(
    ctx: *mut pg_sys::LogicalDecodingContext,
    lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last: bool,
) {
    // SAFETY: `output_writer_private` was set by `create` to the decoder's
    // boxed Output, which outlives the context; `out` holds `len` bytes.
    unsafe {
        if shutdown_requested() {
            // A commit of a million rows is replayed in one call: stop it.
            error!("realtime: decoding stopped for shutdown");
        }
        let output = &mut *((*ctx).output_writer_private as *mut Output);
        let out = &*(*ctx).out;
        let bytes = std::slice::from_raw_parts(out.data as *const u8, out.len as usize);
        // A message's write location is its end: its position on the bus.
        let Some(row) = Row::from_plugin(bytes, lsn) else { return };
        if let Err(e) = output.push(row) {
            error!("realtime: cannot spill decoded messages to disk: {e}");
        }
    }
}

/// Decoding reads the catalogs as they were (historic snapshots), the
/// worker's queries as they are now, and both fill the same caches. Like
/// `pg_logical_slot_get_changes`, throw the caches away at each switch: before
/// decoding when a query ran since, and before a query when decoding stopped
/// short of the end of WAL (a DDL whose invalidation it consumed may still be
/// ahead of it). Trap C.
#[derive(Default)]
pub struct Caches {
    queried: bool,
    decoded_behind: bool,
}

impl Caches {
    pub fn before_decoding(&mut self) {
        if std::mem::take(&mut self.queried) {
            invalidate();
        }
    }

    pub fn after_decoding(&mut self, step: Step) {
        self.decoded_behind = step != Step::CaughtUp;
    }

    pub fn before_query(&mut self) {
        if std::mem::take(&mut self.decoded_behind) {
            invalidate();
        }
        self.queried = true;
    }
}

fn invalidate() {
    // SAFETY: main thread, outside a transaction.
    unsafe { pg_sys::InvalidateSystemCaches() };
}
