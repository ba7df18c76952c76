//! Validates a join's `postgres_changes` bindings on the main thread: each is
//! resolved against the `supabase_realtime` publication, and its filters and
//! column list against the columns the subscriber's role may read and their
//! types, as Supabase's `subscription_check_filters` trigger does. Errors
//! read like Supabase's, because clients show them.

use super::rls::assume;
use crate::bridge::AuthContext;
use crate::changes::condition;
use crate::changes::filter::{self, Filter, MAX_IN_VALUES, Op};
use crate::changes::registry::{Binding, Event, Registry};
use crate::pg::subxact::rolled_back;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, ereport};
use serde_json::Value;

/// One requested binding, with the id the join reply gave it.
pub struct Requested<'a> {
    pub id: u32,
    pub binding: &'a Value,
}

fn text<'a>(binding: &'a Value, key: &str) -> Option<&'a str> {
    binding.get(key).and_then(Value::as_str)
}

/// `[event: INSERT, schema: public, table: t, filters: [...], select: nil]`.
fn describe(event: &str, schema: &str, table: &str, filters: &[Filter], select: Option<&[String]>) -> String {
    let filters: Vec<String> = filters.iter().map(Filter::to_string).collect();
    let select = match select {
        None => "nil".to_owned(),
        Some(columns) => format!("[{}]", columns.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")),
    };
    format!("[event: {event}, schema: {schema}, table: {table}, filters: [{}], select: {select}]", filters.join(", "))
}

/// `select`: a list of column names (other entries ignored, none means all);
/// anything else is an error, as in Supabase.
fn parse_select(binding: &Value) -> Result<Option<Vec<String>>, String> {
    match binding.get("select") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut names: Vec<String> = items.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            names.sort();
            names.dedup();
            Ok((!names.is_empty()).then_some(names))
        }
        Some(_) => Err("Error parsing `select` params: expected a list of column name strings, e.g. select: \
                        [\"col1\", \"col2\"]"
            .into()),
    }
}

/// Resolves and checks every binding, or says why the subscription fails.
pub fn validate(ctx: &AuthContext, requested: &[Requested]) -> Result<Vec<Binding>, String> {
    let mut out = Vec::new();
    for r in requested {
        let b = r.binding;
        let (schema, table) = match (text(b, "schema"), text(b, "table")) {
            (Some(s), Some(t)) => (s, t),
            (Some(s), None) if b.get("filter").is_none() => (s, "*"),
            (None, Some(t)) => ("public", t),
            _ => {
                return Err(format!(
                    "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {b}"
                ));
            }
        };
        let filters = match b.get("filter") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(f)) => filter::parse(f)?,
            Some(_) => {
                return Err(format!(
                    "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {b}"
                ));
            }
        };
        let select = parse_select(b)?;
        if select.is_some() && (schema == "*" || table == "*") {
            return Err("Column selection is not supported for wildcard subscriptions. Provide an explicit schema \
                        and table name."
                .into());
        }
        let event = Event::parse(text(b, "event"));
        let event_name = text(b, "event").unwrap_or("*");
        let params = describe(event_name, schema, table, &filters, select.as_deref());
        let relids = rolled_back(|| resolve(ctx, schema, table, &filters, select.as_deref()))
            .map_err(|e| e.with_code())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                format!(
                    "Unable to subscribe to changes with given parameters. An exception happened so please check your \
                     connect parameters: {params}. Exception: {e}"
                )
            })?;
        if relids.is_empty() {
            return Err(format!(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given \
                 connect parameters: {params}"
            ));
        }
        let wildcard = (schema == "*" || table == "*").then(|| (schema.to_owned(), table.to_owned()));
        out.push(Binding { id: r.id, event, relids, filters, select, wildcard });
    }
    Ok(out)
}

/// Raises like Supabase's trigger (`raise exception`: P0001).
fn raise(message: String) -> ! {
    ereport!(ERROR, PgSqlErrorCode::ERRCODE_RAISE_EXCEPTION, message);
}

/// Tables of the publication matching schema and table (`*` for any); on
/// each, every filter and selected column must be one the role may read,
/// and every filter's value must suit the column. A failed check raises.
fn resolve(
    ctx: &AuthContext,
    schema: &str,
    table: &str,
    filters: &[Filter],
    select: Option<&[String]>,
) -> Result<Vec<u32>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let relids = publication_tables(client, schema, table)?;
        for relid in &relids {
            check_table(client, ctx, *relid, filters, select)?;
        }
        Ok(relids)
    })
}

fn publication_tables(client: &pgrx::spi::SpiClient, schema: &str, table: &str) -> Result<Vec<u32>, pgrx::spi::Error> {
    let args: [DatumWithOid; 2] = [schema.into(), table.into()];
    client
        .select(
            "SELECT format('%I.%I', schemaname, tablename)::regclass::oid
             FROM pg_publication_tables
             WHERE pubname = 'supabase_realtime' AND ($1 = '*' OR schemaname = $1) AND ($2 = '*' OR tablename = $2)",
            None,
            &args,
        )?
        .map(|row| row.get::<pg_sys::Oid>(1).map(|o| o.map(|o| o.to_u32()).unwrap_or_default()))
        .collect()
}

/// Raises unless every filter and selected column suits the table, checked
/// as the subscriber's role with its claims: a cast to a column's type runs
/// its input function and domain checks, code the type's owner wrote.
fn check_table(
    client: &pgrx::spi::SpiClient,
    ctx: &AuthContext,
    relid: u32,
    filters: &[Filter],
    select: Option<&[String]>,
) -> Result<(), pgrx::spi::Error> {
    assume(ctx, "");
    for f in filters {
        let Some((type_oid, type_sql, type_name)) = readable_column(client, relid, &f.column, &ctx.role)? else {
            raise(format!("invalid column for filter {}", f.column));
        };
        check_filter(client, f, type_oid, &type_sql, &type_name)?;
    }
    for column in select.unwrap_or_default() {
        if readable_column(client, relid, column, &ctx.role)?.is_none() {
            raise(format!("invalid column for select {column}"));
        }
    }
    Ok(())
}

/// Wildcard bindings follow the publication: tables added to it since are
/// watched (when the binding's filters suit them), tables gone are not.
/// Returns whether any binding changed.
pub fn refresh_wildcards(registry: &mut Registry) -> bool {
    let mut changed = false;
    for (ctx, binding) in registry.wildcards_mut() {
        let Some((schema, table)) = binding.wildcard.clone() else { continue };
        let listed = rolled_back(|| Spi::connect(|client| publication_tables(client, &schema, &table)));
        let Ok(Ok(listed)) = listed else { continue };
        let mut relids: Vec<u32> = binding.relids.iter().copied().filter(|r| listed.contains(r)).collect();
        for relid in listed.iter().copied().filter(|r| !binding.relids.contains(r)) {
            let suits = rolled_back(|| {
                Spi::connect(|client| check_table(client, ctx, relid, &binding.filters, binding.select.as_deref()))
            });
            if matches!(suits, Ok(Ok(()))) {
                relids.push(relid);
            }
        }
        if relids != binding.relids {
            binding.relids = relids;
            changed = true;
        }
    }
    changed
}

/// A column of the table the role may select: its type's oid, its
/// `format_type` (for casts) and its `regtype` text (for messages).
fn readable_column(
    client: &pgrx::spi::SpiClient,
    relid: u32,
    column: &str,
    role: &str,
) -> Result<Option<(pg_sys::Oid, String, String)>, pgrx::spi::Error> {
    let args: [DatumWithOid; 3] = [pg_sys::Oid::from(relid).into(), column.into(), role.into()];
    let found = client.select(
        "SELECT atttypid, format_type(atttypid, atttypmod), atttypid::regtype::text FROM pg_attribute
         WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped
           AND has_column_privilege($3, attrelid, attnum, 'SELECT')",
        None,
        &args,
    )?;
    if found.is_empty() {
        return Ok(None);
    }
    let row = found.first();
    Ok(Some((
        row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
        row.get::<String>(2)?.unwrap_or_default(),
        row.get::<String>(3)?.unwrap_or_default(),
    )))
}

/// Supabase's per-operator checks; a cast that fails raises Postgres's own error.
fn check_filter(
    client: &pgrx::spi::SpiClient,
    f: &Filter,
    type_oid: pg_sys::Oid,
    type_sql: &str,
    type_name: &str,
) -> Result<(), pgrx::spi::Error> {
    let op = f.op.name();
    let has_operator = |name: &str, same_types: bool| -> Result<bool, pgrx::spi::Error> {
        let args: [DatumWithOid; 2] = [name.into(), type_oid.into()];
        let sql = if same_types {
            "SELECT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = $1 AND oprleft = $2 AND oprright = $2
                            AND oprresult = 'boolean'::regtype)"
        } else {
            "SELECT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = $1 AND oprleft = $2)"
        };
        Ok(client.select(sql, None, &args)?.first().get_one::<bool>()?.unwrap_or(false))
    };
    match f.op {
        Op::In => {
            if f.in_len() > MAX_IN_VALUES {
                raise(format!("too many values for `in` filter. Maximum {MAX_IN_VALUES}"));
            }
            client.select(&format!("SELECT $1::{type_sql}[]"), None, &[f.value.as_str().into()])?;
        }
        Op::Is => {
            if !condition::is_value(&f.value) {
                raise("invalid value for is filter: must be null, true, false, or unknown".into());
            }
            if f.value != "null" && type_oid != pg_sys::BOOLOID {
                raise(format!("is {} filter requires a boolean column, got {type_name}", f.value));
            }
        }
        Op::Like | Op::Ilike => {
            if !has_operator("~~", false)? {
                raise(format!("operator {op} requires a text-compatible column type, got {type_name}"));
            }
        }
        Op::Match | Op::Imatch => {
            let symbol = if f.op == Op::Imatch { "~*" } else { "~" };
            if !has_operator(symbol, true)? {
                raise(format!("operator {op} requires a text-compatible column type, got {type_name}"));
            }
            let compiled =
                rolled_back(|| client.select("SELECT '' ~ $1", None, &[f.value.as_str().into()]).map(|_| ()));
            match compiled {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => raise(format!("invalid regular expression for {op} filter: {}", e.message)),
            }
        }
        Op::Eq | Op::Neq | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::IsDistinct => {
            client.select(&format!("SELECT $1::{type_sql}"), None, &[f.value.as_str().into()])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn select_is_a_list_of_names_or_an_error() {
        assert_eq!(parse_select(&json!({})), Ok(None));
        assert_eq!(parse_select(&json!({"select": null})), Ok(None));
        assert_eq!(parse_select(&json!({"select": []})), Ok(None));
        assert_eq!(
            parse_select(&json!({"select": ["id", 123, "details", null, "id"]})),
            Ok(Some(vec!["details".into(), "id".into()]))
        );
        assert!(parse_select(&json!({"select": ""})).unwrap_err().starts_with("Error parsing `select` params"));
        assert!(parse_select(&json!({"select": "id"})).is_err());
    }

    #[test]
    fn params_are_described_as_supabase_does() {
        let filters = filter::parse("id=eq.1").unwrap();
        assert_eq!(
            describe("*", "public", "t", &filters, Some(&["a".into(), "b".into()])),
            r#"[event: *, schema: public, table: t, filters: [{"id", "eq", "1", false}], select: ["a", "b"]]"#
        );
        assert_eq!(
            describe("INSERT", "public", "t", &[], None),
            "[event: INSERT, schema: public, table: t, filters: [], select: nil]"
        );
    }
}
