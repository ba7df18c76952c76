//! The network side's part of `realtime.stats`, `realtime.connections` and
//! `realtime.channels`: figures from the metrics, rows from the hub. Rates
//! are per second since the previous call (the main thread calls once a second).

use super::shared::Shared;
use crate::bridge::stats::{ConnectionRow, Stats, Totals};
use crate::protocol::Vsn;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Times the transactions whose messages a batch just queued, from their
/// commit times (Unix microseconds; Postgres's clock is this host's).
pub fn sent(shared: &Shared, commits: &[i64]) {
    if commits.is_empty() {
        return;
    }
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let now = Instant::now();
    let mut window = shared.delivery.commit_to_send.lock().unwrap_or_else(|p| p.into_inner());
    for &committed in commits.iter().filter(|&&c| c > 0) {
        let took = Duration::from_micros(now_us.saturating_sub(committed).max(0) as u64);
        window.record(took, 1, now);
        shared.metrics.commit_to_send_seconds.observe(took.as_secs_f64());
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn take(shared: &Shared) -> Stats {
    let m = &shared.metrics;
    let (channel_rows, per_conn) = shared.hub.channel_rows();
    let mut connections: Vec<ConnectionRow> = shared
        .hub
        .connections()
        .iter()
        .map(|c| {
            let ctx = c.peer.auth.as_ref().map(|a| &a.ctx);
            ConnectionRow {
                id: c.id,
                role: ctx.map(|x| x.role.clone()).unwrap_or_default(),
                sub: ctx.and_then(|x| x.sub.clone()),
                remote_address: c.peer.remote.map(|a| a.ip().to_string()).unwrap_or_default(),
                remote_port: c.peer.remote.map_or(0, |a| a.port()),
                protocol_version: match c.vsn {
                    Vsn::V1 => "1.0.0",
                    Vsn::V2 => "2.0.0",
                }
                .into(),
                connected_at_ms: unix_ms(c.peer.connected_at),
                channels: per_conn.get(&c.id).copied().unwrap_or(0),
                queued_bytes: c.queued_bytes() as u64,
            }
        })
        .collect();
    connections.sort_by_key(|c| c.id);

    let totals = [m.joins_total(), m.frames_in.get(), m.frames_out.get(), m.bytes_out.get()];
    let now = Instant::now();
    let mut previous = shared.figures.previous.lock().unwrap_or_else(|p| p.into_inner());
    let rates = match *previous {
        Some((then, before)) if now > then => {
            let secs = now.duration_since(then).as_secs_f64();
            std::array::from_fn(|i| totals[i].saturating_sub(before[i]) as f64 / secs)
        }
        _ => [0.0; 4],
    };
    *previous = Some((now, totals));
    drop(previous);
    let commit_to_send = shared.delivery.commit_to_send.lock().unwrap_or_else(|p| p.into_inner()).percentiles(now);

    Stats {
        taken_at_ms: unix_ms(SystemTime::now()),
        sockets: shared.sockets.open.load(Ordering::Relaxed) as u64,
        channels: channel_rows.len() as u64,
        joins_per_second: rates[0],
        messages_in_per_second: rates[1],
        messages_out_per_second: rates[2],
        bytes_out_per_second: rates[3],
        commit_to_send,
        queued_bytes: shared.budget.used() as u64,
        max_memory_bytes: shared.budget.limit() as u64,
        totals: Totals {
            joins: totals[0],
            messages_in: totals[1],
            messages_out: totals[2],
            bytes_out: totals[3],
            database_messages: m.database_messages.get(),
            rls_checks: 0,
        },
        stats_reset_ms: unix_ms(shared.figures.started_at),
        refused_joins: m.refused_by_code(),
        limit_trips: m.trips_by_code(),
        connections,
        channel_rows,
        ..Stats::default()
    }
}
