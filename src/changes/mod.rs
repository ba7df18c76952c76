//! Postgres Changes, the pure part: filters, who watches what, and the
//! payloads. The Postgres side (`pg::subscribe`, `pg::route`) checks and
//! routes with these on the worker's main thread.

pub mod filter;
pub mod payload;
pub mod registry;

use serde_json::Value;

/// A decoded row change, as the plugin writes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RowChange {
    pub rel: u32,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: String,
    /// Commit time, microseconds since the Unix epoch.
    pub ts: i64,
    /// The new row (inserts, updates), as `row_to_json` renders it.
    pub new: Option<Value>,
    /// The old row's replica identity (updates that changed it, deletes).
    pub old: Option<Value>,
    /// Columns whose unchanged TOASTed value the WAL does not carry.
    pub toast: Vec<String>,
    /// (name, type name) of each column when the change was made.
    #[serde(default)]
    pub columns: Vec<(String, String)>,
}
