//! The worker's own slot, decoded with this library's output plugin through
//! SQL (peek, then advance once the batch is handed over), so a restart
//! resumes where delivery stopped.
//!
//! Every query here is a read-only SELECT: pgrx's read/write SPI calls assign
//! a transaction id, and a slot cannot be created in a transaction that has one
//! (nor should an idle worker burn ids and WAL twice a second).

use crate::decoder::COMMIT;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

pub const SLOT: &str = "realtime";

fn one<T: FromDatum + IntoDatum>(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Option<T>, pgrx::spi::Error> {
    client.select(sql, None, args)?.first().get_one::<T>()
}

/// Creates the slot if it does not exist. Ok(true) when it was created.
pub fn ensure_slot() -> Result<bool, pgrx::spi::Error> {
    Spi::connect(|client| {
        let exists = one::<bool>(
            client,
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[SLOT.into()],
        )?;
        if exists == Some(true) {
            return Ok(false);
        }
        client.select("SELECT pg_create_logical_replication_slot($1, 'realtime')", None, &[SLOT.into()])?;
        Ok(true)
    })
}

/// What one peek returned.
pub struct Batch {
    /// Message rows of whole transactions, in commit order.
    pub rows: Vec<String>,
    /// Where the slot may advance to once `rows` are handed over.
    pub advance_to: Option<String>,
    /// The row limit was reached: more may be waiting.
    pub full: bool,
}

/// Peeks at most about `max_rows` rows (decoding stops at transaction ends).
pub fn peek(max_rows: i32) -> Result<Batch, pgrx::spi::Error> {
    Spi::connect(|client| {
        // Postgres logs "starting logical decoding" and more at LOG on every
        // call, twice a second; LOG ranks above ERROR in the server log, so
        // only FATAL silences it. This transaction only; the worker's own
        // warnings are raised outside it.
        client.select("SELECT set_config('log_min_messages', 'fatal', true)", None, &[])?;
        // Everything committed before `flush` is returned unless the limit
        // cuts in, so the slot can then skip to `flush` even past WAL that
        // held no messages.
        let flush = one::<String>(client, "SELECT pg_current_wal_flush_lsn()::text", &[])?;
        let args: [DatumWithOid; 3] = [SLOT.into(), flush.clone().into(), max_rows.into()];
        let table = client.select(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, $2::pg_lsn, $3)",
            None,
            &args,
        )?;
        let mut rows = Vec::new();
        let mut pending = Vec::new();
        let mut last_commit = None;
        let mut count = 0;
        for row in table {
            count += 1;
            let data = row.get::<String>(2)?.unwrap_or_default();
            if data == COMMIT {
                rows.append(&mut pending);
                last_commit = row.get::<String>(1)?;
            } else {
                pending.push(data);
            }
        }
        let full = count >= max_rows;
        Ok(Batch { rows, advance_to: if full { last_commit } else { flush }, full })
    })
}

pub fn advance(lsn: &str) -> Result<(), pgrx::spi::Error> {
    Spi::connect(|client| {
        client
            .select("SELECT pg_replication_slot_advance($1, $2::pg_lsn)", None, &[SLOT.into(), lsn.into()])
            .map(|_| ())
    })
}

/// Bytes of WAL the slot holds back, if it exists.
pub fn lag_bytes() -> Result<Option<i64>, pgrx::spi::Error> {
    Spi::connect(|client| {
        one::<i64>(
            client,
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[SLOT.into()],
        )
    })
}

/// Moves the slot to the current WAL end, dropping what it had not decoded.
pub fn skip_to_end() -> Result<Option<String>, pgrx::spi::Error> {
    Spi::connect(|client| {
        one::<String>(
            client,
            "SELECT lsn::text FROM pg_replication_slot_advance($1, pg_current_wal_lsn()) AS a(slot_name, lsn)",
            &[SLOT.into()],
        )
    })
}

/// After a caught error, lets go of the slot the failed call had acquired
/// (an interrupted creation's half-made slot is dropped by this), as a
/// backend's error recovery would.
pub fn release_after_error() {
    // SAFETY: main thread; releasing only a slot this process holds.
    unsafe {
        if !pgrx::pg_sys::MyReplicationSlot.is_null() {
            pgrx::pg_sys::ReplicationSlotRelease();
        }
    }
}
