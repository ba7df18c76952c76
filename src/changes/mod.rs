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
    /// A change as the output plugin wrote it, made right for clients: the
    /// unchanged TOASTed columns left out of the new row, values rendered as
    /// Supabase renders them. The one parse a change gets on its way out.
    pub fn parse(text: &str) -> serde_json::Result<RowChange> {
        let mut change: RowChange = serde_json::from_str(text)?;
        if let Some(Value::Object(row)) = change.new.as_mut() {
            for column in &change.toast {
                row.remove(column);
            }
        }
        change.render_like_supabase();
        Ok(change)
    }

    /// Values as Supabase sends them where `row_to_json` differs: `bytea` as
    /// hex without `\x`, a NaN or infinite number as null.
    fn render_like_supabase(&mut self) {
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
    fn parsing_leaves_out_unchanged_toast_and_renders_like_supabase() {
        let text = r#"{"rel":1,"op":"UPDATE","ts":5,"new":{"id":1,"big":null,"b":"\\x01"},"old":null,
                      "toast":["big"],"columns":[["id","int4"],["big","text"],["b","bytea"]]}"#;
        let change = RowChange::parse(text).unwrap();
        assert_eq!(change.new, Some(json!({"id": 1, "b": "01"})));
        assert_eq!(change.old, None);
        assert_eq!(change.toast, vec!["big".to_owned()], "still named, for the payload's unchanged_toast");
        assert!(RowChange::parse("{").is_err());
    }

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
