//! What was decoded from the database, fanned out to the channels' sockets
//! in commit order: database broadcasts, Postgres Changes, relayed client
//! broadcasts.

use super::hub::{ChangeFrames, TopicKey, Wakeups};
use super::shared::Shared;
use super::{relay, stats};
use crate::bridge::gap::lsn_text;
use crate::bridge::{Batch, DbBroadcast, Decoded};
use crate::protocol::{Body, Broadcast};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Sends what was decoded from the database, in commit order. A starting
/// worker first waits `grace`, so clients that were connected before a restart
/// have rejoined and receive what was committed while it was down.
pub async fn deliver_decoded(
    shared: Arc<Shared>,
    mut decoded: mpsc::UnboundedReceiver<(Batch, Instant)>,
    grace: Duration,
) {
    tokio::time::sleep(grace).await;
    while let Some(first) = decoded.recv().await {
        // The batches waiting now go out together: each socket's writer is
        // woken once for all of them, and writes them in one go.
        let mut wakeups = Wakeups::default();
        let mut frames = ChangeFrames::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            fan_out(&shared, batch, &mut frames, &mut wakeups);
            taken += 1;
            if taken < COALESCED_BATCHES {
                next = decoded.try_recv().ok();
            }
        }
        wakeups.wake();
    }
}

/// Batches fanned out before the writers are woken.
const COALESCED_BATCHES: usize = 64;

fn fan_out(shared: &Shared, (batch, handed_over): (Batch, Instant), frames: &mut ChangeFrames, wakeups: &mut Wakeups) {
    let Batch { items, end_lsn, commits, mut charge } = batch;
    shared.metrics.database_messages.inc_by(items.len() as u64);
    for item in items {
        match &item {
            Decoded::Broadcast(row, position) => deliver_row(shared, row, *position, wakeups),
            Decoded::Change(d) => shared.hub.send_change(d.channel, &d.ids, &d.data, frames, wakeups),
            Decoded::Relayed(row, position) => relay::deliver(shared, row, *position, wakeups),
        }
        // Now in the sockets' queues, counted there.
        charge.release(item.bytes());
    }
    if end_lsn != 0 {
        shared.delivery.delivered_lsn.fetch_max(end_lsn, Ordering::Release);
    }
    shared.delivery.pending_batches.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.fan_out_seconds.observe(handed_over.elapsed().as_secs_f64());
    stats::sent(shared, &commits);
}

fn deliver_row(shared: &Shared, row: &str, position: u64, wakeups: &mut Wakeups) {
    let (message, payload) = match DbBroadcast::parse(row) {
        Ok((m, p)) => match Body::from_row_text(m.binary, p) {
            Ok(payload) => (m, payload),
            Err(e) => return crate::log_warning!("realtime: skipping database broadcast {}: {e}", m.id),
        },
        Err(e) => return crate::log_warning!("realtime: skipping an undecodable database broadcast: {e}"),
    };
    if payload.wire_len() > shared.config().settings.max_payload_bytes {
        return crate::log_warning!(
            "realtime: skipping database broadcast {}: payload larger than realtime.max_payload_size",
            message.id
        );
    }
    let key = TopicKey { private: message.private, topic: format!("realtime:{}", message.topic) };
    let mut meta = json!({"id": message.id});
    if position != 0 {
        meta["position"] = lsn_text(position).into();
    }
    let broadcast = Broadcast { event: message.event, payload };
    let delivered = shared.hub.broadcast_deferred(&key, &broadcast, Some(&meta), position, None, wakeups);
    shared.rates.events.add(delivered as u64);
}
