//! Postgres Changes, the pure part: filters, who watches what, and the
//! payloads. The Postgres side (`pg::subscribe`, `pg::route`) checks and
//! routes with these on the worker's main thread.

pub mod condition;
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

impl RowChange {
    /// Values as Supabase sends them where `row_to_json` differs: `bytea` as
    /// hex without `\x`, a NaN or infinite number as null.
    pub fn render_like_supabase(&mut self) {
        for row in [self.new.as_mut(), self.old.as_mut()].into_iter().flatten() {
            let Value::Object(row) = row else { continue };
            for (name, type_name) in &self.columns {
                let Some(value) = row.get_mut(name) else { continue };
                match (type_name.as_str(), &*value) {
                    ("bytea", Value::String(s)) if s.starts_with("\\x") => *value = Value::String(s[2..].to_owned()),
                    ("numeric" | "float4" | "float8", Value::String(_)) => *value = Value::Null,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytea_and_special_numbers_render_as_supabase_does() {
        let mut c = RowChange {
            rel: 1,
            op: "INSERT".into(),
            ts: 0,
            new: Some(json!({"b": "\\x0102ff", "n": "NaN", "f": "-Infinity", "m": "$1.00", "x": 1.5})),
            old: None,
            toast: vec![],
            columns: [("b", "bytea"), ("n", "numeric"), ("f", "float8"), ("m", "money"), ("x", "numeric")]
                .map(|(n, t)| (n.to_owned(), t.to_owned()))
                .into(),
        };
        c.render_like_supabase();
        assert_eq!(c.new, Some(json!({"b": "0102ff", "n": null, "f": null, "m": "$1.00", "x": 1.5})));
    }
}
