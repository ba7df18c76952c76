//! The background worker's main thread, the only one that calls Postgres. It
//! waits on its latch (commits wake it, signals set it) and the bridge's
//! eventfd, and in turn: does its role's work (a primary decodes new WAL, a
//! standby reads the bus; both route what they read and hand it to the
//! network side within the memory budget), confirms what the network side
//! has fanned out, and answers the network side's requests, each in its own
//! subtransaction under a statement timeout. The loop, its timers and the
//! network handle live here; each role's state and steps in its own file.

mod context;
mod figures;
mod primary;
mod requests;
mod standby;

use super::authz::subscribe;
use super::interrupts::{self, shutdown_requested};
use super::recovery::in_recovery;
use super::wait::WaitSet;
use super::wal::available_end;
use super::{bus, conflict, decoding, maintenance, settings, stats, wake};
use crate::bridge::outbound::SpawnNetwork;
use crate::bridge::queue::Queued;
use crate::bridge::stats::MainFigures;
use crate::bridge::{Budget, Inbox, Settings, Stats, log, queue};
use context::Context;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use primary::Primary;
use standby::Standby;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// How often `table: '*'` bindings look at the publication again.
const WILDCARD_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often `realtime.stats` is refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// A decoding (or bus reading) step yields to requests after this long.
const STEP_TIME: Duration = Duration::from_millis(20);
/// The slot's confirmed position reaches disk about this often, so a crash
/// repeats at most about this much traffic.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The most decoded bytes routed and handed over as one batch (the least
/// is `MIN_HANDOFF`).
const MAX_CHUNK: usize = 1024 * 1024;
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
    if !in_recovery() {
        bus::key::ensure();
    }
    if !in_recovery() || !settings::bus() {
        // It would keep WAL for a reader that does not run (a primary, say
        // one promoted while its worker was down).
        standby::drop_bus_slot();
    }
    if !wait_until_serving() {
        return exit_for_restart();
    }
    maintenance::allow_output_plugin();
    maintenance::pin_session_authorization();
    maintenance::raise_fd_limit();
    maintenance::tune_allocator();
    let mut settings = settings::read();
    let standby = in_recovery();
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
    wake::set_worker(Some(unsafe { crate::pg::compat::my_proc_number() }));
    let wait_set = WaitSet::new(inbox.fd());
    let role: Box<dyn Role> = if standby { Box::new(Standby::default()) } else { Box::new(Primary::new()) };
    let mut worker = Worker::new(Context::new(network, budget, settings, log_lines), role);
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

/// What the worker does as a primary ([`Primary`]) or a hot standby
/// ([`Standby`]); the loop calls it, and never asks which it is.
trait Role {
    /// Its timers, then a step of decoding or reading and handing over.
    /// True when more is waiting.
    fn work(&mut self, cx: &mut Context, now: Instant) -> bool;
    /// Moves its slot up to what the network side has fanned out.
    fn confirm(&mut self, cx: &mut Context);
    /// How long the loop may wait when nothing was waiting.
    fn idle_timeout(&mut self) -> Duration;
    /// Its next timer, if it has any.
    fn next_timer(&self) -> Option<Instant>;
    /// Its figures for `realtime.stats`; where decoding has read WAL to, if
    /// it decodes.
    fn describe(&self, snapshot: &mut Stats) -> Option<u64>;
    /// Whether every published table's changes are decoded (for the bus).
    fn carries_all_published(&self) -> bool;
    /// The settings were reloaded (`cx.settings`).
    fn reloaded(&mut self, cx: &mut Context);
    /// After a promotion, the role that takes over.
    fn promoted(&mut self, _cx: &mut Context) -> Option<Box<dyn Role>> {
        None
    }
    /// Confirms what was sent and lets go of its slot.
    fn stop(&mut self, cx: &mut Context);
}

struct Worker {
    cx: Context,
    role: Box<dyn Role>,
    next_wildcard_check: Instant,
    next_stats: Instant,
    /// The most of the budget used since memory was last given back, and when.
    peak_used: usize,
    last_trim: Instant,
}

impl Worker {
    fn new(cx: Context, role: Box<dyn Role>) -> Worker {
        let now = Instant::now();
        Worker { cx, role, next_wildcard_check: now, next_stats: now, peak_used: 0, last_trim: now }
    }
    /// Gives freed memory back to the system once a burst has passed, and
    /// every second while one lasts.
    fn trim_after_burst(&mut self) {
        let used = self.cx.budget.used();
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
            if let Some(next) = self.role.promoted(&mut self.cx) {
                self.role = next;
                // Roles to grant, and the network side's bus settings, change.
                if let Some(stop) = self.reload() {
                    return stop;
                }
            }
            self.cx.announce_new_epoch();
            let now = Instant::now();
            if now >= self.next_wildcard_check {
                self.refresh_wildcards();
            }
            if now >= self.next_stats {
                self.publish_stats();
            }
            let more = self.role.work(&mut self.cx, now);
            self.role.confirm(&mut self.cx);
            self.trim_after_burst();
            self.write_log_lines();
            let requests = inbox.drain();
            if !requests.is_empty() {
                self.answer(requests);
            }
            let timeout = if more { Duration::ZERO } else { self.role.idle_timeout() };
            let mut next_timer = self.next_stats;
            if let Some(timer) = self.role.next_timer() {
                next_timer = next_timer.min(timer);
            }
            if self.cx.registry.has_wildcards() {
                next_timer = next_timer.min(self.next_wildcard_check);
            }
            let until_timer = next_timer.saturating_duration_since(Instant::now());
            let latch = wait_set.wait(timeout.min(until_timer));
            interrupts::process_pending();
            self.cx.decode_due = latch || more;
        }
    }

    fn answer(&mut self, requests: Vec<Queued>) {
        let started = Instant::now();
        let checks = requests.iter().filter(|q| q.is_permission_check()).count() as u64;
        let registry = &mut self.cx.registry;
        self.cx.caches.before_query();
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            if shutdown_requested() {
                return; // the askers see the worker go away
            }
            requests::answer_all(requests.into_iter().map(Queued::take).collect(), registry);
        }));
        self.watch();
        self.cx.figures.checked(started.elapsed(), checks);
    }

    /// The network side's lines, with Postgres's timestamps and levels.
    fn write_log_lines(&mut self) {
        for (level, line) in self.cx.log_lines.try_iter() {
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
        let mut snapshot = self.cx.network.stats();
        // Flushed on a primary, replayed on a standby.
        let end = available_end();
        let read = self.role.describe(&mut snapshot);
        let rls_checks = self.cx.figures.add_to(&mut snapshot, end, read);
        snapshot.worker_rss_bytes = maintenance::rss_bytes();
        let main = MainFigures {
            decode_lag_bytes: snapshot.decode_lag_bytes,
            decode_lag_ms: snapshot.decode_lag_ms,
            rls_checks,
            rls_check_p99_ms: snapshot.rls_check.p99_ms,
        };
        let json = snapshot.into_json_within(capacity);
        stats::publish(&json);
        self.cx.network.published(&json, main);
    }

    /// `table: '*'` bindings see tables added to the publication since.
    fn refresh_wildcards(&mut self) {
        self.next_wildcard_check = Instant::now() + WILDCARD_CHECK_EVERY;
        if !self.cx.registry.has_wildcards() {
            return;
        }
        let registry = &mut self.cx.registry;
        self.cx.caches.before_query();
        let changed = BackgroundWorker::transaction(AssertUnwindSafe(|| subscribe::refresh_wildcards(registry)));
        if changed {
            self.watch();
        }
    }

    /// Names the tables whose changes are decoded: those some binding here
    /// watches, and, when the role carries them on the bus, every published
    /// table, for the standbys' subscribers.
    fn watch(&self) {
        let all_published = self.role.carries_all_published();
        decoding::set_watched(self.cx.registry.watched(), all_published);
        wake::watch_writes(!self.cx.registry.is_empty() || all_published);
    }

    /// SIGHUP: reloads the settings. Some when the worker must start over.
    fn reload(&mut self) -> Option<Stop> {
        // SAFETY: main thread, outside a transaction, as in any backend.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        let mut reloaded = settings::read();
        reloaded.allowed_roles = maintenance::sync_worker_roles(&reloaded.allowed_roles);
        if reloaded.listen_changed(&self.cx.settings) {
            log!("realtime: listen address or port changed, restarting the worker");
            return Some(Stop::Restart);
        }
        if reloaded.jwt_changed(&self.cx.settings) {
            log!("realtime: JWT settings changed, disconnecting every socket");
            self.cx.network.disconnect_all(1012, "JWT settings changed");
        }
        warn_all(&self.cx.network.reconfigure(&reloaded));
        self.cx.budget.set_limit(reloaded.max_memory_bytes);
        apply_session_settings(&reloaded);
        self.cx.settings = reloaded;
        self.role.reloaded(&mut self.cx);
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
        self.cx.network.shutdown(code, reason);
        self.write_log_lines();
        self.role.stop(&mut self.cx);
    }
}

/// A hot standby serves clients only with `realtime.bus` on: a plain replica
/// opens no port. Waits for that, or a promotion; false on shutdown.
fn wait_until_serving() -> bool {
    maintenance::wait_until(
        "realtime: this server is a hot standby and realtime.bus is off: waiting for a promotion or realtime.bus = on",
        Duration::from_secs(1),
        || !in_recovery() || settings::bus(),
    )
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
