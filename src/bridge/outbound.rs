//! What the main thread hands to the network side: decoded broadcasts and
//! routed Postgres Changes, in commit order, in batches that carry their
//! memory charge and the WAL position they complete.

use super::budget::{Budget, Charge};
use super::queue::Bridge;
use super::settings::Settings;
use std::sync::Arc;

/// One `postgres_changes` message for one channel: the ids of its matching
/// bindings and the `data` JSON, shared by every channel of the same group.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub channel: u64,
    pub ids: Vec<u32>,
    pub data: Arc<str>,
}

/// A broadcast stored by `realtime.send` (or `broadcast_changes`), decoded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbBroadcast {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub private: bool,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A broadcast row as the output plugin wrote it (JSON of [`DbBroadcast`]),
    /// parsed on the network side.
    Broadcast(String),
    Change(Delivery),
}

impl Decoded {
    /// About what it holds in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Decoded::Broadcast(row) => row.len() + 32,
            Decoded::Change(d) => d.data.len() + 4 * d.ids.len() + 48,
        }
    }
}

/// Decoded messages in commit order.
#[derive(Debug, Default)]
pub struct Batch {
    pub items: Vec<Decoded>,
    /// Once this batch is fanned out, everything decoded before this WAL
    /// position has been (0: the batch ends inside a transaction).
    pub end_lsn: u64,
    /// The batch's bytes, counted against the budget until it is dropped.
    pub charge: Charge,
}

/// The main thread's handle on the network side. Every method returns at
/// once, except `shutdown`, which waits a bounded time.
pub trait Network {
    /// Hands a batch over; batches are fanned out in the order given.
    fn deliver(&self, batch: Batch);
    /// The `end_lsn` of the newest batch fanned out to every subscriber's queue.
    fn delivered_lsn(&self) -> u64;
    /// Batches handed over and not yet fanned out.
    fn pending_batches(&self) -> usize;
    /// New settings; returns what is wrong with them, for the main thread to log.
    fn reconfigure(&self, settings: &Settings) -> Vec<String>;
    fn disconnect_all(&self, code: u16, reason: &str);
    /// Fans out what was handed over, closes every socket with `code` once its
    /// queue is written (each step bounded in time), and stops.
    fn shutdown(&self, code: u16, reason: &str);
}

/// Starts the network side: its handle, and what is wrong with the settings.
pub type SpawnNetwork = fn(&Settings, Bridge, Arc<Budget>) -> (Box<dyn Network>, Vec<String>);
