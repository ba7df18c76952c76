//! The `data` of a `postgres_changes` message, built from a decoded change
//! for one group of subscribers (what their role may see).

use super::RowChange;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// A table as the routing needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct TableMeta {
    pub schema: String,
    pub table: String,
    pub rls: bool,
    /// `REPLICA IDENTITY FULL`: old rows carry every column.
    pub identity_full: bool,
    /// (name, pg_type.typname, format_type), in attribute order.
    pub columns: Vec<(String, String, String)>,
    pub primary_key: Vec<String>,
    /// Columns whose type initdb did not make (a domain, an extension's or
    /// a user's type): casting or comparing them runs code another role
    /// owns, so only as the subscriber's role.
    pub user_typed: Vec<String>,
}

pub const ERROR_NO_PRIMARY_KEY: &str = "Error 400: Bad Request, no primary key";
pub const ERROR_UNAUTHORIZED: &str = "Error 401: Unauthorized";
pub const ERROR_TOO_LARGE: &str = "Error 413: Payload Too Large";
/// Values kept when a record is over the size limit.
const KEPT_VALUE_BYTES: usize = 64;

/// `2025-11-19T00:22:40.877Z` from microseconds since the Unix epoch.
pub fn commit_timestamp(unix_us: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = (at.year(), u8::from(at.month()), at.day());
    let (h, m, s, milli) = (at.hour(), at.minute(), at.second(), at.millisecond());
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

fn pick(row: Option<&Value>, keep: impl Fn(&str) -> bool) -> Map<String, Value> {
    row.and_then(Value::as_object)
        .map(|o| o.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The payload for a role that may read `selectable` columns, restricted to
/// `select` (the binding's column list; the key is always kept), or the error
/// row Supabase sends when it may not read the key (or the table has none).
pub fn build(
    meta: &TableMeta,
    change: &RowChange,
    selectable: &HashSet<String>,
    select: Option<&[String]>,
    max_record_bytes: usize,
) -> Value {
    let is_delete = change.op == "DELETE";
    if !is_delete {
        if meta.primary_key.is_empty() {
            return error(meta, change, ERROR_NO_PRIMARY_KEY);
        }
        if !meta.primary_key.iter().all(|k| selectable.contains(k)) {
            return error(meta, change, ERROR_UNAUTHORIZED);
        }
    }
    // The columns as they were at the change; the table as it is now for
    // rows decoded by an older version of the plugin.
    let as_now: Vec<(String, String)>;
    let described = if change.columns.is_empty() {
        as_now = meta.columns.iter().map(|(n, t, _)| (n.clone(), t.clone())).collect();
        &as_now
    } else {
        &change.columns
    };
    let is_key = |k: &str| meta.primary_key.iter().any(|p| p == k);
    let shown = |k: &str| selectable.contains(k) && (select.is_none_or(|s| s.iter().any(|c| c == k)) || is_key(k));
    let columns: Vec<Value> = described
        .iter()
        .filter(|(name, _)| shown(name))
        .map(|(name, typname)| json!({"name": name, "type": typname}))
        .collect();
    let mut data = Map::new();
    data.insert("schema".into(), meta.schema.clone().into());
    data.insert("table".into(), meta.table.clone().into());
    data.insert("commit_timestamp".into(), commit_timestamp(change.ts).into());
    data.insert("type".into(), change.op.clone().into());
    data.insert("columns".into(), Value::Array(columns));
    let mut errors = Vec::new();
    if !is_delete {
        let mut record = pick(change.new.as_ref(), shown);
        // Unchanged TOAST values are not in the WAL; the old row may have them.
        for column in change.toast.iter().filter(|c| shown(c)) {
            if let Some(v) = change.old.as_ref().and_then(|o| o.get(column)) {
                record.insert(column.clone(), v.clone());
            }
        }
        if Value::Object(record.clone()).to_string().len() > max_record_bytes {
            record.retain(|_, v| v.to_string().len() <= KEPT_VALUE_BYTES);
            errors.push(ERROR_TOO_LARGE);
        }
        data.insert("record".into(), Value::Object(record));
    }
    if change.op != "INSERT" {
        // The replica identity: every column with FULL (but a delete on an RLS
        // table, which cannot be checked, shows only its key), else the key,
        // read from the new row when the update kept it.
        let full = meta.identity_full && !(is_delete && meta.rls);
        let old = if full {
            pick(change.old.as_ref(), shown)
        } else {
            pick(change.old.as_ref().or(change.new.as_ref()), |k| is_key(k) && shown(k))
        };
        data.insert("old_record".into(), Value::Object(old));
    }
    data.insert("errors".into(), if errors.is_empty() { Value::Null } else { json!(errors) });
    Value::Object(data)
}

/// An error row: no columns, empty records, no timestamp.
pub fn error(meta: &TableMeta, change: &RowChange, message: &str) -> Value {
    let mut data = Map::new();
    data.insert("schema".into(), meta.schema.clone().into());
    data.insert("table".into(), meta.table.clone().into());
    data.insert("commit_timestamp".into(), Value::Null);
    data.insert("type".into(), change.op.clone().into());
    data.insert("columns".into(), json!([]));
    if change.op != "DELETE" {
        data.insert("record".into(), json!({}));
    }
    if change.op != "INSERT" {
        data.insert("old_record".into(), json!({}));
    }
    data.insert("errors".into(), json!([message]));
    Value::Object(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TableMeta {
        TableMeta {
            schema: "public".into(),
            table: "todos".into(),
            rls: false,
            identity_full: false,
            columns: vec![
                ("id".into(), "int8".into(), "bigint".into()),
                ("title".into(), "text".into(), "text".into()),
                ("secret".into(), "text".into(), "text".into()),
            ],
            primary_key: vec!["id".into()],
            user_typed: vec![],
        }
    }

    fn change(op: &str, new: Option<Value>, old: Option<Value>) -> RowChange {
        RowChange { rel: 1, op: op.into(), ts: 1_763_511_760_877_123, new, old, toast: vec![], columns: vec![] }
    }

    fn all() -> HashSet<String> {
        ["id", "title", "secret"].map(String::from).into()
    }

    #[test]
    fn commit_timestamps_are_utc_with_milliseconds() {
        assert_eq!(commit_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(commit_timestamp(1_763_511_760_877_123), "2025-11-19T00:22:40.877Z");
        assert_eq!(commit_timestamp(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn insert_has_record_and_no_old_record() {
        let d = build(
            &meta(),
            &change("INSERT", Some(json!({"id":1,"title":"a","secret":"s"})), None),
            &all(),
            None,
            1 << 20,
        );
        assert_eq!(d["record"], json!({"id":1,"title":"a","secret":"s"}));
        assert!(d.get("old_record").is_none());
        assert_eq!(d["errors"], Value::Null);
        assert_eq!(d["type"], "INSERT");
        assert_eq!(d["columns"][0], json!({"name":"id","type":"int8"}));
        assert_eq!(d["commit_timestamp"], "2025-11-19T00:22:40.877Z");
    }

    #[test]
    fn update_old_record_is_the_key_unless_full() {
        let c = change("UPDATE", Some(json!({"id":1,"title":"b","secret":"s"})), None);
        assert_eq!(build(&meta(), &c, &all(), None, 1 << 20)["old_record"], json!({"id":1}));
        let full = TableMeta { identity_full: true, ..meta() };
        let c = change(
            "UPDATE",
            Some(json!({"id":1,"title":"b","secret":"s"})),
            Some(json!({"id":1,"title":"a","secret":"s"})),
        );
        assert_eq!(build(&full, &c, &all(), None, 1 << 20)["old_record"], json!({"id":1,"title":"a","secret":"s"}));
    }

    #[test]
    fn delete_has_no_record_and_only_the_key_under_rls() {
        let old = Some(json!({"id":1,"title":"a","secret":"s"}));
        let full_rls = TableMeta { identity_full: true, rls: true, ..meta() };
        let d = build(&full_rls, &change("DELETE", None, old.clone()), &all(), None, 1 << 20);
        assert!(d.get("record").is_none());
        assert_eq!(d["old_record"], json!({"id":1}));
        let full = TableMeta { identity_full: true, ..meta() };
        assert_eq!(build(&full, &change("DELETE", None, old), &all(), None, 1 << 20)["old_record"]["title"], "a");
    }

    #[test]
    fn unreadable_columns_are_left_out() {
        let readable: HashSet<String> = ["id", "title"].map(String::from).into();
        let d = build(
            &meta(),
            &change("INSERT", Some(json!({"id":1,"title":"a","secret":"s"})), None),
            &readable,
            None,
            1 << 20,
        );
        assert_eq!(d["record"], json!({"id":1,"title":"a"}));
        assert_eq!(d["columns"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn error_rows() {
        let c = change("INSERT", Some(json!({"id":1})), None);
        let no_key = TableMeta { primary_key: vec![], ..meta() };
        let d = build(&no_key, &c, &all(), None, 1 << 20);
        assert_eq!(d["errors"], json!([ERROR_NO_PRIMARY_KEY]));
        assert_eq!(
            (d["columns"].clone(), d["record"].clone(), d["commit_timestamp"].clone()),
            (json!([]), json!({}), Value::Null)
        );
        let readable: HashSet<String> = ["title"].map(String::from).into();
        assert_eq!(build(&meta(), &c, &readable, None, 1 << 20)["errors"], json!([ERROR_UNAUTHORIZED]));
    }

    #[test]
    fn large_records_keep_small_values_only() {
        let big = "x".repeat(2000);
        let d =
            build(&meta(), &change("INSERT", Some(json!({"id":1,"title":"a","secret":big})), None), &all(), None, 1000);
        assert_eq!(d["record"], json!({"id":1,"title":"a"}));
        assert_eq!(d["errors"], json!([ERROR_TOO_LARGE]));
    }

    #[test]
    fn columns_are_described_as_they_were_at_the_change() {
        let mut c = change("INSERT", Some(json!({"id":1,"title":7,"secret":"s"})), None);
        c.columns =
            vec![("id".into(), "int8".into()), ("title".into(), "int4".into()), ("secret".into(), "text".into())];
        let d = build(&meta(), &c, &all(), None, 1 << 20);
        assert_eq!(d["columns"][1], json!({"name":"title","type":"int4"}), "the table now says text");
    }

    #[test]
    fn a_column_list_keeps_those_columns_and_the_key() {
        let c = change("UPDATE", Some(json!({"id":1,"title":"b","secret":"s"})), Some(json!({"id":1})));
        let select = ["title".to_owned()];
        let d = build(&meta(), &c, &all(), Some(&select), 1 << 20);
        assert_eq!(d["record"], json!({"id":1,"title":"b"}));
        assert_eq!(d["columns"].as_array().unwrap().len(), 2);
        assert_eq!(d["old_record"], json!({"id":1}));
    }

    #[test]
    fn unchanged_toast_values_come_from_the_old_row() {
        let mut c =
            change("UPDATE", Some(json!({"id":1,"title":"b"})), Some(json!({"id":1,"title":"a","secret":"long"})));
        c.toast = vec!["secret".into()];
        assert_eq!(build(&meta(), &c, &all(), None, 1 << 20)["record"]["secret"], "long");
    }
}
