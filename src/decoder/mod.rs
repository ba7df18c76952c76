//! The logical decoding output plugin (`realtime`), exported by this library
//! and consumed by the worker through its own slot. Each committed insert into
//! a partition of `realtime.messages` with `extension = 'broadcast'` becomes
//! one row of JSON; a transaction that produced any ends with a commit row, so
//! the worker can advance the slot to whole transactions only.
//!
//! Row changes of published tables (Postgres Changes) are the next kind of
//! change to add in `change`.

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::tupdesc::PgTupleDesc;
use serde_json::{Value, json};

/// The text of the commit row.
pub const COMMIT: &str = "C";

/// A decoded broadcast, as the plugin writes it and the worker reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbBroadcast {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub private: bool,
    pub payload: Value,
}

struct State {
    realtime_namespace: pg_sys::Oid,
    /// Whether the current transaction produced a row.
    wrote: bool,
}

/// The entry point Postgres looks up by name when a slot uses this plugin.
///
/// # Safety
/// Called by Postgres with a valid callbacks struct.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: Postgres passes a valid, writable struct.
    unsafe {
        (*cb).startup_cb = Some(startup);
        (*cb).begin_cb = Some(begin);
        (*cb).change_cb = Some(change);
        (*cb).commit_cb = Some(commit);
        (*cb).shutdown_cb = Some(shutdown);
    }
}

unsafe fn state<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut State {
    // SAFETY: set in `startup`, freed in `shutdown`.
    unsafe { &mut *((*ctx).output_plugin_private as *mut State) }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    options: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: valid pointers from Postgres; the state lives until `shutdown`.
    unsafe {
        (*options).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
        let realtime_namespace = pg_sys::get_namespace_oid(c"realtime".as_ptr(), true);
        let state = Box::new(State { realtime_namespace, wrote: false });
        (*ctx).output_plugin_private = Box::into_raw(state).cast();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(ctx: *mut pg_sys::LogicalDecodingContext) {
    // SAFETY: the pointer came from Box::into_raw in `startup`.
    unsafe {
        let private = (*ctx).output_plugin_private as *mut State;
        if !private.is_null() {
            drop(Box::from_raw(private));
            (*ctx).output_plugin_private = std::ptr::null_mut();
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(ctx: *mut pg_sys::LogicalDecodingContext, _txn: *mut pg_sys::ReorderBufferTXN) {
    // SAFETY: state set in `startup`.
    unsafe { state(ctx).wrote = false };
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: valid context from Postgres.
    unsafe {
        if state(ctx).wrote {
            write(ctx, COMMIT);
        }
    }
}

/// Partitions of `realtime.messages` are the partitions in schema `realtime`.
unsafe fn is_messages_partition(state: &State, relation: pg_sys::Relation) -> bool {
    // SAFETY: a valid relation from Postgres.
    unsafe {
        let class = &*(*relation).rd_rel;
        class.relnamespace == state.realtime_namespace && class.relispartition
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: valid pointers from Postgres for the duration of the callback.
    unsafe {
        if (*change).action != pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT {
            return;
        }
        if !is_messages_partition(state(ctx), relation) {
            return;
        }
        let Some(tuple) = new_tuple(change) else { return };
        let tuple = PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked((*relation).rd_att), tuple);
        if let Some(message) = broadcast_row(&tuple) {
            write(ctx, &message);
            state(ctx).wrote = true;
        }
    }
}

#[cfg(not(feature = "pg17"))]
unsafe fn new_tuple(change: *mut pg_sys::ReorderBufferChange) -> Option<pg_sys::HeapTuple> {
    // SAFETY: an insert change carries its new tuple.
    unsafe {
        let buf = (*change).data.tp.newtuple;
        (!buf.is_null()).then(|| &raw mut (*buf).tuple)
    }
}

#[cfg(feature = "pg17")]
unsafe fn new_tuple(change: *mut pg_sys::ReorderBufferChange) -> Option<pg_sys::HeapTuple> {
    // SAFETY: an insert change carries its new tuple.
    unsafe {
        let tuple = (*change).data.tp.newtuple;
        (!tuple.is_null()).then_some(tuple)
    }
}

/// The JSON row for a broadcast insert; None for other extensions (presence
/// probes never commit, but a user could insert anything).
fn broadcast_row(tuple: &PgHeapTuple<'_, pgrx::AllocatedByPostgres>) -> Option<String> {
    let text = |name: &str| tuple.get_by_name::<String>(name).ok().flatten();
    if text("extension").as_deref() != Some("broadcast") {
        return None;
    }
    let id = tuple.get_by_name::<pgrx::Uuid>("id").ok().flatten()?;
    let payload = tuple.get_by_name::<pgrx::JsonB>("payload").ok().flatten().map(|j| j.0).unwrap_or(Value::Null);
    let row = json!({
        "id": uuid::Uuid::from_bytes(*id.as_bytes()).to_string(),
        "topic": text("topic")?,
        "event": text("event").unwrap_or_default(),
        "private": tuple.get_by_name::<bool>("private").ok().flatten().unwrap_or(false),
        "payload": payload,
    });
    Some(row.to_string())
}

unsafe fn write(ctx: *mut pg_sys::LogicalDecodingContext, text: &str) {
    // SAFETY: the output buffer belongs to the context; Prepare/Write bracket it.
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, true);
        pg_sys::appendBinaryStringInfo((*ctx).out, text.as_ptr().cast(), text.len() as i32);
        pg_sys::OutputPluginWrite(ctx, true);
    }
}
