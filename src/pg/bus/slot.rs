//! A hot standby's physical slot, `realtime_bus`: it keeps the WAL the bus
//! reader has not delivered (a standby removes WAL at its restartpoints
//! regardless of who still reads it), and says where to read on from after
//! the worker restarts, as the primary's logical slot does. The worker moves
//! it up to what the network side has fanned out; `realtime.max_slot_wal`
//! bounds what it holds, and `max_slot_wal_keep_size` still applies.
//!
//! Only read-only SELECTs: a standby cannot assign a transaction id.

use crate::bridge::gap::lsn_text;
use pgrx::prelude::*;

pub const BUS_SLOT: &str = "realtime_bus";

/// The slot's position when it already held WAL (a restarted worker reads on
/// from there); creates it otherwise, or when its WAL was lost. Advance it
/// to where reading starts.
pub fn open() -> Result<Option<u64>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT pg_wal_lsn_diff(restart_lsn, '0/0')::bigint, coalesce(wal_status, 'lost') = 'lost'
             FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
            None,
            &[BUS_SLOT.into()],
        )?;
        if !rows.is_empty() {
            let row = rows.first();
            let (restart, lost) = (row.get::<i64>(1)?, row.get::<bool>(2)?.unwrap_or(true));
            if let Some(restart) = restart.filter(|_| !lost) {
                return Ok(Some(restart as u64));
            }
            client.select("SELECT pg_drop_replication_slot($1)", None, &[BUS_SLOT.into()])?;
        }
        client.select("SELECT pg_create_physical_replication_slot($1, true)", None, &[BUS_SLOT.into()])?;
        Ok(None)
    })
}

/// Moves the slot up to `lsn` (never past what is replayed; never back).
pub fn advance(lsn: u64) -> Result<(), pgrx::spi::Error> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT pg_replication_slot_advance($1, $2::pg_lsn)
                 FROM pg_replication_slots WHERE slot_name = $1 AND restart_lsn < $2::pg_lsn",
                None,
                &[BUS_SLOT.into(), lsn_text(lsn).into()],
            )
            .map(|_| ())
    })
}

/// Drops the slot, if there is one: the node was promoted, or serves no more.
pub fn drop() -> Result<(), pgrx::spi::Error> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND slot_type = 'physical'",
                None,
                &[BUS_SLOT.into()],
            )
            .map(|_| ())
    })
}
