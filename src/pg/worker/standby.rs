//! A hot standby's role: reads the bus from the WAL recovery has replayed,
//! routes row changes against this replica and hands them over, keeps its
//! bus slot at what the network side has fanned out, and, once this server
//! is promoted, hands over to the primary's role.

use super::Role;
use super::context::Context;
use super::primary::Primary;
use crate::bridge::budget::MIN_HANDOFF;
use crate::bridge::{Batch, Decoded, Gap, Stats};
use crate::pg::bus::{self, slot as bus_slot};
use crate::pg::recovery::in_recovery;
use crate::pg::wal::available_end;
use crate::pg::{settings, subxact, wake};
use crate::redelivery::Delivered;
use crate::row_format::{Control, Row};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Recovery wakes a standby's worker as it replays a bus message
/// (`bus::wake_on_replay`); the replay position passes the message just
/// after, so the worker looks again this soon until it has; and, whatever
/// happens, this often.
const BUS_REPLAYING: Duration = Duration::from_millis(1);
const BUS_FALLBACK: Duration = Duration::from_millis(100);
/// The longest a promoted standby's worker reads the old primary's last bus messages.
const DRAIN_AT_PROMOTION: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Standby {
    /// Reads the bus from replayed WAL (opened on first use).
    reader: Option<bus::Reader>,
    /// The last mark read; what committed before it is on the bus.
    covered: u64,
    /// Rows read since that mark (the first rows of the transactions after it).
    rows_after_mark: usize,
    /// Where WAL the reader lost before reading it starts.
    lost_from: Option<u64>,
    /// Where the bus slot was last moved to, and when.
    slot_at: u64,
    slot_moved: Option<Instant>,
}

impl Standby {
    /// Routes and hands over the bus messages recovery has replayed, while
    /// the budget has room. True when more is waiting and there is room.
    fn read_bus(&mut self, cx: &mut Context) -> bool {
        if !cx.budget.can_hand_off() {
            return false;
        }
        if self.reader.is_none() {
            let start = self.bus_start(cx);
            self.reader = Some(bus::Reader::open(start));
            cx.network.set_replication_ready(true);
        }
        let mut messages = Vec::new();
        let max = cx.budget.handoff_room().clamp(MIN_HANDOFF, super::MAX_CHUNK);
        let reader = self.reader.as_mut().expect("opened above");
        let read = reader.read(&mut messages, max, super::STEP_TIME);
        let position = reader.position();
        let mut gaps = Vec::new();
        let (mut rows, mut positions) = (Vec::with_capacity(messages.len()), Vec::with_capacity(messages.len()));
        for (at, message) in &messages {
            match Control::read(message) {
                Some(Control::Mark(lsn)) => (self.covered, self.rows_after_mark) = (lsn, 0),
                Some(Control::Gap(gap)) => gaps.push(gap),
                None => {
                    if let Some(row) = Row::from_bus(message) {
                        if !matches!(row, Row::Relayed(..)) {
                            self.rows_after_mark += 1;
                        }
                        rows.push(row);
                        positions.push(*at);
                    }
                }
            }
        }
        if !rows.is_empty() {
            // Row changes are routed here, against this replica, as the
            // subscribers' roles: RLS work spreads over the nodes.
            let items = cx.outgoing(rows, &positions);
            let charge = cx.budget.charge(items.iter().map(Decoded::bytes).sum());
            cx.network.deliver(Batch { items, end_lsn: position, commits: Vec::new(), charge });
        }
        for gap in gaps {
            cx.network.missed(&gap);
        }
        match read {
            Ok(read) => read == bus::Read::Paused,
            Err(e) => {
                warning!(
                    "realtime: reading the bus from replayed WAL failed, reading on from the replay position: {e}"
                );
                self.lost_from = Some(position);
                self.close_reader();
                false
            }
        }
    }

    /// Where the bus reader starts: where its slot says delivery stopped (a
    /// restarted worker's clients rejoin within the grace and get what was
    /// replayed meanwhile), unless that is lost or further back than
    /// `realtime.max_slot_wal`; else at what is replayed now. What is skipped
    /// is reported.
    fn bus_start(&mut self, cx: &mut Context) -> u64 {
        let now = available_end();
        let kept = cx
            .in_transaction(|| subxact::as_text(subxact::committed(bus_slot::open)))
            .map_err(|e| warning!("realtime: cannot open replication slot \"{}\": {e}", bus_slot::BUS_SLOT))
            .ok()
            .flatten();
        let bound = settings::max_slot_wal_bytes().max(0) as u64;
        let start = match kept {
            Some(kept) if kept <= now && now - kept <= bound => kept,
            Some(kept) if kept <= now => {
                warning!(
                    "realtime: replication slot \"{}\" is {} bytes behind, more than realtime.max_slot_wal ({bound} bytes): \
                     reading the bus from what is replayed now",
                    bus_slot::BUS_SLOT,
                    now - kept
                );
                self.lost_from = Some(self.lost_from.unwrap_or(kept));
                now
            }
            _ => now,
        };
        if let Some(from) = self.lost_from.take() {
            cx.network.missed(&Gap { from, to: start, commits: None });
        }
        (self.slot_at, self.slot_moved) = (0, None);
        self.move_slot(cx, start);
        start
    }

    /// Moves the bus slot up to `lsn`, at most once a `SAVE_EVERY`.
    fn move_slot(&mut self, cx: &mut Context, lsn: u64) {
        if lsn <= self.slot_at || self.slot_moved.is_some_and(|t| t.elapsed() < super::SAVE_EVERY) {
            return;
        }
        let moved = cx.in_transaction(|| subxact::as_text(subxact::committed_at_shutdown(|| bus_slot::advance(lsn))));
        match moved {
            Ok(()) => (self.slot_at, self.slot_moved) = (lsn, Some(Instant::now())),
            Err(e) => warning!("realtime: cannot move replication slot \"{}\": {e}", bus_slot::BUS_SLOT),
        }
    }

    fn close_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.close();
        }
    }
}

impl Role for Standby {
    fn work(&mut self, cx: &mut Context, _now: Instant) -> bool {
        if settings::bus() {
            return self.read_bus(cx);
        }
        if self.reader.is_some() {
            // realtime.bus was turned off: nothing reads what the slot would keep.
            self.close_reader();
            drop_bus_slot();
        }
        false
    }

    /// Moves the bus slot up to what the network side has fanned out, or,
    /// with nothing waiting, to where the reader is; a reader further behind
    /// than `realtime.max_slot_wal` skips ahead (reported).
    fn confirm(&mut self, cx: &mut Context) {
        let Some(reader) = &self.reader else { return };
        let position = reader.position();
        let behind = available_end().saturating_sub(position);
        if behind > settings::max_slot_wal_bytes().max(0) as u64 {
            warning!(
                "realtime: the bus reader is {behind} bytes behind, more than realtime.max_slot_wal: \
                 reading on from what is replayed now"
            );
            self.lost_from = Some(position);
            self.close_reader();
            return;
        }
        let idle = cx.network.pending_batches() == 0;
        let delivered = if idle { position } else { cx.network.delivered_lsn() };
        self.move_slot(cx, delivered);
    }

    fn idle_timeout(&mut self) -> Duration {
        let replayed = wake::last_bus_replayed();
        if self.reader.as_ref().is_some_and(|r| r.position() < replayed) { BUS_REPLAYING } else { BUS_FALLBACK }
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn describe(&self, snapshot: &mut Stats) -> Option<u64> {
        snapshot.standby = true;
        if let Some(reader) = &self.reader {
            snapshot.bus_lag_bytes = available_end().saturating_sub(reader.position()) as i64;
        }
        None
    }

    fn carries_all_published(&self) -> bool {
        false
    }

    fn reloaded(&mut self, _cx: &mut Context) {}

    /// This server was promoted: the worker becomes the primary's, without
    /// a restart (its sockets stay open); it creates its slot and decodes.
    fn promoted(&mut self, cx: &mut Context) -> Option<Box<dyn Role>> {
        if in_recovery() {
            return None;
        }
        log!("realtime: this server was promoted: decoding on this node from now on");
        // What the old primary put on the bus and recovery replayed goes out
        // first; the new slot starts later, and what committed in between
        // is reported once it has been created.
        let draining = Instant::now();
        while self.reader.is_some() && self.read_bus(cx) && draining.elapsed() < DRAIN_AT_PROMOTION {}
        let gap_from = self.reader.as_ref().map(|reader| self.covered.max(reader.started_at()));
        let delivered = self.reader.as_ref().map(|reader| Delivered {
            commits_through: self.covered,
            rows_after: self.rows_after_mark,
            relayed_through: reader.position(),
        });
        self.close_reader();
        drop_bus_slot();
        cx.network.set_replication_ready(false);
        Some(Box::new(Primary::after_promotion(gap_from, delivered)))
    }

    fn stop(&mut self, cx: &mut Context) {
        self.slot_moved = None; // the bus slot moves now, whenever it last did
        self.confirm(cx);
        self.close_reader();
    }
}

/// Drops the standby's bus slot, in a transaction of its own; failures are logged.
pub fn drop_bus_slot() {
    let dropped = BackgroundWorker::transaction(|| subxact::as_text(subxact::committed(bus_slot::drop)));
    if let Err(e) = dropped {
        warning!("realtime: cannot drop replication slot \"{}\": {e}", bus_slot::BUS_SLOT);
    }
}
