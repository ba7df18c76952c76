//! Validates a join's `postgres_changes` bindings on the main thread: each is
//! resolved against the `supabase_realtime` publication, and its filters
//! against the columns the subscriber's role may read and their types.
//! Errors read like Supabase's, because clients show them.

use super::subxact::rolled_back;
use crate::bridge::AuthContext;
use crate::changes::filter::{self, Filter, MAX_IN_VALUES};
use crate::changes::registry::{Binding, Event};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
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
fn describe(event: &str, schema: &str, table: &str, filters: &[Filter]) -> String {
    let filters: Vec<String> = filters.iter().map(Filter::to_string).collect();
    format!("[event: {event}, schema: {schema}, table: {table}, filters: [{}], select: nil]", filters.join(", "))
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
        let filters = filter::parse(text(b, "filter").unwrap_or_default())?;
        let event = Event::parse(text(b, "event"));
        let event_name = text(b, "event").unwrap_or("*");
        let params = describe(event_name, schema, table, &filters);
        let relids = rolled_back(|| resolve(ctx, schema, table, &filters))
            .map_err(String::from)
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
        out.push(Binding { id: r.id, event, relids, filters, select: None });
    }
    Ok(out)
}

/// Tables of the publication matching schema and table (`*` for any); every
/// filter column must be readable by the role and every value must cast to
/// the column's type. A failed check raises, with its reason.
fn resolve(ctx: &AuthContext, schema: &str, table: &str, filters: &[Filter]) -> Result<Vec<u32>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let args: [DatumWithOid; 2] = [schema.into(), table.into()];
        let relids: Vec<u32> = client
            .select(
                "SELECT format('%I.%I', schemaname, tablename)::regclass::oid
                 FROM pg_publication_tables
                 WHERE pubname = 'supabase_realtime' AND ($1 = '*' OR schemaname = $1) AND ($2 = '*' OR tablename = $2)",
                None,
                &args,
            )?
            .map(|row| row.get::<pg_sys::Oid>(1).map(|o| o.map(|o| o.to_u32()).unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        for f in filters {
            if f.op == filter::Op::In && f.values.len() > MAX_IN_VALUES {
                pgrx::error!("too many values for `in` filter. Maximum {MAX_IN_VALUES}");
            }
            for relid in &relids {
                let args: [DatumWithOid; 3] =
                    [pg_sys::Oid::from(*relid).into(), f.column.as_str().into(), ctx.role.as_str().into()];
                let found = client.select(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                     WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped
                       AND has_column_privilege($3, attrelid, attnum, 'SELECT')",
                    None,
                    &args,
                )?;
                let column_type = if found.is_empty() { None } else { found.first().get_one::<String>()? };
                let Some(column_type) = column_type else {
                    pgrx::error!("invalid column for filter {}", f.column);
                };
                // The cast raises for a value the column's type cannot hold.
                let (sql, value) = super::route::filter_operand(f, &column_type);
                client.select(&format!("SELECT {sql}"), None, &[value.as_str().into()])?;
            }
        }
        Ok(relids)
    })
}
