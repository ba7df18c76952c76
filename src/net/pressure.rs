//! Slow consumers. Database messages are handed to the network side only
//! while a quarter of the memory budget is free of them (`Budget::handoff_room`),
//! so a burst (a transaction of a million rows) is paced to the sockets that
//! read it. A socket that stops reading would then hold everyone back: while
//! the budget stays that full, every second, sockets that hold frames and
//! wrote less than a trickle in the last second are closed (1008).

use super::shared::Shared;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const TICK: Duration = Duration::from_secs(1);
/// Bytes a socket must write per second under pressure to keep its place.
const MIN_BYTES_PER_TICK: u64 = 64 * 1024;
/// Sockets holding less than this are not what holds the budget.
const MIN_HELD: usize = 64 * 1024;

pub async fn watch(shared: Arc<Shared>) {
    let mut written_before: HashMap<u64, u64> = HashMap::new();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.budget.can_hand_off() {
            written_before.clear();
            continue;
        }
        let connections = shared.hub.connections();
        for conn in &connections {
            let Some(before) = written_before.get(&conn.id) else { continue };
            if conn.queued_bytes() >= MIN_HELD && conn.written_bytes() - before < MIN_BYTES_PER_TICK {
                conn.close(1008, "slow consumer: not reading while the worker's memory is full");
            }
        }
        written_before = connections.iter().map(|c| (c.id, c.written_bytes())).collect();
    }
}
