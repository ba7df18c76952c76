//! Everything that calls Postgres (SPI, `pg_sys`), run on the worker's main
//! thread. By concern:
//! - `worker/`: the background worker, its loop, and its two roles
//!   (primary: decoder and slot; standby: bus reader);
//! - `decoding/`: the decoding context, the output plugin and the slot;
//! - `bus/`: the bus between nodes in WAL (write, read, resume, relay);
//! - `authz/`: acting as a client's role, probes, Postgres Changes checks
//!   and routing;
//! - leaves every part may use: settings, recovery state, SQL errors,
//!   subtransactions, interrupts, recovery conflicts, WAL page reading,
//!   wake-ups, waits, stats, maintenance.

mod authz;
pub mod bus;
pub(crate) mod compat;
mod conflict;
mod decoding;
mod interrupts;
mod maintenance;
mod node;
mod recovery;
pub mod settings;
mod sql_error;
pub mod stats;
mod subxact;
mod wait;
pub mod wake;
mod wal;
pub mod worker;
