//! `realtime.node()`: what this server is to the other nodes: its role, its
//! epoch (system identifier and timeline: promotion starts a new timeline),
//! and on a hot standby how far the worker's bus reader trails replay.

use super::recovery;
use super::stats;
use pgrx::prelude::*;

#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn node() -> TableIterator<
    'static,
    (name!(role, String), name!(system_identifier, String), name!(timeline, i32), name!(bus_lag_bytes, Option<i64>)),
> {
    let standby = recovery::in_recovery();
    let (system_identifier, timeline) = recovery::epoch();
    // As of the worker's last snapshot (about once a second).
    let lag = stats::snapshot().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()).and_then(|s| {
        let same_role = s["standby"].as_bool() == Some(standby);
        same_role.then(|| s["bus_lag_bytes"].as_i64()).flatten()
    });
    let role = if standby { "standby" } else { "primary" };
    TableIterator::once((role.to_owned(), system_identifier.to_string(), timeline as i32, lag))
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION realtime.node() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.node() TO pg_read_all_stats;
"#,
    name = "node_grants",
    requires = [node]
);
