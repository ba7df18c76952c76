//! Client broadcasts and presence reach the other nodes through the bus
//! (`realtime.bus`). Each is delivered here at once, then queued (bounded)
//! for the primary to write to WAL: on the primary its own main thread
//! writes it; on a hot standby `realtime.bus_relay` does, over one
//! connection to the primary. Every node delivers relayed rows as they come
//! back, but the one that relayed them (its origin is in the row). Presence
//! of other nodes is kept in [`super::remote_presence`].

use super::hub::{SubId, TopicKey, Wakeups};
use super::nodes::Primary;
use super::remote_presence::ALIVE_EVERY;
use super::shared::Shared;
use crate::bridge::gap::lsn_text;
use crate::bridge::{ReadPermissions, RelayKind, Relayed, Request};
use crate::protocol::{Body, Broadcast};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

/// Their bytes, at most: an eighth of `realtime.max_memory`.
fn queue_bytes(shared: &Shared) -> usize {
    shared.budget.limit() / 8
}
/// Bytes relayed in one call, about.
const BATCH_BYTES: usize = 1024 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Queues a client's broadcast for the other nodes, if this node is on the bus.
pub fn send(shared: &Shared, key: &TopicKey, broadcast: &Broadcast) {
    let (payload, binary) = broadcast.payload.to_row_text();
    let header = Relayed {
        topic: key.topic.clone(),
        private: key.private,
        event: broadcast.event.clone(),
        binary,
        ..Relayed::default()
    };
    queue(shared, header, &payload);
}

/// Queues a local channel's track for the other nodes.
pub fn track(shared: &Shared, key: &TopicKey, owner: SubId, presence_key: &str, payload: &Map<String, Value>) {
    let (header, payload) = track_row(key, owner, presence_key, payload);
    queue(shared, header, &payload);
}

fn track_row(key: &TopicKey, owner: SubId, presence_key: &str, payload: &Map<String, Value>) -> (Relayed, String) {
    let header = Relayed {
        kind: RelayKind::Track,
        topic: key.topic.clone(),
        private: key.private,
        event: presence_key.to_owned(),
        owner,
        ..Relayed::default()
    };
    (header, serde_json::to_string(payload).expect("a JSON map serializes"))
}

/// Queues a local channel's untrack (or leave, while tracking) for the other nodes.
pub fn untrack(shared: &Shared, key: &TopicKey, owner: SubId) {
    let header = Relayed {
        kind: RelayKind::Untrack,
        topic: key.topic.clone(),
        private: key.private,
        owner,
        ..Relayed::default()
    };
    queue(shared, header, "");
}

/// Everything this node's channels track, again, when another node asks
/// (it started, or heard this one anew) and after a new epoch, when relays
/// in flight may have been lost. Paced by the relay queue rather than
/// dropped when it is full: a node may track many.
async fn track_all(shared: &Shared) {
    let remote = shared.nodes.remote_presence.ids();
    for (key, owner, presence_key, payload) in shared.hub.presences(|id| remote.contains(&id)) {
        let (header, payload) = track_row(&key, owner, &presence_key, &payload);
        let waited = std::time::Instant::now();
        while !has_room(shared, header.topic.len() + payload.len()) && waited.elapsed() < CALL_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        queue(shared, header, &payload);
    }
}

/// Whether the relay queue has room for about `bytes` more.
fn has_room(shared: &Shared, bytes: usize) -> bool {
    shared.nodes.queue.capacity() > 0
        && shared.nodes.queued_bytes.load(Ordering::Relaxed) + bytes + 256 <= queue_bytes(shared)
}

/// An `Alive` whose `owner` is this asks every node for what it tracks.
const ASK: u64 = 1;

/// Says this node is alive while any of its channels tracks presence; asks
/// every node for what it tracks at start and whenever it hears a node it
/// did not know (one that started, or that it had stopped hearing, say
/// while its replay stalled); sends what it tracks when asked; and drops the
/// presence of nodes no longer heard.
pub async fn keep_alive(shared: Arc<Shared>) {
    let mut first = true;
    let mut tick = tokio::time::interval(ALIVE_EVERY);
    loop {
        tick.tick().await;
        if shared.config().settings.bus.is_none() {
            continue;
        }
        let ask = std::mem::take(&mut first) | shared.nodes.presence_ask.swap(false, Ordering::Relaxed);
        let remote = shared.nodes.remote_presence.ids();
        if ask || shared.hub.tracks_any(|id| remote.contains(&id)) {
            let owner = if ask { ASK } else { 0 };
            queue(shared.as_ref(), Relayed { kind: RelayKind::Alive, owner, ..Relayed::default() }, "");
        }
        if shared.nodes.presence_asked.swap(false, Ordering::Relaxed) {
            track_all(&shared).await;
        }
        let diffs = shared.nodes.remote_presence.expire(&shared.hub, Instant::now());
        shared.rates.presence.add(diffs as u64);
    }
}

/// Queues a row for the primary to write to the bus, within the queue's
/// bounds, if this node is on the bus.
fn queue(shared: &Shared, mut header: Relayed, payload: &str) {
    let config = shared.config();
    let Some(bus) = &config.settings.bus else { return };
    header.origin = bus.origin.clone();
    let row = header.row(payload);
    let len = row.len();
    let queued = shared.nodes.queued_bytes.fetch_add(len, Ordering::Relaxed);
    if queued + len > queue_bytes(shared) || shared.nodes.queue.try_send(row).is_err() {
        shared.nodes.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        shared.metrics.bus_relay_dropped.inc();
    }
}

/// Delivers what another node relayed; skips this node's own.
pub fn deliver(shared: &Shared, row: &str, position: u64, wakeups: &mut Wakeups) {
    let (relayed, payload) = match Relayed::parse(row) {
        Ok(parsed) => parsed,
        Err(e) => return crate::log_warning!("realtime: skipping an undecodable relayed row: {e}"),
    };
    if shared.config().settings.bus.as_ref().is_some_and(|b| b.origin == relayed.origin) {
        return;
    }
    // Presence rows say who is up; broadcasts do not (a node that only
    // broadcasts would otherwise be heard anew every few seconds).
    if relayed.kind != RelayKind::Broadcast && shared.nodes.remote_presence.heard(&relayed.origin, Instant::now()) {
        shared.nodes.presence_ask.store(true, Ordering::Relaxed);
    }
    if relayed.kind == RelayKind::Alive && relayed.owner == ASK {
        shared.nodes.presence_asked.store(true, Ordering::Relaxed);
    }
    let key = TopicKey { private: relayed.private, topic: relayed.topic };
    let remote = &shared.nodes.remote_presence;
    let delivered = match relayed.kind {
        RelayKind::Broadcast => {
            let payload = match Body::from_row_text(relayed.binary, payload) {
                Ok(body) => body,
                Err(e) => return crate::log_warning!("realtime: skipping a relayed broadcast: {e}"),
            };
            let broadcast = Broadcast { event: relayed.event, payload };
            let meta = (position != 0).then(|| json!({"position": lsn_text(position)}));
            let delivered = shared.hub.broadcast_deferred(&key, &broadcast, meta.as_ref(), position, None, wakeups);
            shared.rates.events.add(delivered as u64);
            return;
        }
        RelayKind::Track => match serde_json::from_str::<Map<String, Value>>(payload) {
            Ok(meta) => remote.track(&shared.hub, &relayed.origin, key, relayed.owner, &relayed.event, meta),
            Err(e) => return crate::log_warning!("realtime: skipping a relayed presence track: {e}"),
        },
        RelayKind::Untrack => remote.untrack(&shared.hub, &relayed.origin, relayed.owner),
        RelayKind::Alive => 0,
    };
    shared.rates.presence.add(delivered as u64);
}

/// Answers a permission check on a hot standby by running it on the primary
/// (its probe writes). An unreachable primary is an error that says so.
pub async fn check(shared: Arc<Shared>, conninfo: String, request: Request) {
    match request {
        Request::ReadPermissions { ctx, topic, presence, reply } => {
            let sql = "SELECT broadcast, presence FROM realtime.bus_read_permissions($1, $2, $3, $4, $5, $6)";
            let params: [&(dyn ToSql + Sync); 6] =
                [&ctx.role, &ctx.claims_json, &ctx.sub, &topic, &presence, &ctx.headers];
            let asked = ask_primary(&shared, &conninfo, sql, &params);
            let _ = reply.send(asked.await.map(|row| ReadPermissions { broadcast: row.get(0), presence: row.get(1) }));
        }
        Request::WritePermission { ctx, topic, extension, reply } => {
            let extension = extension.as_str();
            let sql = "SELECT realtime.bus_write_permission($1, $2, $3, $4, $5, $6)";
            let params: [&(dyn ToSql + Sync); 6] =
                [&ctx.role, &ctx.claims_json, &ctx.sub, &topic, &extension, &ctx.headers];
            let asked = ask_primary(&shared, &conninfo, sql, &params);
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
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, String> {
    // The client gets the code and cause; the log has the details (hosts,
    // users): connection failures once a second, in `Primary::client`.
    const UNREACHABLE: &str = "UnableToSetPolicies: this standby cannot reach the primary";
    let client = shared.nodes.primary.client(conninfo).await.map_err(|_| UNREACHABLE.to_owned())?;
    let asked = tokio::time::timeout(CALL_TIMEOUT, client.query_one(sql, params)).await;
    match asked {
        Ok(Ok(row)) => Ok(row),
        Ok(Err(e)) if !e.is_closed() => Err(e.to_string()),
        failed => {
            crate::log_warning!("realtime: a standby's permission check on the primary failed: {failed:?}");
            Err(UNREACHABLE.to_owned())
        }
    }
}

/// Takes queued rows to the primary, in batches, in order.
pub async fn run(shared: Arc<Shared>, mut queued: mpsc::Receiver<String>) {
    let mut failing = false;
    // The main thread's share of requests, on the primary.
    let share = crate::bridge::Share::new(16);
    while let Some(first) = queued.recv().await {
        let mut bytes = first.len();
        let mut rows = vec![first];
        while bytes < BATCH_BYTES {
            match queued.try_recv() {
                Ok(row) => {
                    bytes += row.len();
                    rows.push(row);
                }
                Err(_) => break,
            }
        }
        let config = shared.config();
        let Some(bus) = config.settings.bus.as_ref() else {
            // The bus was turned off meanwhile.
            shared.nodes.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            continue;
        };
        let sent = match &bus.primary_conninfo {
            Some(conninfo) => relay_rows(&shared.nodes.primary, conninfo, &rows).await,
            // This node is the primary: its main thread writes them, while
            // it has room for them (they wait here, counted, meanwhile).
            None => loop {
                match shared.bridge.send(&share, Request::BusRelay(rows.clone())) {
                    Ok(()) => break Ok(()),
                    Err(crate::bridge::queue::CallError::Busy) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(e) => break Err(e.to_string()),
                }
            },
        };
        shared.nodes.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        match sent {
            Ok(()) if failing => {
                crate::log_info!("realtime: relaying client broadcasts to the primary again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                shared.metrics.bus_relay_dropped.inc_by(rows.len() as u64);
                if !failing {
                    crate::log_warning!(
                        "realtime: cannot relay client broadcasts to the primary: {e}; \
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
