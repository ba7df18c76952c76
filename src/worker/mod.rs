//! The background worker. Its main thread is the only one that calls Postgres:
//! it waits on its latch and the bridge's eventfd, answers the network side's
//! requests in subtransactions, and runs partition maintenance. The network
//! side (tokio, in `server`) runs on threads created with every signal blocked.

pub mod bridge;
pub mod subxact;
mod wait;
pub mod wake;
mod wal;

use crate::auth::rls;
use crate::changes::registry::{ChannelBindings, Registry};
use crate::changes::{route, subscribe};
use crate::decoder::{self, BROADCAST, ROW_CHANGE, RowChange};
use crate::server::{self, Decoded};
use crate::settings;
use bridge::Request;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
const EXTENSION_POLL: Duration = Duration::from_secs(2);
/// Commits wake the worker at once; this is only the fallback.
const DECODE_FALLBACK: Duration = Duration::from_millis(500);
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Rows per peek (decoding stops at the end of a transaction past it).
const BATCH_ROWS: i32 = 10_000;
/// Rows the network side may have pending before decoding pauses.
const MAX_BACKLOG: usize = 200_000;

/// Registers the worker; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("realtime")
        .set_type("realtime")
        .set_library("realtime")
        .set_function("realtime_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn realtime_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);

    if !wait_for_extension(&database) {
        return exit_for_restart();
    }
    allow_output_plugin();
    raise_fd_limit();
    let (bridge, inbox) = match bridge::channel(4096) {
        Ok(pair) => pair,
        Err(e) => error!("realtime: cannot create the worker's eventfd: {e}"),
    };
    let config = settings::server_config();
    warn_about(&config);
    let server = server::spawn(config.clone(), bridge);
    log!("realtime: serving database \"{database}\" on {}", config.listen_description());

    // SAFETY: MyProc is this process's PGPROC.
    wake::set_worker(Some(unsafe { (*pg_sys::MyProc).pgprocno }));
    let wait_set = wait::WaitSet::new(inbox.fd());
    let mut next_maintenance = Instant::now();
    let mut next_slot_check = Instant::now();
    let mut slot_ready = false;
    let mut config = config;
    let mut registry = Registry::default();
    let mut last_decode = Instant::now();
    let mut decode_due = true;
    loop {
        let now = Instant::now();
        if now >= next_maintenance {
            maintain();
            next_maintenance = now + MAINTENANCE_EVERY;
        }
        if now >= next_slot_check {
            slot_ready = check_slot(slot_ready);
            next_slot_check = now + SLOT_CHECK_EVERY;
        }
        // Decode after a commit wake-up, while more is pending, or on the
        // fallback timer; not for every request from the network side.
        let more = if slot_ready && (decode_due || last_decode.elapsed() >= DECODE_FALLBACK) {
            last_decode = Instant::now();
            decode(&server, &registry)
        } else {
            false
        };
        let timeout = if more { Duration::ZERO } else { DECODE_FALLBACK.saturating_sub(last_decode.elapsed()) };
        let latch = wait_set.wait(timeout.min(next_maintenance.saturating_duration_since(Instant::now())));
        decode_due = latch || more;
        if BackgroundWorker::sigterm_received() {
            server.shutdown(1001, "server shutting down");
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction, as in any backend.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            let reloaded = settings::server_config();
            warn_about(&reloaded);
            if reloaded.listen != config.listen {
                log!("realtime: listen address or port changed, restarting the worker");
                server.shutdown(1012, "server restarting");
                break;
            }
            if reloaded.jwt_settings != config.jwt_settings {
                log!("realtime: JWT settings changed, disconnecting every socket");
                server.disconnect_all(1012, "JWT settings changed");
            }
            server.reconfigure(reloaded.clone());
            config = reloaded;
        }
        let requests = inbox.drain();
        if !requests.is_empty() {
            BackgroundWorker::transaction(AssertUnwindSafe(|| {
                requests.into_iter().for_each(|r| answer(r, &mut registry));
            }));
            decoder::set_watched(registry.watched());
            wake::watch_writes(!registry.is_empty());
        }
    }
    exit_for_restart();
}

fn warn_about(config: &server::ServerConfig) {
    for w in &config.warnings {
        warning!("realtime: {w}");
    }
}

/// Each WebSocket is a file descriptor: allow as many as the hard limit does.
fn raise_fd_limit() {
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Recent PostgreSQL minor releases only load output plugins listed in
/// `output_plugin_libraries`; the worker adds its own, for its session only.
fn allow_output_plugin() {
    let allowed = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT set_config('output_plugin_libraries', setting || ', realtime', false)
                 FROM pg_settings WHERE name = 'output_plugin_libraries'
                   AND 'realtime' <> ALL (string_to_array(replace(setting, ' ', ''), ','))",
                None,
                &[],
            )
            .map(|_| ())
        })
    });
    if let Err(e) = allowed {
        warning!("realtime: cannot allow the realtime output plugin: {e}");
    }
}

/// Creates the slot when missing and keeps the WAL it holds bounded. Returns
/// whether decoding can run.
fn check_slot(was_ready: bool) -> bool {
    let checked = BackgroundWorker::transaction(|| {
        subxact::committed(|| -> Result<(bool, Option<i64>), pgrx::spi::Error> {
            let created = wal::ensure_slot()?;
            Ok((created, wal::lag_bytes()?))
        })
    });
    let (created, lag) = match checked {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return slot_failed(was_ready, &e.to_string()),
        Err(e) => return slot_failed(was_ready, &e),
    };
    if created {
        log!("realtime: created replication slot \"{}\" with output plugin realtime", wal::SLOT);
    }
    let bound = settings::max_slot_wal_bytes();
    if let Some(lag) = lag.filter(|lag| *lag > bound) {
        let skipped = BackgroundWorker::transaction(|| subxact::committed(wal::skip_to_end));
        warning!(
            "realtime: replication slot \"{}\" held {lag} bytes of WAL, more than realtime.max_slot_wal ({bound} bytes); \
             skipped ahead to {:?}: database broadcasts committed in between are not delivered",
            wal::SLOT,
            skipped
        );
    }
    true
}

fn slot_failed(was_ready: bool, cause: &str) -> bool {
    wal::release_after_error();
    if was_ready {
        warning!("realtime: replication slot \"{}\" unavailable: {cause}", wal::SLOT);
    } else {
        warning!(
            "realtime: cannot use replication slot \"{}\" ({cause}); database broadcasts wait until it works \
             (it needs wal_level = logical and a free max_replication_slots entry)",
            wal::SLOT
        );
    }
    false
}

/// Decodes one batch and hands it to the network side, then advances the
/// slot. Returns true when more is waiting.
fn decode(server: &server::ServerHandle, registry: &Registry) -> bool {
    if server.backlog() > MAX_BACKLOG {
        return false; // the network side catches up first; the slot keeps the rest
    }
    let decoded = BackgroundWorker::transaction(AssertUnwindSafe(|| {
        subxact::committed(|| -> Result<bool, pgrx::spi::Error> {
            let batch = wal::peek(BATCH_ROWS)?;
            if !batch.rows.is_empty() {
                server.deliver(outgoing(batch.rows, registry));
            }
            if let Some(lsn) = &batch.advance_to {
                wal::advance(lsn)?;
            }
            Ok(batch.full)
        })
    }));
    let error = match decoded {
        Ok(Ok(more)) => return more,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e,
    };
    wal::release_after_error();
    warning!("realtime: decoding the replication slot failed: {error}");
    false
}

/// The decoded rows as the network side sends them, in commit order: row
/// changes routed to the channels whose bindings and policies admit them.
fn outgoing(rows: Vec<String>, registry: &Registry) -> Vec<Decoded> {
    enum Row {
        Broadcast(String),
        Change(usize),
    }
    let mut order = Vec::with_capacity(rows.len());
    let mut changes = Vec::new();
    for row in rows {
        if let Some(json) = row.strip_prefix(BROADCAST) {
            order.push(Row::Broadcast(json.to_owned()));
        } else if let Some(json) = row.strip_prefix(ROW_CHANGE) {
            match serde_json::from_str::<RowChange>(json) {
                Ok(change) => {
                    order.push(Row::Change(changes.len()));
                    changes.push(change);
                }
                Err(e) => warning!("realtime: skipping an undecodable row change: {e}"),
            }
        }
    }
    let mut routed =
        if changes.is_empty() { Vec::new() } else { route::route(registry, &changes, settings::max_record_bytes()) };
    let mut out = Vec::with_capacity(order.len());
    for row in order {
        match row {
            Row::Broadcast(json) => out.push(Decoded::Broadcast(json)),
            Row::Change(i) => out.extend(std::mem::take(&mut routed[i]).into_iter().map(Decoded::Change)),
        }
    }
    out
}

/// Exits with code 1: the postmaster restarts the worker (after SIGTERM from
/// pg_terminate_backend too); during a shutdown it does not.
fn exit_for_restart() {
    wake::set_worker(None);
    // SAFETY: ends the process the way Postgres expects.
    unsafe { pg_sys::proc_exit(1) };
}

/// Waits, without crash-looping, until `CREATE EXTENSION realtime` has run.
/// False when told to stop meanwhile.
fn wait_for_extension(database: &str) -> bool {
    let mut told = false;
    loop {
        let exists = BackgroundWorker::transaction(|| {
            Spi::connect(|c| {
                c.select("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'realtime')", None, &[])?
                    .first()
                    .get_one::<bool>()
            })
        });
        if exists == Ok(Some(true)) {
            return true;
        }
        if !told {
            log!("realtime: waiting for CREATE EXTENSION realtime in database \"{database}\"");
            told = true;
        }
        // False on SIGTERM (it consumes the flag) or postmaster death.
        if !BackgroundWorker::wait_latch(Some(EXTENSION_POLL)) {
            return false;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

fn answer(request: Request, registry: &mut Registry) {
    // A dropped receiver means the asker went away; nothing to do.
    match request {
        Request::ReadPermissions { ctx, topic, presence, reply } => {
            let _ = reply.send(rls::read_permissions(&ctx, &topic, presence));
        }
        Request::WritePermission { ctx, topic, extension, reply } => {
            let _ = reply.send(rls::write_permission(&ctx, &topic, extension));
        }
        Request::SubscribeChanges { channel, ctx, bindings, reply } => {
            let requested: Vec<subscribe::Requested> =
                bindings.iter().map(|(id, binding)| subscribe::Requested { id: *id, binding }).collect();
            let checked = subscribe::validate(&ctx, &requested);
            let answer = checked.map(|bindings| registry.add(channel, ChannelBindings { ctx, bindings }));
            let _ = reply.send(answer);
        }
        Request::UnsubscribeChanges { channel } => registry.remove(channel),
        Request::ChangesAuth { channel, ctx } => registry.set_ctx(channel, ctx),
        Request::Replay { ctx, topic, since_ms, limit, reply } => {
            let _ = reply.send(rls::replay(&ctx, &topic, since_ms, limit));
        }
    }
}

/// The cleanup job: day partitions ahead, old ones dropped.
fn maintain() {
    let result = BackgroundWorker::transaction(|| {
        subxact::committed(|| {
            let created = Spi::get_one::<String>("SELECT string_agg(p, ', ') FROM realtime.create_partitions() p");
            let dropped = Spi::get_one::<String>("SELECT string_agg(p, ', ') FROM realtime.drop_old_partitions() p");
            (created, dropped)
        })
    });
    match result {
        Ok((created, dropped)) => {
            if let Ok(Some(created)) = created {
                log!("realtime: created partitions {created}");
            }
            if let Ok(Some(dropped)) = dropped {
                log!("realtime: dropped partitions older than the retention: {dropped}");
            }
        }
        Err(e) => warning!("realtime: partition maintenance failed: {e}"),
    }
}
