//! The logical decoding output plugin (`realtime`), exported by this library
//! and run by the worker's own decoding context (`super::Decoder`), or by SQL
//! such as `pg_logical_slot_peek_changes` on another slot. Rows it writes
//! (in the format of `crate::row_format`):
//! - `B{json}`: a committed insert into a partition of `realtime.messages`
//!   with `extension = 'broadcast'`;
//! - `R{json}`: an insert, update or delete of a table some `postgres_changes`
//!   subscriber watches (the worker, which runs the decoding in its own
//!   process, names them with [`set_watched`]), or, for the bus to hot
//!   standbys, of any table in the `supabase_realtime` publication;
//! - `C{commit time}`: the end of a transaction that produced any of the
//!   above, with its commit time in Unix microseconds, so the worker can
//!   advance the slot to whole transactions only and time their delivery.

use crate::bridge::DbBroadcast;
#[cfg(doc)]
use crate::changes::RowChange;
use crate::pg::compat;
use crate::row_format::{BROADCAST, BUS_PREFIX, COMMIT, RELAYED, ROW_CHANGE, tagged};
use base64::Engine;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::tupdesc::PgTupleDesc;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;

thread_local! {
    /// Tables whose row changes are decoded (by relation oid).
    static WATCHED: RefCell<HashSet<u32>> = RefCell::new(HashSet::new());
    /// Also every table in the `supabase_realtime` publication.
    static ALL_PUBLISHED: Cell<bool> = const { Cell::new(false) };
    /// Transactions decoded in this process, rows or not.
    static COMMITS: Cell<u64> = const { Cell::new(0) };
}

/// Transactions this process has decoded, with rows for it or not.
pub fn commits_decoded() -> u64 {
    COMMITS.with(Cell::get)
}

/// Names the tables whose changes the next decoding calls in this process
/// emit, and whether every published table's changes are emitted too.
pub fn set_watched(relids: impl IntoIterator<Item = u32>, all_published: bool) {
    WATCHED.with(|w| *w.borrow_mut() = relids.into_iter().collect());
    ALL_PUBLISHED.with(|a| a.set(all_published));
}

/// Whether the relation is in the `supabase_realtime` publication, as of the
/// change being decoded (catalog lookups see the historic snapshot).
unsafe fn is_published(relation: pg_sys::Relation) -> bool {
    // SAFETY: syscache lookups during decoding; the lists live in the
    // per-change memory context.
    unsafe {
        let publication = pg_sys::get_publication_oid(c"supabase_realtime".as_ptr(), true);
        if publication == pg_sys::InvalidOid {
            return false;
        }
        if (*pg_sys::GetPublication(publication)).alltables {
            return true;
        }
        let relid = (*relation).rd_id;
        pg_sys::list_member_oid(pg_sys::GetRelationPublications(relid), publication)
            || pg_sys::list_member_oid(pg_sys::GetSchemaPublications((*(*relation).rd_rel).relnamespace), publication)
    }
}

/// Microseconds between the Postgres epoch (2000-01-01) and the Unix epoch.
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;

struct State {
    realtime_namespace: pg_sys::Oid,
    /// Whether the current transaction produced a row.
    wrote: bool,
    /// Where one change is decoded, reset after it: replaying a commit runs
    /// in a transaction, and a million changes would otherwise pile up in
    /// its memory until the end.
    memory: pg_sys::MemoryContext,
    /// Which bus messages are genuine and new.
    verifier: crate::bus_seal::Verifier,
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
        (*cb).message_cb = Some(message);
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
        let memory = pg_sys::AllocSetContextCreateExtended(
            (*ctx).context,
            c"realtime output plugin".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let state = Box::new(State { realtime_namespace, wrote: false, memory, verifier: Default::default() });
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
    txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    COMMITS.with(|c| c.set(c.get() + 1));
    // SAFETY: valid context and transaction from Postgres.
    unsafe {
        if state(ctx).wrote {
            write(ctx, &tagged(COMMIT, &((*txn).xact_time.commit_time + POSTGRES_EPOCH_US).to_string()));
        }
    }
}

/// A logical message: the client broadcasts other nodes relayed to the bus
/// (`X{row}`, written by `realtime.bus_relay`) reach this node's sockets too.
/// Only sealed ones (`crate::bus_seal`), with `realtime.bus` on: anyone can
/// call `pg_logical_emit_message`.
#[pg_guard]
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    end: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    message: *const std::ffi::c_char,
) {
    // SAFETY: valid pointers from Postgres for the duration of the callback.
    unsafe {
        if transactional || std::ffi::CStr::from_ptr(prefix) != BUS_PREFIX {
            return;
        }
        let bytes = std::slice::from_raw_parts(message as *const u8, size);
        if let Some(body) = crate::pg::bus::open(&mut state(ctx).verifier, end, bytes)
            && body.as_bytes().first() == Some(&RELAYED)
        {
            write(ctx, &body);
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
    txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: valid pointers from Postgres; the state's context lives as
    // long as the decoding context (an error resets it with the replay).
    unsafe {
        let memory = state(ctx).memory;
        let previous = pg_sys::MemoryContextSwitchTo(memory);
        decode_change(ctx, txn, relation, change);
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextReset(memory);
    }
}

unsafe fn decode_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: valid pointers from Postgres for the duration of the callback.
    unsafe {
        let action = (*change).action;
        if is_messages_partition(state(ctx), relation) {
            if action != pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT {
                return;
            }
            let (_, Some(tuple)) = compat::change_tuples(change) else { return };
            let payload = raw_column(tuple, (*relation).rd_att, "payload");
            let tuple = PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked((*relation).rd_att), tuple);
            if let Some(message) = broadcast_row(&tuple, payload) {
                write(ctx, &tagged(BROADCAST, &message));
                state(ctx).wrote = true;
            }
            return;
        }
        let relid = (*relation).rd_id.to_u32();
        let wanted =
            WATCHED.with(|w| w.borrow().contains(&relid)) || (ALL_PUBLISHED.with(Cell::get) && is_published(relation));
        if !wanted {
            return;
        }
        let op = match action {
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT => "INSERT",
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_UPDATE => "UPDATE",
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_DELETE => "DELETE",
            _ => return,
        };
        let tupdesc = (*relation).rd_att;
        let mut toast = Vec::new();
        let (old, new) = compat::change_tuples(change);
        let new = new.map(|t| row_json(tupdesc, t, &mut toast));
        let old = old.map(|t| row_json(tupdesc, t, &mut Vec::new()));
        let ts = (*txn).xact_time.commit_time + POSTGRES_EPOCH_US;
        let text = change_json(relid, op, ts, new.as_deref(), old.as_deref(), &toast, &columns(tupdesc));
        write(ctx, &tagged(ROW_CHANGE, &text));
        state(ctx).wrote = true;
    }
}

/// A [`RowChange`] as JSON, its rows spliced in as `row_to_json` wrote them
/// (a missing one as null): the worker parses each change once, on its way
/// to the sockets ([`RowChange::parse`]).
fn change_json(
    rel: u32,
    op: &str,
    ts: i64,
    new: Option<&str>,
    old: Option<&str>,
    toast: &[String],
    columns: &[(String, String)],
) -> String {
    let toast = serde_json::to_string(toast).expect("strings serialize");
    let columns = serde_json::to_string(columns).expect("strings serialize");
    let (new, old) = (new.unwrap_or("null"), old.unwrap_or("null"));
    format!(r#"{{"rel":{rel},"op":"{op}","ts":{ts},"new":{new},"old":{old},"toast":{toast},"columns":{columns}}}"#)
}

/// Name and type name of each column, as the relation was when the change
/// was made (the historic catalog), so a later `ALTER COLUMN TYPE` does not
/// relabel older rows.
unsafe fn columns(tupdesc: pg_sys::TupleDesc) -> Vec<(String, String)> {
    // SAFETY: the relation's descriptor; syscache lookups under the
    // decoding's historic snapshot.
    unsafe {
        PgTupleDesc::from_pg_unchecked(tupdesc)
            .iter()
            .filter(|a| !a.attisdropped)
            .map(|a| (a.name().to_owned(), type_name(a.atttypid)))
            .collect()
    }
}

unsafe fn type_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup, released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as i32, pg_sys::Datum::from(oid));
        if tuple.is_null() {
            return String::new();
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tuple);
        let name = std::ffi::CStr::from_ptr((*form).typname.data.as_ptr()).to_string_lossy().into_owned();
        pg_sys::ReleaseSysCache(tuple);
        name
    }
}

/// An on-disk TOAST pointer: a value the update did not change, which the
/// WAL does not carry (`VARATT_IS_EXTERNAL_ONDISK`).
unsafe fn is_unchanged_toast(value: pg_sys::Datum) -> bool {
    // SAFETY: a non-null varlena datum points at its header.
    unsafe {
        let p = value.cast_mut_ptr::<u8>();
        *p == 0x01 && *p.add(1) == pg_sys::vartag_external::VARTAG_ONDISK as u8
    }
}

/// The tuple as `row_to_json` renders it (numbers as numbers, timestamps as
/// ISO strings, json as JSON), with unchanged TOAST values left out and
/// their column names added to `toast`.
unsafe fn row_json(tupdesc: pg_sys::TupleDesc, tuple: pg_sys::HeapTuple, toast: &mut Vec<String>) -> String {
    // SAFETY: the tuple matches the relation's descriptor; the copies live in
    // the decoding call's memory context.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let desc = PgTupleDesc::from_pg_unchecked(tupdesc);
        for (i, attr) in desc.iter().enumerate() {
            if !attr.attisdropped && !nulls[i] && attr.attlen == -1 && is_unchanged_toast(values[i]) {
                nulls[i] = true;
                toast.push(attr.name().to_owned());
            }
        }
        let formed = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let datum = pg_sys::heap_copy_tuple_as_datum(formed, tupdesc);
        // The unchanged TOASTed columns are null here; the worker leaves them
        // out (`RowChange::parse`).
        let text: Option<String> = pgrx::direct_function_call(pg_sys::row_to_json, &[Some(datum)]);
        text.unwrap_or_else(|| "null".to_owned())
    }
}

/// The row for a broadcast insert ([`DbBroadcast::row`]); None for other
/// extensions (presence probes never commit, but a user could insert
/// anything). The payload goes out as `jsonb_out` writes it, made compact:
/// it is never parsed into a tree.
fn broadcast_row(tuple: &PgHeapTuple<'_, pgrx::AllocatedByPostgres>, payload: Option<pg_sys::Datum>) -> Option<String> {
    let text = |name: &str| tuple.get_by_name::<String>(name).ok().flatten();
    if text("extension").as_deref() != Some("broadcast") {
        return None;
    }
    let id = tuple.get_by_name::<pgrx::Uuid>("id").ok().flatten()?;
    let bytes = tuple.get_by_name::<&[u8]>("binary_payload").ok().flatten().map(<[u8]>::to_vec);
    let payload = match payload {
        Some(datum) => {
            let out: Option<&std::ffi::CStr> =
                // SAFETY: a jsonb datum of the tuple; jsonb_out returns a cstring.
                unsafe { pgrx::direct_function_call(pg_sys::jsonb_out, &[Some(datum)]) };
            compact_json(&out?.to_string_lossy())
        }
        None => match &bytes {
            Some(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
            None => "null".to_owned(),
        },
    };
    let message = DbBroadcast {
        id: uuid::Uuid::from_bytes(*id.as_bytes()).to_string(),
        topic: text("topic")?,
        event: text("event").unwrap_or_default(),
        private: tuple.get_by_name::<bool>("private").ok().flatten().unwrap_or(false),
        binary: bytes.is_some(),
    };
    Some(message.row(&payload))
}

/// A column's datum, looked up by name; None when null or absent.
unsafe fn raw_column(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc, name: &str) -> Option<pg_sys::Datum> {
    // SAFETY: the tuple matches its descriptor.
    unsafe {
        let desc = PgTupleDesc::from_pg_unchecked(tupdesc);
        let attno = desc.iter().position(|a| !a.attisdropped && a.name() == name)?;
        pgrx::htup::heap_getattr_raw(tuple, std::num::NonZeroUsize::new(attno + 1)?, tupdesc)
    }
}

/// JSON text without the spaces `jsonb_out` puts after `:` and `,`.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

unsafe fn write(ctx: *mut pg_sys::LogicalDecodingContext, text: &str) {
    // SAFETY: the output buffer belongs to the context; Prepare/Write bracket it.
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, true);
        pg_sys::appendBinaryStringInfo((*ctx).out, text.as_ptr().cast(), text.len() as i32);
        pg_sys::OutputPluginWrite(ctx, true);
    }
}

#[cfg(test)]
mod tests {
    use super::compact_json;

    #[test]
    fn jsonb_text_is_made_compact_outside_strings() {
        assert_eq!(
            compact_json(r#"{"a": 1, "b": [1, 2], "c": "x, y: \"z\""}"#),
            r#"{"a":1,"b":[1,2],"c":"x, y: \"z\""}"#
        );
        assert_eq!(compact_json(r#""a\\" "#), r#""a\\""#, "an escaped backslash ends before the quote");
        assert_eq!(compact_json("null"), "null");
    }
}
