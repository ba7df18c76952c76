//! Client broadcasts reach the other nodes through the
//! bus (`realtime.bus`). Each is delivered here at once, then queued
//! (bounded) for the primary to write to WAL: on the primary its own main
//! thread writes it; on a hot standby `realtime.bus_relay` does, over one
//! connection to the primary. Every node delivers relayed rows as they come
//! back, but the one that relayed them (its origin is in the row).

use super::Shared;
use super::hub::{TopicKey, Wakeups};
use crate::bridge::{ReadPermissions, Relayed, Request};
use crate::protocol::{Body, Broadcast};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Client broadcasts waiting for the primary; past it they reach this node's
/// clients only (counted in `realtime_bus_relay_dropped_total`).
pub const QUEUE: usize = 4096;
/// Rows relayed in one call.
const BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Queues a client's broadcast for the other nodes, if this node is on the bus.
pub fn send(shared: &Shared, key: &TopicKey, broadcast: &Broadcast) {
    let config = shared.config();
    let Some(bus) = &config.bus else { return };
    let (payload, binary) = match &broadcast.payload {
        Body::Json(raw) => (raw.get().to_owned(), false),
        Body::Binary(bytes) => (base64::engine::general_purpose::STANDARD.encode(bytes), true),
    };
    let header = Relayed {
        origin: bus.origin.clone(),
        topic: key.topic.clone(),
        private: key.private,
        event: broadcast.event.clone(),
        binary,
    };
    if shared.relay.try_send(header.row(&payload)).is_err() {
        shared.metrics.bus_relay_dropped.inc();
    }
}

/// Delivers a client broadcast another node relayed; skips this node's own.
pub fn deliver(shared: &Shared, row: &str, wakeups: &mut Wakeups) {
    let (relayed, payload) = match Relayed::parse(row) {
        Ok(parsed) => parsed,
        Err(e) => return crate::log_warning!("realtime: skipping an undecodable relayed broadcast: {e}"),
    };
    if shared.config().bus.as_ref().is_some_and(|b| b.origin == relayed.origin) {
        return;
    }
    let payload = if relayed.binary {
        match base64::engine::general_purpose::STANDARD.decode(payload) {
            Ok(bytes) => Body::Binary(bytes),
            Err(e) => return crate::log_warning!("realtime: skipping a relayed broadcast: payload is not base64: {e}"),
        }
    } else {
        match Body::json_text(payload.to_owned()) {
            Ok(body) => body,
            Err(e) => return crate::log_warning!("realtime: skipping a relayed broadcast: payload is not JSON: {e}"),
        }
    };
    let key = TopicKey { private: relayed.private, topic: relayed.topic };
    let delivered =
        shared.hub.broadcast_deferred(&key, &Broadcast { event: relayed.event, payload }, None, None, wakeups);
    shared.rates.events.add(delivered as u64);
}

/// One connection to the primary, shared by relays and checks, opened on
/// first use and again after it broke or `realtime.primary_conninfo` changed.
#[derive(Default)]
pub struct Primary(tokio::sync::Mutex<Option<(String, Arc<tokio_postgres::Client>)>>);

impl Primary {
    async fn client(&self, conninfo: &str) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut held = self.0.lock().await;
        if let Some((used, client)) = held.as_ref()
            && used == conninfo
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let connecting = tokio_postgres::connect(conninfo, tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let client = Arc::new(client);
        *held = Some((conninfo.to_owned(), client.clone()));
        Ok(client)
    }
}

/// Answers a permission check on a hot standby by running it on the primary
/// (its probe writes). An unreachable primary is an error that says so.
pub async fn check(shared: Arc<Shared>, conninfo: String, request: Request) {
    match request {
        Request::ReadPermissions { ctx, topic, presence, reply } => {
            let sql = "SELECT broadcast, presence FROM realtime.bus_read_permissions($1, $2, $3, $4, $5)";
            let asked =
                ask_primary(&shared, &conninfo, sql, [&ctx.role, &ctx.claims_json, &ctx.sub, &topic, &presence]);
            let _ = reply.send(asked.await.map(|row| ReadPermissions { broadcast: row.get(0), presence: row.get(1) }));
        }
        Request::WritePermission { ctx, topic, extension, reply } => {
            let extension = extension.as_str();
            let sql = "SELECT realtime.bus_write_permission($1, $2, $3, $4, $5)";
            let asked =
                ask_primary(&shared, &conninfo, sql, [&ctx.role, &ctx.claims_json, &ctx.sub, &topic, &extension]);
            let _ = reply.send(asked.await.map(|row| row.get::<_, bool>(0)));
        }
        _ => {}
    }
}

/// One row from the primary; failing to reach it is an `UnableToSetPolicies`
/// error, a failing check its own message.
async fn ask_primary(
    shared: &Shared,
    conninfo: &str,
    sql: &str,
    params: [&(dyn tokio_postgres::types::ToSql + Sync); 5],
) -> Result<tokio_postgres::Row, String> {
    let unreachable = |e: String| format!("UnableToSetPolicies: this standby cannot reach the primary: {e}");
    let client = shared.primary.client(conninfo).await.map_err(unreachable)?;
    tokio::time::timeout(CALL_TIMEOUT, client.query_one(sql, &params))
        .await
        .map_err(|_| unreachable("the check timed out".into()))?
        .map_err(|e| if e.is_closed() { unreachable(e.to_string()) } else { e.to_string() })
}

/// Takes queued rows to the primary, in batches, in order.
pub async fn run(shared: Arc<Shared>, mut queued: mpsc::Receiver<String>) {
    let mut failing = false;
    while let Some(first) = queued.recv().await {
        let mut rows = vec![first];
        while rows.len() < BATCH {
            match queued.try_recv() {
                Ok(row) => rows.push(row),
                Err(_) => break,
            }
        }
        let conninfo = shared.config().bus.as_ref().and_then(|b| b.primary_conninfo.clone());
        let Some(conninfo) = conninfo else {
            // This node is the primary: its main thread writes them.
            shared.bridge.tell(Request::BusRelay(rows));
            continue;
        };
        match relay_rows(&shared.primary, &conninfo, &rows).await {
            Ok(()) if failing => {
                crate::log_info!("realtime: relaying client broadcasts to the primary again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                shared.metrics.bus_relay_dropped.inc_by(rows.len() as u64);
                if !failing {
                    crate::log_warning!(
                        "realtime: cannot relay client broadcasts to the primary (realtime.primary_conninfo): {e}; \
                         they reach this node's clients only until it works"
                    );
                    failing = true;
                }
            }
        }
    }
}

async fn relay_rows(primary: &Primary, conninfo: &str, rows: &[String]) -> Result<(), String> {
    let client = primary.client(conninfo).await?;
    tokio::time::timeout(CALL_TIMEOUT, client.execute("SELECT realtime.bus_relay($1)", &[&rows]))
        .await
        .map_err(|_| "realtime.bus_relay timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(())
}
