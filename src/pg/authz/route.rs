//! Routes decoded row changes to subscribed channels, on the main thread, in
//! batches: per table, one query per distinct filter, one column-privilege
//! query per role, and one execution of a prepared key lookup per group of
//! subscribers sharing a role and claims — not one query per subscriber per
//! change. All groups of a role are checked in one subtransaction, rolled
//! back; if a policy raises, each group is checked again in its own, so the
//! failure reaches that group alone. A payload is built once per role.

use super::rls::{act_for_clients, assume, assume_claims};
use crate::bridge::{AuthContext, Delivery};
use crate::changes::RowChange;
use crate::changes::condition;
use crate::changes::filter::Filter;
use crate::changes::payload::{self, TableMeta};
use crate::changes::registry::{Binding, Registry};
use crate::pg::subxact::rolled_back;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A filter, and the (role, claims) it is evaluated as when its column's
/// type is a user's (None: once for everyone).
type FilterKey<'a> = (&'a Filter, Option<(&'a str, &'a str)>);

/// Where `f`'s result for `ctx` is kept: borrowed, as it is looked up for
/// every change, channel and filter.
fn filter_key<'a>(meta: &TableMeta, f: &'a Filter, ctx: &'a AuthContext) -> FilterKey<'a> {
    (f, meta.user_typed.contains(&f.column).then_some((ctx.role.as_str(), ctx.claims_json.as_str())))
}

/// How long a role's row checks took and how many (claims groups × rows) there were.
pub type CheckTime = (Duration, u64);

/// For each change, the deliveries it makes, in the changes' order; the
/// Row Level Security checks it ran go to `checks`.
pub fn route(
    registry: &Registry,
    changes: &[RowChange],
    max_record_bytes: usize,
    checks: &mut Vec<CheckTime>,
) -> Vec<Vec<Delivery>> {
    // Read-only SPI queries use the active snapshot, which dates from the
    // start of the worker's transaction; rows committed since must be seen.
    // SAFETY: main thread, in a transaction; popped below.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let out = route_with_snapshot(registry, changes, max_record_bytes, checks);
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    out
}

fn route_with_snapshot(
    registry: &Registry,
    changes: &[RowChange],
    max_record_bytes: usize,
    checks: &mut Vec<CheckTime>,
) -> Vec<Vec<Delivery>> {
    let mut out = vec![Vec::new(); changes.len()];
    let mut by_table: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, c) in changes.iter().enumerate() {
        by_table.entry(c.rel).or_default().push(i);
    }
    for (relid, indexes) in by_table {
        let channels = registry.on_table(relid);
        if channels.is_empty() {
            continue;
        }
        let meta = match rolled_back(|| table_meta(relid)) {
            Ok(Ok(Some(meta))) => meta,
            Ok(Ok(None)) => continue, // dropped since
            Ok(Err(e)) => {
                warning!("realtime: cannot read table {relid} for postgres_changes: {e}");
                continue;
            }
            Err(e) => {
                warning!("realtime: cannot read table {relid} for postgres_changes: {e}");
                continue;
            }
        };
        checks.extend(route_table(&meta, relid, &channels, changes, &indexes, max_record_bytes, &mut out));
    }
    out
}

fn route_table(
    meta: &TableMeta,
    relid: u32,
    channels: &[(u64, &AuthContext, Vec<&Binding>)],
    changes: &[RowChange],
    indexes: &[usize],
    max_record_bytes: usize,
    out: &mut [Vec<Delivery>],
) -> Vec<CheckTime> {
    // Filters: each distinct one evaluated once over the whole batch; on a
    // column of a user's type, once per subscriber group, as its role.
    let mut distinct: HashMap<FilterKey, &AuthContext> = HashMap::new();
    for (_, ctx, bindings) in channels {
        for f in bindings.iter().flat_map(|b| b.filters.iter()) {
            distinct.entry(filter_key(meta, f, ctx)).or_insert(*ctx);
        }
    }
    let passing: HashMap<FilterKey, HashSet<usize>> = distinct
        .into_iter()
        .map(|((f, key), ctx)| {
            let as_subscriber = key.is_some().then_some(ctx);
            let rows = evaluate_filter(meta, f, as_subscriber, changes, indexes);
            ((f, key), rows)
        })
        .collect();

    // Subscribers that share a role read the same columns; those that also
    // share claims see the same rows.
    let mut by_role: BTreeMap<&str, Vec<&AuthContext>> = BTreeMap::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for (_, ctx, _) in channels {
        if seen.insert((ctx.role.as_str(), ctx.claims_json.as_str())) {
            by_role.entry(ctx.role.as_str()).or_default().push(ctx);
        }
    }
    let mut columns: HashMap<&str, Result<HashSet<String>, String>> = HashMap::new();
    let mut visible: HashMap<(&str, &str), Result<HashSet<usize>, String>> = HashMap::new();
    let mut checks = Vec::new();
    for (role, groups) in &by_role {
        let readable = role_columns(relid, role);
        let seen = match &readable {
            Ok(cols) if key_readable(meta, cols) => {
                let started = Instant::now();
                let (seen, rows_checked) = check_groups(meta, role, groups, changes, indexes);
                if rows_checked > 0 {
                    checks.push((started.elapsed(), (groups.len() * rows_checked) as u64));
                }
                seen
            }
            // Without a readable key the role gets error rows, no lookups.
            Ok(_) => groups.iter().map(|g| (g.claims_json.as_str(), Ok(indexes.iter().copied().collect()))).collect(),
            Err(e) => groups.iter().map(|g| (g.claims_json.as_str(), Err(e.clone()))).collect(),
        };
        visible.extend(seen.into_iter().map(|(claims, v)| ((*role, claims), v)));
        columns.insert(role, readable);
    }

    for &i in indexes {
        let change = &changes[i];
        // One payload per role and column list, shared by every channel that gets it.
        let mut data_by_role: HashMap<(&str, Option<&[String]>), Arc<str>> = HashMap::new();
        let mut errors: HashMap<&str, Arc<str>> = HashMap::new();
        for (channel, ctx, bindings) in channels {
            let matching: Vec<&&Binding> = bindings
                .iter()
                .filter(|b| {
                    b.event.matches(&change.op)
                        && b.filters.iter().all(|f| passing[&filter_key(meta, f, ctx)].contains(&i))
                })
                .collect();
            // Bindings with different column lists get a message each.
            let mut selects: Vec<Option<&[String]>> = matching.iter().map(|b| b.select.as_deref()).collect();
            selects.sort();
            selects.dedup();
            for select in selects {
                let ids: Vec<u32> = matching.iter().filter(|b| b.select.as_deref() == select).map(|b| b.id).collect();
                let data = match &visible[&(ctx.role.as_str(), ctx.claims_json.as_str())] {
                    Err(message) => errors
                        .entry(message.as_str())
                        .or_insert_with(|| Arc::from(payload::error(meta, change, message).to_string()))
                        .clone(),
                    Ok(rows) if !rows.contains(&i) => continue,
                    Ok(_) => {
                        let Ok(cols) = &columns[ctx.role.as_str()] else { continue };
                        data_by_role
                            .entry((ctx.role.as_str(), select))
                            .or_insert_with(|| {
                                Arc::from(payload::build(meta, change, cols, select, max_record_bytes).to_string())
                            })
                            .clone()
                    }
                };
                out[i].push(Delivery { channel: *channel, ids, data });
            }
        }
    }
    checks
}

fn key_readable(meta: &TableMeta, columns: &HashSet<String>) -> bool {
    !meta.primary_key.is_empty() && meta.primary_key.iter().all(|k| columns.contains(k))
}

/// The columns of the table `role` may read; an error row's text otherwise
/// (a role that does not exist).
fn role_columns(relid: u32, role: &str) -> Result<HashSet<String>, String> {
    let read = rolled_back(|| {
        act_for_clients();
        Spi::connect(|client| {
            let args: [DatumWithOid; 2] = [pg_sys::Oid::from(relid).into(), role.into()];
            client
                .select(
                    "SELECT attname::text FROM pg_attribute
                     WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                       AND has_column_privilege($2, attrelid, attnum, 'SELECT')",
                    None,
                    &args,
                )?
                .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
                .collect::<Result<HashSet<String>, _>>()
        })
    });
    match read {
        Ok(Ok(columns)) => Ok(columns),
        Ok(Err(e)) => Err(format!("Error 500: {e}")),
        Err(e) => {
            warning!("realtime: RlsPolicyError: postgres_changes columns of table {relid} for role {role}: {e}");
            Err(format!("Error 500: {e}"))
        }
    }
}

/// Which changes each group (by claims) of `role` may see. Deletes cannot
/// be checked (the row is gone) and tables without RLS hide nothing;
/// otherwise the rows are looked up by primary key as the role with the
/// group's claims — now, at routing time, as Supabase does. Also how many
/// rows were looked up.
fn check_groups<'a>(
    meta: &TableMeta,
    role: &str,
    groups: &[&'a AuthContext],
    changes: &[RowChange],
    indexes: &[usize],
) -> (HashMap<&'a str, Result<HashSet<usize>, String>>, usize) {
    let (unchecked, checked): (Vec<usize>, Vec<usize>) =
        indexes.iter().partition(|&&i| !meta.rls || changes[i].op == "DELETE" || meta.primary_key.is_empty());
    let everyone: HashSet<usize> = unchecked.into_iter().collect();
    if checked.is_empty() {
        return (groups.iter().map(|g| (g.claims_json.as_str(), Ok(everyone.clone()))).collect(), 0);
    }
    let lookup = KeyLookup::new(meta, changes, &checked);
    // All groups at once; a failure sends each group to its own subtransaction.
    let together = rolled_back(|| lookup.run(role, groups));
    let seen: Vec<Result<HashSet<usize>, String>> = match together {
        Ok(Ok(all)) => all.into_iter().map(Ok).collect(),
        _ => groups
            .iter()
            .map(|g| match rolled_back(|| lookup.run(role, &[*g])) {
                Ok(Ok(mut one)) => Ok(one.pop().unwrap_or_default()),
                Ok(Err(e)) => Err(format!("Error 500: {e}")),
                Err(e) => {
                    warning!(
                        "realtime: RlsPolicyError: postgres_changes check on {}.{} as {role} failed: {e}",
                        meta.schema,
                        meta.table
                    );
                    Err(format!("Error 500: {e}"))
                }
            })
            .collect(),
    };
    let visible = groups
        .iter()
        .zip(seen)
        .map(|(g, v)| (g.claims_json.as_str(), v.map(|rows| rows.union(&everyone).copied().collect())))
        .collect();
    (visible, checked.len())
}

/// A prepared lookup of the changed rows by primary key, run as each group.
struct KeyLookup {
    sql: String,
    keys: Value,
}

impl KeyLookup {
    fn new(meta: &TableMeta, changes: &[RowChange], checked: &[usize]) -> KeyLookup {
        let keys: Vec<Value> = checked
            .iter()
            .map(|&i| {
                let mut row = json!({"i": i});
                for k in &meta.primary_key {
                    row[k.as_str()] = changes[i].new.as_ref().and_then(|n| n.get(k)).cloned().unwrap_or(Value::Null);
                }
                row
            })
            .collect();
        let types: HashMap<&str, &str> = meta.columns.iter().map(|(n, _, t)| (n.as_str(), t.as_str())).collect();
        let record_columns: Vec<String> = meta
            .primary_key
            .iter()
            .map(|k| format!("{} {}", quote_identifier(k), types.get(k.as_str()).unwrap_or(&"text")))
            .collect();
        // Key columns are never null: `=` keeps the primary key index usable.
        let join: Vec<String> =
            meta.primary_key.iter().map(|k| format!("t.{q} = v.{q}", q = quote_identifier(k))).collect();
        let sql = format!(
            "SELECT v.i FROM jsonb_to_recordset($1) AS v(i int, {}) WHERE EXISTS (SELECT 1 FROM {}.{} t WHERE {})",
            record_columns.join(", "),
            quote_identifier(&meta.schema),
            quote_identifier(&meta.table),
            join.join(" AND ")
        );
        KeyLookup { sql, keys: Value::Array(keys) }
    }

    /// The rows each group sees, in the groups' order.
    fn run(&self, role: &str, groups: &[&AuthContext]) -> Result<Vec<HashSet<usize>>, pgrx::spi::Error> {
        Spi::connect(|client| {
            let plan = client.prepare(self.sql.as_str(), &[PgOid::BuiltIn(PgBuiltInOids::JSONBOID)])?;
            // Converted once, passed to every execution.
            let keys = pgrx::JsonB(self.keys.clone()).into_datum();
            let mut seen = Vec::with_capacity(groups.len());
            for (n, group) in groups.iter().enumerate() {
                if n == 0 {
                    assume(group, "");
                } else {
                    assume_claims(group);
                }
                // SAFETY: a jsonb datum made above, alive for this SPI connection.
                let arg = unsafe { DatumWithOid::new(keys, pg_sys::JSONBOID) };
                let rows = client.select(&plan, None, &[arg])?;
                let mut visible = HashSet::new();
                for row in rows {
                    if let Some(i) = row.get::<i32>(1)? {
                        visible.insert(i as usize);
                    }
                }
                seen.push(visible);
            }
            debug_assert!(groups.iter().all(|g| g.role == role));
            Ok(seen)
        })
    }
}

/// Changes of the batch that pass `f`, compared as the column's type: as
/// `subscriber` (its role and claims) when the type is a user's, whose
/// input function, domain checks and operators are code another role owns;
/// otherwise as the worker acts for clients, where only built-in code runs
/// (the session's `search_path` is `pg_catalog, pg_temp`). Inserts and
/// updates are compared on the new row, deletes on the old one; a column the
/// row does not carry (a delete's column outside its replica identity)
/// passes no filter, as in Supabase.
fn evaluate_filter(
    meta: &TableMeta,
    f: &Filter,
    subscriber: Option<&AuthContext>,
    changes: &[RowChange],
    indexes: &[usize],
) -> HashSet<usize> {
    let Some((_, _, type_sql)) = meta.columns.iter().find(|(n, _, _)| *n == f.column) else {
        return HashSet::new(); // the column is gone: nothing passes
    };
    let mut rows = Vec::new();
    for &i in indexes {
        let c = &changes[i];
        let source = if c.op == "DELETE" { c.old.as_ref() } else { c.new.as_ref().or(c.old.as_ref()) };
        if let Some(value) = source.and_then(|r| r.get(&f.column)) {
            rows.push(json!({"i": i, "v": value}));
        }
    }
    if rows.is_empty() {
        return HashSet::new();
    }
    let (condition, value) = condition::condition(f, "v.v", type_sql, 2);
    let sql = format!("SELECT v.i FROM jsonb_to_recordset($1) AS v(i int, v {type_sql}) WHERE {condition}");
    let result = rolled_back(|| {
        match subscriber {
            Some(ctx) => assume(ctx, ""),
            None => act_for_clients(),
        }
        Spi::connect(|client| -> Result<Vec<i32>, pgrx::spi::Error> {
            let rows = pgrx::JsonB(Value::Array(rows));
            let selected = match &value {
                Some(value) => client.select(&sql, None, &[rows.into(), value.as_str().into()])?,
                None => client.select(&sql, None, &[rows.into()])?,
            };
            selected.map(|row| row.get::<i32>(1).map(Option::unwrap_or_default)).collect()
        })
    });
    match result {
        Ok(Ok(ids)) => ids.into_iter().map(|i| i as usize).collect(),
        Ok(Err(e)) => {
            warning!("realtime: filter {f} on {}.{} failed: {e}", meta.schema, meta.table);
            HashSet::new()
        }
        Err(e) => {
            warning!("realtime: filter {f} on {}.{} failed: {e}", meta.schema, meta.table);
            HashSet::new()
        }
    }
}

/// Names, types, key, RLS and replica identity of a table, or None if gone.
fn table_meta(relid: u32) -> Result<Option<TableMeta>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let row = client
            .select(
                "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relreplident = 'f',
                        (SELECT jsonb_agg(jsonb_build_array(a.attname, t.typname, format_type(a.atttypid, a.atttypmod))
                                          ORDER BY a.attnum)
                         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                        (SELECT coalesce(jsonb_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum)), '[]')
                         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                         WHERE i.indrelid = c.oid AND i.indisprimary),
                        (SELECT coalesce(jsonb_agg(a.attname), '[]') FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                           AND a.atttypid >= 16384)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                None,
                &[pg_sys::Oid::from(relid).into()],
            )?
            .first();
        if row.is_empty() {
            return Ok(None);
        }
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let columns = row.get::<pgrx::JsonB>(5)?.map(|j| j.0).unwrap_or_default();
        let key = row.get::<pgrx::JsonB>(6)?.map(|j| j.0).unwrap_or_default();
        // Made by initdb below FirstNormalObjectId; anything at or above it
        // (a domain, an extension's type) belongs to some role.
        let user_typed = row.get::<pgrx::JsonB>(7)?.map(|j| j.0).unwrap_or_default();
        Ok(Some(TableMeta {
            schema: row.get::<String>(1)?.unwrap_or_default(),
            table: row.get::<String>(2)?.unwrap_or_default(),
            rls: row.get::<bool>(3)?.unwrap_or(false),
            identity_full: row.get::<bool>(4)?.unwrap_or(false),
            columns: columns
                .as_array()
                .map(|a| a.iter().map(|c| (text(&c[0]), text(&c[1]), text(&c[2]))).collect())
                .unwrap_or_default(),
            primary_key: key.as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default(),
            user_typed: user_typed.as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default(),
        }))
    })
}
