//! The network side: HTTP and WebSocket on a tokio runtime whose threads are
//! created with every signal blocked. Nothing here calls Postgres; what needs
//! the database goes to the worker's main thread through the bridge
//! (`checks` says where). By concern:
//! - `shared`: the state every task holds, one part per concern;
//! - `handle`: what the main thread calls; `fan_out`: what it handed over,
//!   out to the sockets;
//! - `http`, `listen`, `admission`, `tls`, `request_parts`: serving HTTP;
//!   `rest`, `probes`, `inspector`, `metrics`: its endpoints;
//! - `connection`, `session`, `join`, `channel`, `presence`, `limits`: a
//!   socket and its channels; `hub`: who is subscribed to what;
//! - `relay`, `nodes`, `relay_tls`, `remote_presence`: the other nodes.

mod admission;
mod auth;
mod channel;
mod checks;
mod config;
mod connection;
mod fan_out;
mod handle;
mod http;
pub mod hub;
mod inspector;
mod join;
mod jwks_url;
pub mod limits;
mod listen;
mod metrics;
mod nodes;
pub mod presence;
mod pressure;
mod probes;
mod read_cache;
mod relay;
mod relay_tls;
mod remote_presence;
mod request_parts;
mod rest;
mod session;
mod shared;
mod stats;
mod tls;

use crate::bridge::{Bridge, Budget, Network, Settings};
use handle::ServerHandle;
use shared::Shared;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Starts the network thread. Listener errors are retried there, never fatal.
pub fn spawn(settings: &Settings, bridge: Bridge, budget: Arc<Budget>) -> (Box<dyn Network>, Vec<String>) {
    let (nodes, relay_rx) = nodes::Nodes::new();
    let shared = Arc::new(Shared::new(settings, bridge, budget, nodes));
    let config = shared.config();
    let warnings = config.warnings.clone();
    crate::log_info!("realtime: listening on {}", config.listen_description());
    let grace = config.settings.restart_grace;
    let (decoded, decoded_rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    let thread_shared = shared.clone();
    with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("realtime-net".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("realtime-io")
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(async move {
                        tokio::spawn(fan_out::deliver_decoded(thread_shared.clone(), decoded_rx, grace));
                        tokio::spawn(pressure::watch(thread_shared.clone()));
                        tokio::spawn(relay::run(thread_shared.clone(), relay_rx));
                        tokio::spawn(relay::keep_alive(thread_shared.clone()));
                        let jwks = thread_shared.clone();
                        tokio::spawn(async move { jwks_url::run(&jwks.jwks, || jwks.config().jwks_url.clone()).await });
                        let rates = thread_shared.clone();
                        tokio::spawn(async move { rates.rates.run(&rates.metrics).await });
                        http::serve(thread_shared, stop_rx).await
                    }),
                    Err(e) => crate::log_warning!("realtime: cannot start the network runtime: {e}"),
                }
                let _ = stopped_tx.send(());
            })
            .expect("spawning the network thread")
    });
    (Box::new(ServerHandle { shared, decoded, stop, stopped }), warnings)
}

/// Threads inherit the signal mask: Postgres's handlers must only ever run on
/// the main thread.
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain libc calls on stack-allocated sigset_t values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result
    }
}
