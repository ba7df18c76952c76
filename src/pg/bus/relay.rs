//! What a hot standby's worker asks of the primary's, over
//! `realtime.primary_conninfo` as `realtime_relay`: its clients' broadcasts
//! written to the bus, and the private-channel checks that write (probes).

use crate::bridge::{AuthContext, Extension};
use crate::pg::authz::rls;
use crate::pg::recovery::in_recovery;
use crate::row_format::{RELAYED, tagged};
use pgrx::prelude::*;

/// Writes client broadcasts ([`crate::bridge::Relayed`] rows) to the bus.
pub fn write_relayed(rows: &[String]) {
    super::envelope::write(&rows.iter().map(|r| tagged(RELAYED, r)).collect::<Vec<_>>());
}

/// A hot standby's worker relays its clients' broadcasts here, on the
/// primary (over `realtime.primary_conninfo`, as `realtime_relay`).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn bus_relay(rows: Vec<String>) {
    if in_recovery() {
        error!("realtime.bus_relay writes WAL: call it on the primary");
    }
    write_relayed(&rows);
    // Non-transactional messages wake no one at commit: the worker here
    // decodes them for its own sockets at once, not on its fallback timer.
    crate::pg::wake::wake_worker();
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION realtime.bus_relay(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.bus_relay(text[]) TO realtime_relay;
"#,
    name = "bus_relay_grants",
    requires = [bus_relay]
);

/// A standby's private-channel read check, run here on the primary as the
/// worker runs it (the probe writes). The checks act as the client's role:
/// the caller is `realtime_relay` (a member of the roles the worker may
/// act as) or a superuser; EXECUTE is granted to no one else.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn bus_read_permissions(
    role: String,
    claims: String,
    sub: Option<String>,
    topic: String,
    presence: bool,
    headers: default!(Option<String>, "NULL"),
) -> TableIterator<'static, (name!(broadcast, bool), name!(presence, bool))> {
    let ctx = AuthContext { role, claims_json: claims, sub, headers };
    match rls::read_permissions(&[rls::ReadProbe { ctx: &ctx, topic: &topic, presence }]).remove(0) {
        Ok(read) => TableIterator::once((read.broadcast, read.presence)),
        Err(e) => error!("{e}"),
    }
}

/// A standby's private-channel write check (`broadcast` or `presence`).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn bus_write_permission(
    role: String,
    claims: String,
    sub: Option<String>,
    topic: String,
    extension: String,
    headers: default!(Option<String>, "NULL"),
) -> bool {
    let ctx = AuthContext { role, claims_json: claims, sub, headers };
    let extension = match extension.as_str() {
        "presence" => Extension::Presence,
        _ => Extension::Broadcast,
    };
    rls::write_permission(&ctx, &topic, extension).unwrap_or_else(|e| error!("{e}"))
}

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.bus_write_permission(text, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION realtime.bus_read_permissions(text, text, text, text, boolean, text) TO realtime_relay;
GRANT EXECUTE ON FUNCTION realtime.bus_write_permission(text, text, text, text, text, text) TO realtime_relay;
"#,
    name = "bus_check_grants",
    requires = [bus_read_permissions, bus_write_permission]
);
