//! Postgres Changes: `postgres_changes` bindings, checked and routed on the
//! worker's main thread with Row Level Security evaluated in-process.
//! `filter`, `registry` and `payload` are pure; `subscribe` and `route` use SPI.

pub mod filter;
pub mod payload;
pub mod registry;
pub mod route;
pub mod subscribe;

use std::sync::Arc;

/// One message for one channel: the ids of its matching bindings and the
/// `data` JSON, shared by every channel of the same group.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub channel: u64,
    pub ids: Vec<u32>,
    pub data: Arc<str>,
}
