//! The worker's replication slot, seen through SQL: created when missing, and
//! watched for the WAL it holds. The decoding context (`super::Decoder`) holds
//! the slot while it is open; these queries only read `pg_replication_slots`,
//! except `drop` and `skip_to_end`, which need it released first.
//!
//! Every query here is a read-only SELECT: pgrx's read/write SPI calls assign
//! a transaction id, and a slot cannot be created in a transaction that has one.

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
pub fn ensure() -> Result<bool, pgrx::spi::Error> {
    Spi::connect(|client| {
        let exists = one::<bool>(
            client,
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[SLOT.into()],
        )?;
        if exists == Some(true) {
            return Ok(false);
        }
        client.select(crate::pg::compat::CREATE_LOGICAL_SLOT, None, &[SLOT.into()])?;
        Ok(true)
    })
}

/// The WAL the slot holds back, as Postgres keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// From `restart_lsn`: what Postgres keeps on disk for the slot.
    pub restart_bytes: i64,
    /// From `confirmed_flush_lsn`: what the worker has not delivered yet.
    pub unconfirmed_bytes: i64,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: String,
}

pub fn held() -> Result<Option<Held>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    coalesce(wal_status, 'lost')
             FROM pg_replication_slots WHERE slot_name = $1",
            None,
            &[SLOT.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        Ok(Some(Held {
            restart_bytes: row.get::<i64>(1)?.unwrap_or(0),
            unconfirmed_bytes: row.get::<i64>(2)?.unwrap_or(0),
            wal_status: row.get::<String>(3)?.unwrap_or_default(),
        }))
    })
}

/// Moves the slot to the current WAL end, dropping what it had not decoded.
/// The slot must not be held by this process's decoder.
pub fn skip_to_end() -> Result<Option<String>, pgrx::spi::Error> {
    Spi::connect(|client| {
        one::<String>(
            client,
            "SELECT lsn::text FROM pg_replication_slot_advance($1, pg_current_wal_lsn()) AS a(slot_name, lsn)",
            &[SLOT.into()],
        )
    })
}

/// Drops the slot (one whose WAL is lost); the next check creates it again.
pub fn drop() -> Result<(), pgrx::spi::Error> {
    Spi::connect(|client| client.select("SELECT pg_drop_replication_slot($1)", None, &[SLOT.into()]).map(|_| ()))
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
