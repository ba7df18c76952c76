//! Everything that calls Postgres (SPI, `pg_sys`), run on the worker's main
//! thread: the worker loop and its wake-ups, the decoding context and the
//! output plugin, authorization probes, Postgres Changes checks and routing,
//! partition maintenance, and the settings.

pub mod bus;
mod bus_key;
mod bus_slot;
mod conflict;
mod decoding;
mod interrupts;
mod maintenance;
mod node;
mod plugin;
mod requests;
mod rls;
mod route;
pub mod settings;
mod slot;
pub mod stats;
mod subscribe;
mod subxact;
mod wait;
pub mod wake;
pub mod worker;
