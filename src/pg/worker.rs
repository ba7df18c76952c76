//! The background worker's main thread, the only one that calls Postgres. It
//! waits on its latch (commits wake it, signals set it) and the bridge's
//! eventfd, and in turn: decodes new WAL, routes what was decoded and hands
//! it to the network side within the memory budget, confirms the slot up to
//! what the network side has fanned out, and answers the network side's
//! requests, each in its own subtransaction under a statement timeout.

use super::decoding::{Caches, Decoder, OpenError, Step};
use super::interrupts::{self, shutdown_requested};
use super::wait::WaitSet;
use super::{
    bus, bus_key, bus_slot, conflict, decoding, maintenance, plugin, requests, route, settings, slot, stats, subscribe,
    subxact, wake,
};
use crate::bridge::budget::MIN_HANDOFF;
use crate::bridge::outbound::SpawnNetwork;
use crate::bridge::queue::Queued;
use crate::bridge::stats::MainFigures;
use crate::bridge::{Batch, Budget, Decoded, Gap, Inbox, Network, Settings, Stats, latency, log, queue};
use crate::changes::RowChange;
use crate::changes::registry::Registry;
use crate::decoded::Row;
use crate::wal_clock::WalClock;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
/// Commits wake the worker at once; this catches commits that were not yet
/// flushed when they woke it (`synchronous_commit = off`).
const DECODE_FALLBACK: Duration = Duration::from_millis(200);
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// How often `table: '*'` bindings look at the publication again.
const WILDCARD_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often `realtime.stats` is refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Recovery wakes a standby's worker as it replays a bus message
/// (`bus::wake_on_replay`); the replay position passes the message just
/// after, so the worker looks again this soon until it has; and, whatever
/// happens, this often.
const BUS_REPLAYING: Duration = Duration::from_millis(1);
const BUS_FALLBACK: Duration = Duration::from_millis(100);
/// The longest a promoted standby's worker reads the old primary's last bus messages.
const DRAIN_AT_PROMOTION: Duration = Duration::from_secs(2);
/// The longest the commits of a failover's gap are counted.
const GAP_COUNT_TIME: Duration = Duration::from_secs(5);
/// A decoding step yields to requests after this long.
const STEP_TIME: Duration = Duration::from_millis(20);
/// The slot's confirmed position reaches disk about this often, so a crash
/// repeats at most about this much traffic.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The most decoded bytes routed and handed over as one batch (the least
/// is `MIN_HANDOFF`).
const MAX_CHUNK: usize = 1024 * 1024;
/// While decoded messages wait for memory, look again this often.
const BUDGET_POLL: Duration = Duration::from_millis(5);
/// The longest wait before opening the decoder again after a failure.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);
/// How often a slot held back by someone else's transaction is reported.
const HELD_BACK_REPORT_EVERY: Duration = Duration::from_secs(600);
/// After this much of the budget was used, memory is given back to the
/// system once it is free again.
const TRIM_AFTER: usize = 4 * 1024 * 1024;
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Requests the network side may have in flight to the main thread (each
/// socket at most `net::session::SOCKET_REQUESTS` of them).
const QUEUE_CAPACITY: usize = 16_384;

/// Registers the worker; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("realtime")
        .set_type("realtime")
        .set_library("realtime")
        .set_function("realtime_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// The worker's life: connect, wait for the extension, start the network
/// side, run the loop, stop cleanly, exit for a restart.
pub fn main(spawn: SpawnNetwork) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    interrupts::install();
    conflict::install();
    let database = settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    maintenance::pin_search_path();

    if !maintenance::wait_for_extension(&database) {
        return exit_for_restart();
    }
    if !bus::in_recovery() {
        bus_key::ensure();
    }
    if !bus::in_recovery() || !settings::bus() {
        // It would keep WAL for a reader that does not run (a primary, say
        // one promoted while its worker was down).
        drop_bus_slot();
    }
    if !bus::wait_until_serving() {
        return exit_for_restart();
    }
    maintenance::allow_output_plugin();
    maintenance::pin_session_authorization();
    maintenance::raise_fd_limit();
    maintenance::tune_allocator();
    let mut settings = settings::read();
    let standby = bus::in_recovery();
    settings.allowed_roles = maintenance::sync_worker_roles(&settings.allowed_roles);
    apply_session_settings(&settings);
    let budget = Budget::new(settings.max_memory_bytes);
    let (bridge, inbox) = match queue::channel(QUEUE_CAPACITY) {
        Ok(pair) => pair,
        Err(e) => error!("realtime: cannot create the worker's eventfd: {e}"),
    };
    log::set_level(settings.log_level);
    let log_lines = log::install();
    let (network, warnings) = spawn(&settings, bridge, budget.clone());
    warn_all(&warnings);
    log!(
        "realtime: serving database \"{database}\" on port {}{}",
        settings.port,
        if standby { " (hot standby: database broadcasts come through the bus)" } else { "" }
    );

    // SAFETY: MyProc is this process's PGPROC.
    wake::set_worker(Some(unsafe { (*pg_sys::MyProc).pgprocno }));
    let wait_set = WaitSet::new(inbox.fd());
    let mut worker = Worker::new(network, budget, settings, log_lines, standby);
    worker.watch();
    let stop = worker.run(&inbox, &wait_set);
    worker.stop(stop);
    exit_for_restart();
}

/// Why the loop ended.
enum Stop {
    /// SIGTERM: a shutdown, or `pg_terminate_backend`.
    Shutdown,
    /// The listen address changed: start over.
    Restart,
}

/// Where the bus stands, so that what a node could not deliver is reported.
#[derive(Default)]
struct BusMarks {
    /// On a standby: the last mark read; what committed before it is on the bus.
    covered: u64,
    /// On a primary: the end of the last mark written, and when; and the
    /// transactions decoded by then.
    written_end: u64,
    written_at: Option<Instant>,
    commits_then: u64,
    /// After a promotion: where the gap starts; the new slot tells where it ends.
    failover_from: Option<u64>,
    /// On a standby whose reader lost WAL it had not read: where that starts.
    lost_from: Option<u64>,
    /// On a standby: where the bus slot was last moved to, and when.
    slot_at: u64,
    slot_moved: Option<Instant>,
}

/// While the decoder moves on without rows, a mark goes on the bus at most this often.
const IDLE_MARK_EVERY: Duration = Duration::from_secs(1);

struct Worker {
    network: Box<dyn Network>,
    /// The network side's log lines, written here with ereport.
    log_lines: mpsc::Receiver<(log::Level, String)>,
    budget: Arc<Budget>,
    settings: Settings,
    registry: Registry,
    decoder: Option<Decoder>,
    /// On a hot standby: reads the bus from replayed WAL (opened on first use).
    standby: bool,
    bus: Option<bus::Reader>,
    marks: BusMarks,
    /// The timeline last seen: a new one is announced to every channel.
    timeline: u32,
    caches: Caches,
    /// When to try opening the decoder (again).
    next_open: Instant,
    open_failures: u32,
    /// The slot's confirmed position, as this worker last set it.
    confirmed: u64,
    /// What `confirmed` was when last written to disk, and when.
    saved: u64,
    last_save: Instant,
    /// A commit woke the worker, or the last step stopped short.
    decode_due: bool,
    last_decode: Instant,
    next_maintenance: Instant,
    next_slot_check: Instant,
    next_wildcard_check: Instant,
    held_back_reported: Option<Instant>,
    next_stats: Instant,
    figures: Figures,
    /// The most of the budget used since memory was last given back, and when.
    peak_used: usize,
    last_trim: Instant,
}

impl Worker {
    fn new(
        network: Box<dyn Network>,
        budget: Arc<Budget>,
        settings: Settings,
        log_lines: mpsc::Receiver<(log::Level, String)>,
        standby: bool,
    ) -> Worker {
        let now = Instant::now();
        Worker {
            network,
            log_lines,
            budget,
            settings,
            registry: Registry::default(),
            decoder: None,
            standby,
            bus: None,
            marks: BusMarks::default(),
            timeline: bus::epoch().1,
            caches: Caches::default(),
            next_open: now,
            open_failures: 0,
            confirmed: 0,
            saved: 0,
            last_save: now,
            decode_due: true,
            last_decode: now,
            next_maintenance: now,
            next_slot_check: now,
            next_wildcard_check: now,
            held_back_reported: None,
            next_stats: now,
            figures: Figures::new(now),
            peak_used: 0,
            last_trim: now,
        }
    }

    /// Gives freed memory back to the system once a burst has passed, and
    /// every second while one lasts.
    fn trim_after_burst(&mut self) {
        let used = self.budget.used();
        self.peak_used = self.peak_used.max(used);
        if self.peak_used >= TRIM_AFTER && (used < TRIM_AFTER / 8 || self.last_trim.elapsed() >= TRIM_EVERY) {
            maintenance::trim_memory();
            self.peak_used = used;
            self.last_trim = Instant::now();
        }
    }

    fn run(&mut self, inbox: &Inbox, wait_set: &WaitSet) -> Stop {
        loop {
            if shutdown_requested() {
                return Stop::Shutdown;
            }
            if BackgroundWorker::sighup_received()
                && let Some(stop) = self.reload()
            {
                return stop;
            }
            if self.standby && !bus::in_recovery() {
                self.promoted();
                // Roles to grant, and the network side's bus settings, change.
                if let Some(stop) = self.reload() {
                    return stop;
                }
            }
            self.announce_new_epoch();
            let now = Instant::now();
            if now >= self.next_maintenance && !self.standby {
                self.caches.before_query();
                maintenance::partitions();
                self.next_maintenance = now + MAINTENANCE_EVERY;
            }
            if now >= self.next_slot_check && !self.standby {
                self.check_slot();
            }
            if now >= self.next_wildcard_check {
                self.refresh_wildcards();
            }
            if now >= self.next_stats {
                self.publish_stats();
            }
            if self.decoder.is_none() && now >= self.next_open && !self.standby {
                self.open();
            }
            let mut more = false;
            if self.standby && settings::bus() {
                more |= self.read_bus();
            } else if self.standby && self.bus.is_some() {
                // realtime.bus was turned off: nothing reads what the slot would keep.
                self.close_bus();
                drop_bus_slot();
            }
            if self.may_decode() && (self.decode_due || self.last_decode.elapsed() >= DECODE_FALLBACK) {
                more |= self.decode();
            }
            more |= self.hand_off();
            self.confirm();
            self.trim_after_burst();
            self.write_log_lines();
            let requests = inbox.drain();
            if !requests.is_empty() {
                self.answer(requests);
            }
            let timeout = if more {
                Duration::ZERO
            } else if self.standby {
                let replayed = wake::last_bus_replayed();
                if self.bus.as_ref().is_some_and(|r| r.position() < replayed) { BUS_REPLAYING } else { BUS_FALLBACK }
            } else if self.output_waiting() {
                BUDGET_POLL
            } else if self.decoder.is_none() {
                self.next_open.saturating_duration_since(Instant::now())
            } else {
                DECODE_FALLBACK.saturating_sub(self.last_decode.elapsed())
            };
            let mut next_timer = self.next_stats;
            if !self.standby {
                next_timer = next_timer.min(self.next_maintenance).min(self.next_slot_check);
            }
            if self.registry.has_wildcards() {
                next_timer = next_timer.min(self.next_wildcard_check);
            }
            let until_timer = next_timer.saturating_duration_since(Instant::now());
            let latch = wait_set.wait(timeout.min(until_timer));
            interrupts::process_pending();
            self.decode_due = latch || more;
        }
    }

    /// Decoding runs when its output has been handed over and the network
    /// side has room for more; otherwise the slot keeps the WAL.
    fn may_decode(&mut self) -> bool {
        let room = self.budget.can_hand_off();
        self.decoder.as_mut().is_some_and(|d| d.output().is_empty()) && room
    }

    fn output_waiting(&mut self) -> bool {
        self.decoder.as_mut().is_some_and(|d| !d.output().is_empty())
    }

    fn open(&mut self) {
        self.caches.before_query();
        let limit = self.budget.limit();
        match Decoder::open(&self.budget, spill_path(), limit / 8) {
            Ok(decoder) => {
                if let Some(from) = self.marks.failover_from.take() {
                    self.report_failover_gap(from, decoder.confirmed_flush());
                }
                self.confirmed = self.confirmed.max(decoder.confirmed_flush());
                self.saved = self.confirmed;
                self.decoder = Some(decoder);
                self.network.set_replication_ready(true);
                if self.open_failures > 0 {
                    log!("realtime: decoding replication slot \"{}\" again", slot::SLOT);
                }
                self.open_failures = 0;
                self.decode_due = true;
            }
            Err(OpenError::SlotLost) => {
                warning!(
                    "realtime: replication slot \"{}\" has lost the WAL it needed (max_slot_wal_keep_size); \
                     it is created again, and database broadcasts committed meanwhile are not delivered",
                    slot::SLOT
                );
                self.in_transaction(|| subxact::as_text(subxact::committed(slot::drop)))
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
    fn report_failover_gap(&mut self, from: u64, to: u64) {
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
        self.network.missed(&gap);
        if settings::bus() {
            bus::write(&[bus::Control::Gap(gap).message()]);
        }
    }

    fn failed_to_open(&mut self) {
        self.open_failures += 1;
        let delay = Duration::from_millis(250 << self.open_failures.min(7)).min(MAX_REOPEN_DELAY);
        self.next_open = Instant::now() + delay;
    }

    fn close_decoder(&mut self) {
        if let Some(decoder) = self.decoder.take() {
            decoder.close();
            self.network.set_replication_ready(false);
        }
        // What the closed decoder had not handed over is decoded again.
        self.caches.after_decoding(Step::Paused);
    }

    /// One step of decoding. True when more WAL is waiting.
    fn decode(&mut self) -> bool {
        self.caches.before_decoding();
        self.last_decode = Instant::now();
        let max_bytes = (self.budget.limit() / 8) as u64;
        let Some(decoder) = self.decoder.as_mut() else { return false };
        match decoder.step(max_bytes, STEP_TIME) {
            Ok(step) => {
                self.caches.after_decoding(step);
                step == Step::Paused
            }
            Err(e) => {
                if !shutdown_requested() {
                    warning!("realtime: decoding replication slot \"{}\" failed, starting over: {e}", slot::SLOT);
                }
                self.close_decoder();
                self.failed_to_open();
                false
            }
        }
    }

    /// On a standby: routes and hands over the bus messages recovery has replayed, while
    /// the budget has room. True when more is waiting and there is room.
    fn read_bus(&mut self) -> bool {
        if !self.budget.can_hand_off() {
            return false;
        }
        if self.bus.is_none() {
            let start = self.bus_start();
            self.bus = Some(bus::Reader::open(start));
            self.network.set_replication_ready(true);
        }
        let mut messages = Vec::new();
        let max = self.budget.handoff_room().clamp(MIN_HANDOFF, MAX_CHUNK);
        let reader = self.bus.as_mut().expect("opened above");
        let read = reader.read(&mut messages, max, STEP_TIME);
        let position = reader.position();
        let mut gaps = Vec::new();
        let (mut rows, mut positions) = (Vec::with_capacity(messages.len()), Vec::with_capacity(messages.len()));
        for (at, message) in &messages {
            match bus::Control::read(message) {
                Some(bus::Control::Mark(lsn)) => self.marks.covered = lsn,
                Some(bus::Control::Gap(gap)) => gaps.push(gap),
                None => {
                    if let Some(row) = bus::row(message) {
                        rows.push(row);
                        positions.push(*at);
                    }
                }
            }
        }
        if !rows.is_empty() {
            // Row changes are routed here, against this replica, as the
            // subscribers' roles: RLS work spreads over the nodes.
            let items = self.outgoing(rows, &positions);
            let charge = self.budget.charge(items.iter().map(Decoded::bytes).sum());
            self.network.deliver(Batch { items, end_lsn: position, commits: Vec::new(), charge });
        }
        for gap in gaps {
            self.network.missed(&gap);
        }
        match read {
            Ok(read) => read == bus::Read::Paused,
            Err(e) => {
                warning!(
                    "realtime: reading the bus from replayed WAL failed, reading on from the replay position: {e}"
                );
                self.marks.lost_from = Some(position);
                self.close_bus();
                false
            }
        }
    }

    /// Where a standby's bus reader starts: where its slot says delivery
    /// stopped (a restarted worker's clients rejoin within the grace and get
    /// what was replayed meanwhile), unless that is lost or further back than
    /// `realtime.max_slot_wal`; else at what is replayed now. What is skipped
    /// is reported.
    fn bus_start(&mut self) -> u64 {
        let now = decoding::available_end();
        let kept = self
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
                self.marks.lost_from = Some(self.marks.lost_from.unwrap_or(kept));
                now
            }
            _ => now,
        };
        if let Some(from) = self.marks.lost_from.take() {
            self.network.missed(&Gap { from, to: start, commits: None });
        }
        (self.marks.slot_at, self.marks.slot_moved) = (0, None);
        self.move_bus_slot(start);
        start
    }

    /// Moves the standby's bus slot up to `lsn`, at most once a `SAVE_EVERY`.
    fn move_bus_slot(&mut self, lsn: u64) {
        if lsn <= self.marks.slot_at || self.marks.slot_moved.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return;
        }
        let moved = self.in_transaction(|| subxact::as_text(subxact::committed_at_shutdown(|| bus_slot::advance(lsn))));
        match moved {
            Ok(()) => (self.marks.slot_at, self.marks.slot_moved) = (lsn, Some(Instant::now())),
            Err(e) => warning!("realtime: cannot move replication slot \"{}\": {e}", bus_slot::BUS_SLOT),
        }
    }

    fn close_bus(&mut self) {
        if let Some(reader) = self.bus.take() {
            reader.close();
        }
    }

    /// A promotion, or a standby following a new primary, starts a timeline.
    fn announce_new_epoch(&mut self) {
        let (system_identifier, timeline) = bus::epoch();
        if timeline != self.timeline && timeline != 0 {
            log!("realtime: new epoch: timeline {timeline} (was {})", self.timeline);
            self.timeline = timeline;
            self.network.new_epoch(system_identifier, timeline);
        }
    }

    /// The standby was promoted: the worker becomes the primary's, without a
    /// restart (its sockets stay open); it creates its slot and decodes.
    fn promoted(&mut self) {
        log!("realtime: this server was promoted: decoding on this node from now on");
        // What the old primary put on the bus and recovery replayed goes out
        // first; the new slot starts later, and what committed in between
        // is reported once it has been created.
        let draining = Instant::now();
        while self.bus.is_some() && self.read_bus() && draining.elapsed() < DRAIN_AT_PROMOTION {}
        if let Some(reader) = &self.bus {
            self.marks.failover_from = Some(self.marks.covered.max(reader.started_at()));
        }
        self.close_bus();
        drop_bus_slot();
        self.standby = false;
        let now = Instant::now();
        // The slot first: what commits before it exists is in the gap.
        (self.next_slot_check, self.next_open) = (now, now);
        self.next_maintenance = now + SLOT_CHECK_EVERY;
        self.network.set_replication_ready(false);
    }

    /// Routes decoded rows and hands them over, a chunk at a time, while the
    /// budget has room. True when more is waiting and there is room for it.
    fn hand_off(&mut self) -> bool {
        loop {
            let room = self.budget.handoff_room();
            let Some(decoder) = self.decoder.as_mut() else { return false };
            if decoder.output().is_empty() {
                return false;
            }
            if !self.budget.can_hand_off() {
                return false;
            }
            // A change can become one message per watching channel.
            let fan_out = self.registry.len() + 1;
            let max = (room / fan_out).clamp(MIN_HANDOFF, MAX_CHUNK);
            let chunk = match decoder.output().take_chunk(max) {
                Ok(chunk) => chunk,
                Err(e) => {
                    warning!("realtime: cannot read back decoded messages spilled to disk, starting over: {e}");
                    self.close_decoder();
                    self.failed_to_open();
                    return false;
                }
            };
            // Each row's position on the bus, which clients may resume from.
            let mut positions = Vec::new();
            if settings::bus() {
                // The bus messages, and the row each carries.
                let (mut messages, mut carried) = (Vec::new(), Vec::new());
                for (i, row) in chunk.rows.iter().enumerate() {
                    if let Some(message) = bus::message(row) {
                        messages.push(message);
                        carried.push(i);
                    }
                }
                let marked = !messages.is_empty() && chunk.end_lsn != 0;
                if marked {
                    messages.push(bus::Control::Mark(chunk.end_lsn).message());
                }
                let ends = bus::write(&messages);
                positions = vec![0; chunk.rows.len()];
                for (&i, &end) in carried.iter().zip(&ends) {
                    positions[i] = end;
                }
                if marked && let Some(&end) = ends.last() {
                    (self.marks.written_end, self.marks.written_at) = (end, Some(Instant::now()));
                }
            }
            let items = self.outgoing(chunk.rows, &positions);
            let bytes = items.iter().map(Decoded::bytes).sum();
            let charge = self.budget.charge(bytes);
            self.network.deliver(Batch { items, end_lsn: chunk.end_lsn, commits: chunk.commits, charge });
        }
    }

    /// The decoded rows as the network side sends them, in commit order: row
    /// changes routed to the channels whose bindings and policies admit them.
    /// `positions` are the rows' positions on the bus, if they are on it.
    fn outgoing(&mut self, rows: Vec<Row>, positions: &[u64]) -> Vec<Decoded> {
        enum Item {
            Decoded(Decoded),
            Change(usize),
        }
        let mut order = Vec::with_capacity(rows.len());
        let mut changes = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            let position = positions.get(i).copied().unwrap_or(0);
            match row {
                Row::Broadcast(json) => order.push(Item::Decoded(Decoded::Broadcast(json, position))),
                Row::Relayed(row, at) => {
                    order.push(Item::Decoded(Decoded::Relayed(row, if at != 0 { at } else { position })))
                }
                Row::Change(json) => match serde_json::from_str::<RowChange>(&json) {
                    Ok(change) => {
                        order.push(Item::Change(changes.len()));
                        changes.push(change);
                    }
                    Err(e) => warning!("realtime: skipping an undecodable row change: {e}"),
                },
                Row::Commit { .. } => {}
            }
        }
        let mut routed = if changes.is_empty() {
            Vec::new()
        } else {
            let registry = &self.registry;
            let max_record_bytes = settings::max_record_bytes();
            self.caches.before_query();
            let mut checks = Vec::new();
            let routed = conflict::retried(|| {
                checks.clear();
                route::route(registry, &changes, max_record_bytes, &mut checks)
            });
            for (took, count) in checks {
                self.figures.checked(took, count);
            }
            routed
        };
        let mut out = Vec::with_capacity(order.len());
        for item in order {
            match item {
                Item::Decoded(item) => out.push(item),
                Item::Change(i) => out.extend(std::mem::take(&mut routed[i]).into_iter().map(Decoded::Change)),
            }
        }
        out
    }

    /// Confirms the slot up to what the network side has fanned out; once
    /// everything decoded has been, up to where decoding caught up.
    fn confirm(&mut self) {
        if self.standby {
            return self.confirm_bus();
        }
        let Some(decoder) = self.decoder.as_mut() else { return };
        let mut lsn = self.network.delivered_lsn();
        if decoder.caught_up_at() != 0 && decoder.output().is_empty() && self.network.pending_batches() == 0 {
            lsn = lsn.max(decoder.caught_up_at());
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
        let commits = plugin::commits_decoded();
        if settings::bus()
            && caught_up > self.marks.written_end
            && commits != self.marks.commits_then
            && decoder.output().is_empty()
            && self.marks.written_at.is_none_or(|t| t.elapsed() >= IDLE_MARK_EVERY)
        {
            self.marks.commits_then = commits;
            let end = bus::write(&[bus::Control::Mark(caught_up).message()]).pop().unwrap_or(0);
            (self.marks.written_end, self.marks.written_at) = (end, Some(Instant::now()));
        }
        if self.confirmed > self.saved && self.last_save.elapsed() >= SAVE_EVERY {
            decoder.save();
            self.saved = self.confirmed;
            self.last_save = Instant::now();
        }
    }

    /// On a standby: moves the bus slot up to what the network side has
    /// fanned out, or, with nothing waiting, to where the reader is; a reader
    /// further behind than `realtime.max_slot_wal` skips ahead (reported).
    fn confirm_bus(&mut self) {
        let Some(reader) = &self.bus else { return };
        let position = reader.position();
        let behind = decoding::available_end().saturating_sub(position);
        if behind > settings::max_slot_wal_bytes().max(0) as u64 {
            warning!(
                "realtime: the bus reader is {behind} bytes behind, more than realtime.max_slot_wal: \
                 reading on from what is replayed now"
            );
            self.marks.lost_from = Some(position);
            self.close_bus();
            return;
        }
        let idle = self.network.pending_batches() == 0;
        let delivered = if idle { position } else { self.network.delivered_lsn() };
        self.move_bus_slot(delivered);
    }

    fn answer(&mut self, requests: Vec<Queued>) {
        let started = Instant::now();
        let checks = requests.iter().filter(|q| q.is_permission_check()).count() as u64;
        let registry = &mut self.registry;
        self.caches.before_query();
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            if shutdown_requested() {
                return; // the askers see the worker go away
            }
            requests::answer_all(requests.into_iter().map(Queued::take).collect(), registry);
        }));
        self.watch();
        self.figures.checked(started.elapsed(), checks);
    }

    /// The network side's lines, with Postgres's timestamps and levels.
    fn write_log_lines(&mut self) {
        for (level, line) in self.log_lines.try_iter() {
            match level {
                log::Level::Warning => warning!("{line}"),
                log::Level::Info => log!("{line}"),
            }
        }
        let dropped = log::take_dropped();
        if dropped > 0 {
            warning!("realtime: {dropped} log lines of the network side were dropped (more than 1024 at once)");
        }
    }

    /// The snapshot `realtime.stats` and its views read: the network side's
    /// figures and rows, and this thread's own.
    fn publish_stats(&mut self) {
        self.next_stats = Instant::now() + STATS_EVERY;
        // The worker never idles the way a backend does, where Postgres
        // flushes its activity: its reads and any recovery conflicts it met
        // reach pg_stat_database here.
        // SAFETY: main thread, outside a transaction.
        unsafe { pg_sys::pgstat_report_stat(false) };
        let capacity = stats::capacity();
        if capacity == 0 {
            return;
        }
        let mut snapshot = self.network.stats();
        // Flushed on a primary, replayed on a standby.
        let end = decoding::available_end();
        let read = self.decoder.as_ref().map(Decoder::read_position);
        let rls_checks = self.figures.add_to(&mut snapshot, end, read);
        snapshot.decode_idle_ms = self.last_decode.elapsed().as_millis() as i64;
        snapshot.standby = self.standby;
        if let Some(reader) = &self.bus {
            snapshot.bus_lag_bytes = end.saturating_sub(reader.position()) as i64;
        }
        snapshot.worker_rss_bytes = maintenance::rss_bytes();
        let main = MainFigures {
            decode_lag_bytes: snapshot.decode_lag_bytes,
            decode_lag_ms: snapshot.decode_lag_ms,
            rls_checks,
            rls_check_p99_ms: snapshot.rls_check.p99_ms,
        };
        let json = snapshot.into_json_within(capacity);
        stats::publish(&json);
        self.network.published(&json, main);
    }

    /// `table: '*'` bindings see tables added to the publication since.
    fn refresh_wildcards(&mut self) {
        self.next_wildcard_check = Instant::now() + WILDCARD_CHECK_EVERY;
        if !self.registry.has_wildcards() {
            return;
        }
        let registry = &mut self.registry;
        self.caches.before_query();
        let changed = BackgroundWorker::transaction(AssertUnwindSafe(|| subscribe::refresh_wildcards(registry)));
        if changed {
            self.watch();
        }
    }

    /// Names the tables whose changes are decoded: those some binding here
    /// watches, and with `realtime.bus` on every published table, for the
    /// standbys' subscribers.
    fn watch(&self) {
        let bus = settings::bus() && !self.standby;
        plugin::set_watched(self.registry.watched(), bus);
        wake::watch_writes(!self.registry.is_empty() || bus);
    }

    /// Creates the slot when missing and keeps the WAL it holds bounded.
    fn check_slot(&mut self) {
        self.next_slot_check = Instant::now() + SLOT_CHECK_EVERY;
        let checked = self.in_transaction(|| {
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
            self.close_decoder();
            self.next_open = Instant::now();
            return; // opening finds the slot lost, drops and recreates it
        }
        let bound = settings::max_slot_wal_bytes();
        if held.restart_bytes <= bound {
            return;
        }
        if held.unconfirmed_bytes > bound / 2 {
            // The worker is behind: skip, rather than fill the disk.
            self.close_decoder();
            let skipped = self.in_transaction(|| subxact::as_text(subxact::committed(slot::skip_to_end)));
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

    /// Runs SPI work in a transaction of its own, after the caches are made
    /// right for present-time reads.
    fn in_transaction<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.caches.before_query();
        BackgroundWorker::transaction(AssertUnwindSafe(f))
    }

    /// SIGHUP: reloads the settings. Some when the worker must start over.
    fn reload(&mut self) -> Option<Stop> {
        // SAFETY: main thread, outside a transaction, as in any backend.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        let mut reloaded = settings::read();
        reloaded.allowed_roles = maintenance::sync_worker_roles(&reloaded.allowed_roles);
        if reloaded.listen_changed(&self.settings) {
            log!("realtime: listen address or port changed, restarting the worker");
            return Some(Stop::Restart);
        }
        if reloaded.jwt_changed(&self.settings) {
            log!("realtime: JWT settings changed, disconnecting every socket");
            self.network.disconnect_all(1012, "JWT settings changed");
        }
        warn_all(&self.network.reconfigure(&reloaded));
        self.budget.set_limit(reloaded.max_memory_bytes);
        if let Some(decoder) = self.decoder.as_mut() {
            decoder.output().set_memory_limit(reloaded.max_memory_bytes / 8);
        }
        apply_session_settings(&reloaded);
        self.settings = reloaded;
        self.watch();
        None
    }

    /// Fans out what was handed over, closes the sockets, confirms what was
    /// sent and lets go of the slot.
    fn stop(mut self, stop: Stop) {
        let (code, reason) = match stop {
            Stop::Shutdown => (1001, "server shutting down"),
            Stop::Restart => (1012, "server restarting"),
        };
        self.network.shutdown(code, reason);
        self.write_log_lines();
        self.marks.slot_moved = None; // the bus slot moves now, whenever it last did
        self.confirm();
        self.close_bus();
        if let Some(decoder) = self.decoder.take() {
            decoder.save();
            decoder.close();
        }
    }
}

/// Drops the standby's bus slot, in a transaction of its own; failures are logged.
fn drop_bus_slot() {
    let dropped = BackgroundWorker::transaction(|| subxact::as_text(subxact::committed(bus_slot::drop)));
    if let Err(e) = dropped {
        warning!("realtime: cannot drop replication slot \"{}\": {e}", bus_slot::BUS_SLOT);
    }
}

/// Where decoded messages past the memory bound wait: Postgres's temporary
/// directory, whose `pgsql_tmp` files it removes when the server starts.
fn spill_path() -> PathBuf {
    // SAFETY: MyProcPid is set for every backend.
    let pid = unsafe { pg_sys::MyProcPid };
    PathBuf::from(format!("base/pgsql_tmp/pgsql_tmp_realtime_{pid}.spill"))
}

/// Session settings of the worker: how long its queries may wait for locks,
/// and how much the reorder buffer keeps in memory before spilling.
fn apply_session_settings(settings: &Settings) {
    maintenance::set_session("lock_timeout", &format!("{}ms", settings::lock_timeout_ms()));
    let work_mem_kb = (settings.max_memory_bytes / 8 / 1024).clamp(64, 64 * 1024);
    maintenance::set_session("logical_decoding_work_mem", &format!("{work_mem_kb}kB"));
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        warning!("realtime: {w}");
    }
}

/// Exits with code 1: the postmaster restarts the worker (after SIGTERM from
/// pg_terminate_backend too); during a shutdown it does not.
fn exit_for_restart() {
    wake::set_worker(None);
    // SAFETY: ends the process the way Postgres expects.
    unsafe { pg_sys::proc_exit(1) };
}

/// The main thread's own figures for `realtime.stats`.
struct Figures {
    /// RLS checks since the last snapshot, and when that was.
    checks: u64,
    since: Instant,
    /// RLS checks since the worker started.
    checks_total: u64,
    /// Each check's wait over the last minute.
    check_times: latency::Window,
    wal_clock: WalClock,
}

impl Figures {
    fn new(now: Instant) -> Figures {
        Figures {
            checks: 0,
            since: now,
            checks_total: 0,
            check_times: latency::Window::new(now),
            wal_clock: WalClock::default(),
        }
    }

    /// `count` checks answered together, each after `took`.
    fn checked(&mut self, took: Duration, count: u64) {
        if count > 0 {
            self.checks += count;
            self.check_times.record(took, count, Instant::now());
        }
    }

    /// Fills in the figures and starts counting afresh; returns the checks
    /// counted. `read` is where the decoder has read WAL to (none while it
    /// is closed).
    fn add_to(&mut self, snapshot: &mut Stats, flushed: u64, read: Option<u64>) -> u64 {
        let now = Instant::now();
        self.wal_clock.note(flushed, now);
        (snapshot.decode_lag_bytes, snapshot.decode_lag_ms) = match read {
            Some(read) => (flushed.saturating_sub(read) as i64, self.wal_clock.lag(read, now).as_secs_f64() * 1000.0),
            None => (-1, -1.0),
        };
        snapshot.rls_checks_per_second = self.checks as f64 / now.duration_since(self.since).as_secs_f64().max(0.001);
        snapshot.rls_check = self.check_times.percentiles(now);
        self.checks_total += self.checks;
        snapshot.totals.rls_checks = self.checks_total;
        self.since = now;
        std::mem::take(&mut self.checks)
    }
}
