//! The background worker. Its main thread is the only one that calls Postgres:
//! it waits on its latch and the bridge's eventfd, answers the network side's
//! requests in subtransactions, and runs partition maintenance. The network
//! side (tokio, in `server`) runs on threads created with every signal blocked.

pub mod bridge;
pub mod subxact;
mod wait;

use crate::auth::rls;
use crate::server;
use crate::settings;
use bridge::Request;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
const EXTENSION_POLL: Duration = Duration::from_secs(2);

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
    let (bridge, inbox) = match bridge::channel(4096) {
        Ok(pair) => pair,
        Err(e) => error!("realtime: cannot create the worker's eventfd: {e}"),
    };
    let config = settings::server_config();
    warn_about(&config);
    let server = server::spawn(config.clone(), bridge);
    log!("realtime: serving database \"{database}\" on {}", config.listen_description());

    let wait_set = wait::WaitSet::new(inbox.fd());
    let mut next_maintenance = Instant::now();
    let mut config = config;
    loop {
        if Instant::now() >= next_maintenance {
            maintain();
            next_maintenance = Instant::now() + MAINTENANCE_EVERY;
        }
        wait_set.wait(next_maintenance.saturating_duration_since(Instant::now()));
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
            BackgroundWorker::transaction(AssertUnwindSafe(|| requests.into_iter().for_each(answer)));
        }
    }
    exit_for_restart();
}

fn warn_about(config: &server::ServerConfig) {
    for w in &config.warnings {
        warning!("realtime: {w}");
    }
}

/// Exits with code 1: the postmaster restarts the worker (after SIGTERM from
/// pg_terminate_backend too); during a shutdown it does not.
fn exit_for_restart() {
    // SAFETY: ends the process the way Postgres expects.
    unsafe { pg_sys::proc_exit(1) };
}

/// Waits, without crash-looping, until `CREATE EXTENSION realtime` has run.
/// False when told to stop meanwhile.
fn wait_for_extension(database: &str) -> bool {
    let mut told = false;
    loop {
        let exists = BackgroundWorker::transaction(|| {
            Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'realtime')")
        });
        if exists == Ok(Some(true)) {
            return true;
        }
        if !told {
            log!("realtime: waiting for CREATE EXTENSION realtime in database \"{database}\"");
            told = true;
        }
        BackgroundWorker::wait_latch(Some(EXTENSION_POLL));
        if BackgroundWorker::sigterm_received() {
            return false;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

fn answer(request: Request) {
    // A dropped receiver means the asker went away; nothing to do.
    match request {
        Request::ReadPermissions { ctx, topic, presence, reply } => {
            let _ = reply.send(rls::read_permissions(&ctx, &topic, presence));
        }
        Request::WritePermission { ctx, topic, extension, reply } => {
            let _ = reply.send(rls::write_permission(&ctx, &topic, extension));
        }
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
