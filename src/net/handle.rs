//! The main thread's handle on the network side ([`Network`]): batches
//! handed over, settings reloaded, figures and what a node missed passed on,
//! and the shutdown.

use super::config::ServerConfig;
use super::shared::Shared;
use super::{stats, tls};
use crate::bridge::stats::MainFigures;
use crate::bridge::{Batch, Network, Settings, Stats};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long a stopping worker spends fanning out what it was handed.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// The main thread's handle on the network side.
pub struct ServerHandle {
    pub shared: Arc<Shared>,
    pub decoded: mpsc::UnboundedSender<(Batch, Instant)>,
    pub stop: watch::Sender<bool>,
    pub stopped: std::sync::mpsc::Receiver<()>,
}

impl Network for ServerHandle {
    fn deliver(&self, batch: Batch) {
        self.shared.delivery.pending_batches.fetch_add(1, Ordering::Relaxed);
        // Unbounded in items, bounded in bytes: every batch carries its charge
        // and the main thread stops decoding when the budget is spent.
        let _ = self.decoded.send((batch, Instant::now()));
    }

    fn delivered_lsn(&self) -> u64 {
        self.shared.delivery.delivered_lsn.load(Ordering::Acquire)
    }

    fn pending_batches(&self) -> usize {
        self.shared.delivery.pending_batches.load(Ordering::Relaxed)
    }

    fn reconfigure(&self, settings: &Settings) -> Vec<String> {
        crate::bridge::log::set_level(settings.log_level);
        let mut config = ServerConfig::new(settings, &self.shared.jwks.keys);
        if config.jwks_url != self.shared.config().jwks_url {
            self.shared.jwks.url_changed();
        }
        let mut warnings = config.warnings.clone();
        // A certificate that cannot be loaded on reload leaves the one in use.
        if let (tls::Tls::Unavailable, tls::Tls::On(previous)) = (&config.tls, &self.shared.config().tls) {
            config.tls = tls::Tls::On(previous.clone());
            warnings.push("realtime.ssl: serving with the certificate loaded before".into());
        }
        self.shared.budget.set_limit(settings.max_memory_bytes);
        self.shared.rates.set_limits(&settings.limits);
        // A reload may come with changed policies: probe afresh.
        self.shared.read_cache.clear();
        self.shared.set_config(config);
        warnings
    }

    fn disconnect_all(&self, code: u16, reason: &str) {
        self.shared.hub.close_all(code, reason);
    }

    fn set_replication_ready(&self, ready: bool) {
        self.shared.delivery.replication_ready.store(ready, Ordering::Relaxed);
    }

    fn new_epoch(&self, system_identifier: u64, timeline: u32) {
        let message = format!("New epoch: timeline {timeline}; messages committed before it may have been missed");
        let epoch = json!({"system_identifier": system_identifier.to_string(), "timeline": timeline});
        self.shared.hub.system_to_all(&message, "epoch", &epoch);
        // Relays in flight may have been lost: send everything tracked again.
        self.shared.nodes.presence_asked.store(true, Ordering::Relaxed);
    }

    fn missed(&self, gap: &crate::bridge::Gap) {
        let time = crate::changes::payload::commit_timestamp;
        crate::log_warning!("realtime: {}", gap.message(time));
        self.shared.hub.system_to_all(&gap.message(time), "missed", &gap.to_json(time));
    }

    fn stats(&self) -> Stats {
        stats::take(&self.shared)
    }

    fn published(&self, json: &str, main: MainFigures) {
        self.shared.figures.publish(json);
        self.shared.metrics.main_figures(main);
    }

    fn shutdown(&self, code: u16, reason: &str) {
        self.shared.sockets.stopping.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN;
        while self.pending_batches() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shared.hub.close_all(code, reason);
        let _ = self.stop.send(true);
        let _ = self.stopped.recv_timeout(Duration::from_secs(3));
    }
}
