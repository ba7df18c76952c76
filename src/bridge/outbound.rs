//! What the main thread hands to the network side: decoded broadcasts and
//! routed Postgres Changes, in commit order, in batches that carry their
//! memory charge and the WAL position they complete.

use super::budget::{Budget, Charge};
use super::queue::Bridge;
use super::settings::Settings;
use super::stats::{MainFigures, Stats};
use std::sync::Arc;

/// One `postgres_changes` message for one channel: the ids of its matching
/// bindings and the `data` JSON, shared by every channel of the same group.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub channel: u64,
    pub ids: Vec<u32>,
    pub data: Arc<str>,
}

/// A broadcast stored by `realtime.send` (or `broadcast_changes`), decoded:
/// what the output plugin writes and the network side reads, as one line of
/// JSON for these fields, then the payload's JSON text as it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbBroadcast {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub private: bool,
    /// The payload is bytes (`realtime.send_binary`), written as base64.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

impl DbBroadcast {
    /// The row for `payload` (JSON text, which never holds a raw newline).
    pub fn row(&self, payload: &str) -> String {
        header_row(self, payload)
    }

    /// The message and its payload's text.
    pub fn parse(row: &str) -> Result<(DbBroadcast, &str), String> {
        parse_header_row(row)
    }
}

/// What a node relayed to the others through the bus (write permission
/// checked where it was sent): a client's broadcast, or presence. A line of
/// JSON for these fields, then the payload: the broadcast's (JSON text, or
/// base64 when binary), a tracked meta (JSON), or nothing.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Relayed {
    /// The worker that relayed it, which delivered it itself and skips its echo.
    pub origin: String,
    #[serde(default, skip_serializing_if = "RelayKind::is_broadcast")]
    pub kind: RelayKind,
    /// The full topic (`realtime:…`); empty for `Alive`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// A broadcast's event; a tracked meta's presence key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
    /// Presence: the tracking channel, on the origin node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub owner: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayKind {
    #[default]
    Broadcast,
    Track,
    Untrack,
    /// The origin is up and tracks presence; nodes that stop hearing it drop
    /// what it tracked.
    Alive,
}

impl RelayKind {
    fn is_broadcast(&self) -> bool {
        *self == RelayKind::Broadcast
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Relayed {
    pub fn row(&self, payload: &str) -> String {
        header_row(self, payload)
    }

    pub fn parse(row: &str) -> Result<(Relayed, &str), String> {
        parse_header_row(row)
    }
}

fn header_row(header: &impl serde::Serialize, payload: &str) -> String {
    let mut row = serde_json::to_string(header).expect("strings and bools serialize");
    row.push('\n');
    row.push_str(payload);
    row
}

fn parse_header_row<T: serde::de::DeserializeOwned>(row: &str) -> Result<(T, &str), String> {
    let (header, payload) = row.split_once('\n').ok_or("no payload")?;
    let header = serde_json::from_str(header).map_err(|e| e.to_string())?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rows_round_trip_with_the_payload_untouched() {
        let m = DbBroadcast { id: "i".into(), topic: "a\nb".into(), event: "e".into(), private: true, binary: false };
        let row = m.row(r#"{"x":"line\nbreak"}"#);
        assert_eq!(row.matches('\n').count(), 1, "escapes keep the header on one line");
        let (back, payload) = DbBroadcast::parse(&row).unwrap();
        assert_eq!(back, m);
        assert_eq!(payload, r#"{"x":"line\nbreak"}"#);
        assert!(DbBroadcast::parse("{}").is_err());
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A broadcast row as the output plugin wrote it ([`DbBroadcast::row`]),
    /// read on the network side, and its position on the bus (0: none).
    Broadcast(String, u64),
    Change(Delivery),
    /// A client's broadcast another node relayed ([`Relayed::row`]), and its
    /// position on the bus (0: not known here).
    Relayed(String, u64),
}

impl Decoded {
    /// About what it holds in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Decoded::Broadcast(row, _) | Decoded::Relayed(row, _) => row.len() + 32,
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
    /// The commit times of the transactions the batch completes (Unix
    /// microseconds), to time commit → send.
    pub commits: Vec<i64>,
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
    /// Whether database messages flow: the decoder holds the slot.
    fn set_replication_ready(&self, ready: bool);
    /// This node's epoch changed (a promotion, or a standby following a new
    /// timeline): every channel gets one `system` message naming it.
    fn new_epoch(&self, system_identifier: u64, timeline: u32);
    /// What this node could not deliver: every channel gets one `system`
    /// message saying so.
    fn missed(&self, gap: &super::Gap);
    /// The network side's figures and rows for `realtime.stats` and its views.
    fn stats(&self) -> Stats;
    /// The whole snapshot as published, for `/api/stats`, and the main
    /// thread's figures in it, for `/metrics`.
    fn published(&self, json: &str, main: MainFigures);
    /// Fans out what was handed over, closes every socket with `code` once its
    /// queue is written (each step bounded in time), and stops.
    fn shutdown(&self, code: u16, reason: &str);
}

/// Starts the network side: its handle, and what is wrong with the settings.
pub type SpawnNetwork = fn(&Settings, Bridge, Arc<Budget>) -> (Box<dyn Network>, Vec<String>);
