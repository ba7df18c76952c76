//! The primary's role: keeps the slot and the partitions, decodes new WAL,
//! routes what was decoded and hands it to the network side within the
//! memory budget, puts it on the bus, and confirms the slot up to what the
//! network side has fanned out.

use super::Role;
use super::context::Context;
use crate::bridge::budget::MIN_HANDOFF;
use crate::bridge::{Batch, Decoded, Gap, Stats};
use crate::pg::bus::{self, Broker};
use crate::pg::decoding::{Decoder, OpenError, Step, commits_decoded, slot};
use crate::pg::interrupts::shutdown_requested;
use crate::pg::{compat, maintenance, settings, subxact};
use crate::redelivery::{AlreadyDelivered, Delivered};
use pgrx::prelude::*;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
/// Commits wake the worker at once; this catches commits that were not yet
/// flushed when they woke it (`synchronous_commit = off`).
const DECODE_FALLBACK: Duration = Duration::from_millis(200);
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// The longest the commits of a failover's gap are counted.
const GAP_COUNT_TIME: Duration = Duration::from_secs(5);
/// While decoded messages wait for memory, look again this often.
const BUDGET_POLL: Duration = Duration::from_millis(5);
/// The longest wait before opening the decoder again after a failure.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);
/// How often a slot held back by someone else's transaction is reported.
const HELD_BACK_REPORT_EVERY: Duration = Duration::from_secs(600);
/// While the decoder moves on without rows, a mark goes on the bus at most this often.
const IDLE_MARK_EVERY: Duration = Duration::from_secs(1);
/// While flushed WAL waits for the standbys in `synchronized_standby_slots`
/// (17+), ask them again this often; after `STANDBY_WAIT_REPORT` of no
/// progress, say so (at most every `HELD_BACK_REPORT_EVERY`).
const STANDBY_POLL: Duration = Duration::from_millis(2);
const STANDBY_WAIT_REPORT: Duration = Duration::from_secs(10);

/// Where the primary's bus stands, so that what a node could not deliver is reported.
#[derive(Default)]
struct Marks {
    /// The end of the last mark written, and when; and the transactions
    /// decoded by then.
    written_end: u64,
    written_at: Option<Instant>,
    commits_then: u64,
    /// After a promotion: where the gap starts; the new slot tells where it ends.
    failover_from: Option<u64>,
    /// Each batch's last commit and the end of its mark, until the standbys
    /// in `synchronized_standby_slots` have the mark (17+): the slot is not
    /// confirmed past a commit whose bus messages a failover could lose.
    unreplicated: VecDeque<(u64, u64)>,
    /// The last commit whose mark the standbys have.
    replicated_through: u64,
}

pub struct Primary {
    decoder: Option<Decoder>,
    broker: Box<dyn Broker>,
    marks: Marks,
    /// When to try opening the decoder (again).
    next_open: Instant,
    open_failures: u32,
    /// The slot's confirmed position, as this worker last set it.
    confirmed: u64,
    /// What `confirmed` was when last written to disk, and when.
    saved: u64,
    last_save: Instant,
    last_decode: Instant,
    next_maintenance: Instant,
    next_slot_check: Instant,
    held_back_reported: Option<Instant>,
    standby_wait_reported: Option<Instant>,
    /// After a promotion: what this node delivered from the old primary's
    /// bus, until the decoder opens; then the filter that drops it from
    /// what a synced slot decodes again.
    delivered_before: Option<Delivered>,
    already_delivered: Option<AlreadyDelivered>,
}

impl Primary {
    pub fn new() -> Primary {
        let now = Instant::now();
        Primary {
            decoder: None,
            broker: bus::broker(settings::bus()),
            marks: Marks::default(),
            next_open: now,
            open_failures: 0,
            confirmed: 0,
            saved: 0,
            last_save: now,
            last_decode: now,
            next_maintenance: now,
            next_slot_check: now,
            held_back_reported: None,
            standby_wait_reported: None,
            delivered_before: None,
            already_delivered: None,
        }
    }

    /// A promoted standby's: the slot first (what commits before it exists
    /// is in the gap, which starts at `gap_from`), the partitions later. A
    /// failover slot synced from the old primary (17+) may start before what
    /// this node `delivered` from the bus: that is not delivered again.
    pub fn after_promotion(gap_from: Option<u64>, delivered: Option<Delivered>) -> Primary {
        let mut primary = Primary::new();
        primary.marks.failover_from = gap_from;
        primary.delivered_before = delivered;
        primary.next_maintenance = Instant::now() + SLOT_CHECK_EVERY;
        primary
    }

    /// Decoding runs when its output has been handed over and the network
    /// side has room for more; otherwise the slot keeps the WAL.
    fn may_decode(&mut self, cx: &Context) -> bool {
        let room = cx.budget.can_hand_off();
        self.decoder.as_mut().is_some_and(|d| d.output().is_empty()) && room
    }

    fn output_waiting(&mut self) -> bool {
        self.decoder.as_mut().is_some_and(|d| !d.output().is_empty())
    }

    fn open(&mut self, cx: &mut Context) {
        cx.caches.before_query();
        let limit = cx.budget.limit();
        match Decoder::open(&cx.budget, spill_path(), limit / 8) {
            Ok(decoder) => {
                if let Some(from) = self.marks.failover_from.take() {
                    self.report_failover_gap(cx, from, decoder.confirmed_flush());
                }
                if let Some(delivered) = self.delivered_before.take() {
                    if decoder.confirmed_flush() <= delivered.commits_through {
                        log!(
                            "realtime: decoding the failover slot from {} on; what this node delivered from the old \
                             primary's bus, up to {}, is not delivered again",
                            crate::bridge::gap::lsn_text(decoder.confirmed_flush()),
                            crate::bridge::gap::lsn_text(delivered.commits_through)
                        );
                    }
                    self.already_delivered = Some(AlreadyDelivered::new(delivered, decoder.confirmed_flush()));
                }
                self.marks.replicated_through = decoder.confirmed_flush();
                self.marks.unreplicated.clear();
                self.confirmed = self.confirmed.max(decoder.confirmed_flush());
                self.saved = self.confirmed;
                self.decoder = Some(decoder);
                cx.network.set_replication_ready(true);
                if self.open_failures > 0 {
                    log!("realtime: decoding replication slot \"{}\" again", slot::SLOT);
                }
                self.open_failures = 0;
                cx.decode_due = true;
            }
            Err(OpenError::SlotLost) => {
                warning!(
                    "realtime: replication slot \"{}\" has lost the WAL it needed (max_slot_wal_keep_size); \
                     it is created again, and database broadcasts committed meanwhile are not delivered",
                    slot::SLOT
                );
                cx.in_transaction(|| subxact::as_text(subxact::committed(slot::drop)))
                    .unwrap_or_else(|e| warning!("realtime: cannot drop replication slot \"{}\": {e}", slot::SLOT));
                self.next_slot_check = Instant::now();
                self.failed_to_open();
            }
            Err(OpenError::Failed(e)) => {
                if self.open_failures == 0 {
                    warning!(
                        "realtime: cannot decode replication slot \"{}\": {e}; database broadcasts wait until it works \
                         (it needs wal_level = logical and a free max_replication_slots entry)",
                        slot::SLOT
                    );
                }
                self.failed_to_open();
            }
        }
    }

    /// After a promotion: what committed between the old primary's last
    /// mark and the new slot's start was not delivered anywhere. Every node
    /// says so, with the transactions that committed there.
    fn report_failover_gap(&mut self, cx: &mut Context, from: u64, to: u64) {
        let mut reader = bus::Reader::open(from);
        let commits = reader.commits_until(to, GAP_COUNT_TIME);
        reader.close();
        let commits =
            commits.map_err(|e| warning!("realtime: cannot count the commits of the failover's gap: {e}")).ok();
        let gap = Gap { from, to, commits };
        if gap.is_empty() {
            log!("realtime: nothing committed was missed across the promotion");
            return;
        }
        cx.network.missed(&gap);
        self.broker.gap(&gap);
    }

    /// Flushed WAL that has long waited for the standbys named in
    /// `synchronized_standby_slots` is said in the log, with the fix.
    fn report_standby_wait(&mut self) {
        let Some(waited) = self.decoder.as_ref().and_then(Decoder::waiting_for_standbys) else { return };
        if waited < STANDBY_WAIT_REPORT
            || self.standby_wait_reported.is_some_and(|t| t.elapsed() < HELD_BACK_REPORT_EVERY)
        {
            return;
        }
        warning!(
            "realtime: database broadcasts have waited {} s for the standbys in synchronized_standby_slots ('{}') to \
             confirm WAL; each named physical slot must exist and its standby stream (pg_replication_slots), or \
             remove it from the setting",
            waited.as_secs(),
            compat::synchronized_standby_slots()
        );
        self.standby_wait_reported = Some(Instant::now());
    }

    fn failed_to_open(&mut self) {
        self.open_failures += 1;
        let delay = Duration::from_millis(250 << self.open_failures.min(7)).min(MAX_REOPEN_DELAY);
        self.next_open = Instant::now() + delay;
    }

    fn close_decoder(&mut self, cx: &mut Context) {
        if let Some(decoder) = self.decoder.take() {
            decoder.close();
            cx.network.set_replication_ready(false);
        }
        // What the closed decoder had not handed over is decoded again.
        cx.caches.after_decoding(Step::Paused);
    }

    /// One step of decoding. True when more WAL is waiting.
    fn decode(&mut self, cx: &mut Context) -> bool {
        cx.caches.before_decoding();
        self.last_decode = Instant::now();
        let max_bytes = (cx.budget.limit() / 8) as u64;
        let Some(decoder) = self.decoder.as_mut() else { return false };
        match decoder.step(max_bytes, super::STEP_TIME) {
            Ok(step) => {
                cx.caches.after_decoding(step);
                step == Step::Paused
            }
            Err(e) => {
                if !shutdown_requested() {
                    warning!("realtime: decoding replication slot \"{}\" failed, starting over: {e}", slot::SLOT);
                }
                self.close_decoder(cx);
                self.failed_to_open();
                false
            }
        }
    }

    /// Routes decoded rows, puts them on the bus and hands them over, a
    /// chunk at a time, while the budget has room. True when more is
    /// waiting and there is room for it.
    fn hand_off(&mut self, cx: &mut Context) -> bool {
        loop {
            let room = cx.budget.handoff_room();
            let Some(decoder) = self.decoder.as_mut() else { return false };
            if decoder.output().is_empty() || !cx.budget.can_hand_off() {
                return false;
            }
            // A change can become one message per watching channel.
            let fan_out = cx.registry.len() + 1;
            let max = (room / fan_out).clamp(MIN_HANDOFF, super::MAX_CHUNK);
            let chunk = match decoder.output().take_chunk(max) {
                Ok(chunk) => chunk,
                Err(e) => {
                    warning!("realtime: cannot read back decoded messages spilled to disk, starting over: {e}");
                    self.close_decoder(cx);
                    self.failed_to_open();
                    return false;
                }
            };
            let rows = match self.already_delivered.as_mut() {
                Some(already) => already.filter(chunk.rows),
                None => chunk.rows,
            };
            if self.already_delivered.as_ref().is_some_and(|a| a.is_done_at(decoder.read_position())) {
                self.already_delivered = None;
            }
            let published = self.broker.publish(&rows, chunk.end_lsn);
            if let Some(end) = published.mark_end {
                (self.marks.written_end, self.marks.written_at) = (end, Some(Instant::now()));
                // SAFETY: main thread; the decoder holds the slot.
                if unsafe { compat::waits_for_standbys() } {
                    self.marks.unreplicated.push_back((chunk.end_lsn, end));
                }
            }
            let items = cx.outgoing(rows, &published.positions);
            let charge = cx.budget.charge(items.iter().map(Decoded::bytes).sum());
            cx.network.deliver(Batch { items, end_lsn: chunk.end_lsn, commits: chunk.commits, charge });
        }
    }

    /// Creates the slot when missing and keeps the WAL it holds bounded.
    fn check_slot(&mut self, cx: &mut Context) {
        self.next_slot_check = Instant::now() + SLOT_CHECK_EVERY;
        let checked = cx.in_transaction(|| {
            subxact::as_text(subxact::committed(|| -> Result<(bool, Option<slot::Held>), pgrx::spi::Error> {
                Ok((slot::ensure()?, slot::held()?))
            }))
        });
        let (created, held) = match checked {
            Ok(found) => found,
            Err(e) => {
                slot::release_after_error();
                if self.open_failures == 0 {
                    warning!("realtime: cannot check replication slot \"{}\": {e}", slot::SLOT);
                }
                return;
            }
        };
        if created {
            log!("realtime: created replication slot \"{}\" with output plugin realtime", slot::SLOT);
        }
        let Some(held) = held else { return };
        if held.wal_status == "lost" {
            self.close_decoder(cx);
            self.next_open = Instant::now();
            return; // opening finds the slot lost, drops and recreates it
        }
        let bound = settings::max_slot_wal_bytes();
        if held.restart_bytes <= bound {
            return;
        }
        if held.unconfirmed_bytes > bound / 2 {
            // The worker is behind: skip, rather than fill the disk.
            self.close_decoder(cx);
            let skipped = cx.in_transaction(|| subxact::as_text(subxact::committed(slot::skip_to_end)));
            warning!(
                "realtime: replication slot \"{}\" held {} bytes of WAL, more than realtime.max_slot_wal ({bound} bytes); \
                 skipped ahead to {:?}: database broadcasts committed in between are not delivered",
                slot::SLOT,
                held.restart_bytes,
                skipped
            );
            self.next_open = Instant::now();
        } else if self.held_back_reported.is_none_or(|t| t.elapsed() >= HELD_BACK_REPORT_EVERY) {
            // Delivered, yet Postgres keeps the WAL: an old transaction that
            // is still open pins the slot's restart point, and skipping
            // cannot move it.
            warning!(
                "realtime: replication slot \"{}\" holds {} bytes of WAL, more than realtime.max_slot_wal ({bound} bytes), \
                 because a long-running transaction is still open (see pg_stat_activity.xact_start); \
                 set max_slot_wal_keep_size to bound it",
                slot::SLOT,
                held.restart_bytes
            );
            self.held_back_reported = Some(Instant::now());
        }
    }
}

impl Role for Primary {
    fn work(&mut self, cx: &mut Context, now: Instant) -> bool {
        if now >= self.next_maintenance {
            cx.caches.before_query();
            maintenance::partitions();
            self.next_maintenance = now + MAINTENANCE_EVERY;
        }
        if now >= self.next_slot_check {
            self.check_slot(cx);
        }
        if self.decoder.is_none() && now >= self.next_open {
            self.open(cx);
        }
        let mut more = false;
        let waiting = self.decoder.as_ref().and_then(Decoder::waiting_for_standbys);
        if self.may_decode(cx) && (cx.decode_due || waiting.is_some() || self.last_decode.elapsed() >= DECODE_FALLBACK)
        {
            more |= self.decode(cx);
        }
        self.report_standby_wait();
        more | self.hand_off(cx)
    }

    /// Confirms the slot up to what the network side has fanned out; once
    /// everything decoded has been, up to where decoding caught up.
    fn confirm(&mut self, cx: &mut Context) {
        let Some(decoder) = self.decoder.as_mut() else { return };
        let mut lsn = cx.network.delivered_lsn();
        if decoder.caught_up_at() != 0 && decoder.output().is_empty() && cx.network.pending_batches() == 0 {
            lsn = lsn.max(decoder.caught_up_at());
        }
        // SAFETY (both): main thread; the decoder holds the slot.
        while let Some(&(commit, mark_end)) = self.marks.unreplicated.front() {
            if !unsafe { compat::standbys_have(mark_end) } {
                break;
            }
            self.marks.replicated_through = commit;
            self.marks.unreplicated.pop_front();
        }
        if !self.marks.unreplicated.is_empty() {
            lsn = lsn.min(self.marks.replicated_through);
        }
        if lsn > self.confirmed {
            decoder.confirm(lsn);
            self.confirmed = lsn;
        }
        // Decoding moved past transactions without rows: say so on the bus,
        // so a failover's gap report starts from here. Only after commits:
        // WAL that commits nothing (our own marks, checkpoints' records)
        // must not keep an idle server writing.
        let caught_up = decoder.caught_up_at();
        let commits = commits_decoded();
        if caught_up > self.marks.written_end
            && commits != self.marks.commits_then
            && decoder.output().is_empty()
            && self.marks.written_at.is_none_or(|t| t.elapsed() >= IDLE_MARK_EVERY)
        {
            self.marks.commits_then = commits;
            if let Some(end) = self.broker.mark(caught_up) {
                (self.marks.written_end, self.marks.written_at) = (end, Some(Instant::now()));
            }
        }
        if self.confirmed > self.saved && self.last_save.elapsed() >= super::SAVE_EVERY {
            decoder.save();
            self.saved = self.confirmed;
            self.last_save = Instant::now();
        }
    }

    fn idle_timeout(&mut self) -> Duration {
        if self.output_waiting() {
            BUDGET_POLL
        } else if self.decoder.as_ref().and_then(Decoder::waiting_for_standbys).is_some()
            || !self.marks.unreplicated.is_empty()
        {
            STANDBY_POLL
        } else if self.decoder.is_none() {
            self.next_open.saturating_duration_since(Instant::now())
        } else {
            DECODE_FALLBACK.saturating_sub(self.last_decode.elapsed())
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        Some(self.next_maintenance.min(self.next_slot_check))
    }

    fn describe(&self, snapshot: &mut Stats) -> Option<u64> {
        snapshot.decode_idle_ms = self.last_decode.elapsed().as_millis() as i64;
        self.decoder.as_ref().map(Decoder::read_position)
    }

    fn carries_all_published(&self) -> bool {
        self.broker.carries_all_published()
    }

    fn reloaded(&mut self, cx: &mut Context) {
        self.broker = bus::broker(settings::bus());
        if let Some(decoder) = self.decoder.as_mut() {
            decoder.output().set_memory_limit(cx.settings.max_memory_bytes / 8);
        }
    }

    fn stop(&mut self, cx: &mut Context) {
        self.confirm(cx);
        if let Some(decoder) = self.decoder.take() {
            decoder.save();
            decoder.close();
        }
    }
}

/// Where decoded messages past the memory bound wait: Postgres's temporary
/// directory, whose `pgsql_tmp` files it removes when the server starts.
fn spill_path() -> PathBuf {
    // SAFETY: MyProcPid is set for every backend.
    let pid = unsafe { pg_sys::MyProcPid };
    PathBuf::from(format!("base/pgsql_tmp/pgsql_tmp_realtime_{pid}.spill"))
}
