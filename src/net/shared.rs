//! The network side's state, one part per concern: the channels (hub), the
//! bridge to the main thread and the memory budget, the settings, the
//! sockets, the delivery of what was decoded, the other nodes, and the
//! figures. Each task holds an `Arc` of it.

use super::admission::Admission;
use super::config::ServerConfig;
use super::hub::Hub;
use super::nodes::Nodes;
use super::{admission, jwks_url, limits, metrics, read_cache};
use crate::bridge::latency::Window;
use crate::bridge::{Bridge, Budget, Settings};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

pub struct Shared {
    pub hub: Hub,
    pub bridge: Bridge,
    pub budget: Arc<Budget>,
    config: RwLock<Arc<ServerConfig>>,
    pub sockets: Sockets,
    pub delivery: Delivery,
    /// The bus between nodes: relays, the primary, remote presence.
    pub nodes: Nodes,
    /// Keys from `realtime.jwt_jwks_url`, and their fetches.
    pub jwks: jwks_url::JwksUrl,
    /// Supabase's tenant-wide counters.
    pub rates: limits::ServerRates,
    /// Recent private joins' read checks.
    pub read_cache: read_cache::ReadCache,
    /// What `/metrics` tells.
    pub metrics: metrics::Metrics,
    /// What `realtime.stats` and `/api/stats` tell.
    pub figures: Figures,
}

/// The sockets, and the connections not yet upgraded.
pub struct Sockets {
    /// Sockets the process can hold while Postgres keeps files to open.
    pub max: usize,
    /// Sockets whose tasks are still running (until their last frame is written).
    pub open: Arc<AtomicUsize>,
    /// HTTP connections not (yet) upgraded to a WebSocket.
    pub admission: Arc<Admission>,
    /// The worker is stopping: no new sockets, and `/health` says so.
    pub stopping: AtomicBool,
}

/// What the main thread handed over and how far it has gone out.
pub struct Delivery {
    /// Batches handed over and not yet fanned out.
    pub pending_batches: AtomicUsize,
    /// `end_lsn` of the newest batch fanned out.
    pub delivered_lsn: AtomicU64,
    /// Database messages flow (the decoder holds the slot).
    pub replication_ready: AtomicBool,
    /// Commit → send over the last minute.
    pub commit_to_send: Mutex<Window>,
}

impl Shared {
    pub fn new(settings: &Settings, bridge: Bridge, budget: Arc<Budget>, nodes: Nodes) -> Shared {
        let jwks = jwks_url::JwksUrl::default();
        let config = ServerConfig::new(settings, &jwks.keys);
        Shared {
            hub: Hub::default(),
            bridge,
            budget,
            config: RwLock::new(Arc::new(config)),
            sockets: Sockets {
                max: socket_budget(),
                open: Arc::new(AtomicUsize::new(0)),
                admission: Admission::new(admission::MAX_PENDING, admission::MAX_PENDING_PER_ADDRESS),
                stopping: AtomicBool::new(false),
            },
            delivery: Delivery {
                pending_batches: AtomicUsize::new(0),
                delivered_lsn: AtomicU64::new(0),
                replication_ready: AtomicBool::new(false),
                commit_to_send: Mutex::new(Window::new(Instant::now())),
            },
            nodes,
            jwks,
            rates: limits::ServerRates::new(&settings.limits),
            read_cache: read_cache::ReadCache::default(),
            metrics: metrics::Metrics::default(),
            figures: Figures::new(SystemTime::now()),
        }
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_config(&self, config: ServerConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

/// Descriptors left to Postgres itself (max_files_per_process is 1000 by
/// default) and to connections not yet upgraded.
const RESERVED_FDS: usize = 1100 + admission::MAX_PENDING;

/// The open-file limit less what Postgres needs: past it, Postgres could not
/// open its own files.
fn socket_budget() -> usize {
    // SAFETY: getrlimit fills a local struct.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1000;
    }
    (limit.rlim_cur as usize).saturating_sub(RESERVED_FDS).max(100)
}

/// Totals at the previous call: joins, frames in, frames out, bytes out.
pub type Previous = Option<(Instant, [u64; 4])>;

/// What the network side keeps for `realtime.stats` and `/api/stats`.
pub struct Figures {
    /// When the counters started (`stats_reset`).
    pub started_at: SystemTime,
    pub previous: Mutex<Previous>,
    /// The latest snapshot the main thread published (`/api/stats`).
    published: RwLock<Option<Arc<str>>>,
}

impl Figures {
    pub fn new(started_at: SystemTime) -> Figures {
        Figures { started_at, previous: Default::default(), published: Default::default() }
    }

    pub fn publish(&self, json: &str) {
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(json));
    }

    pub fn published(&self) -> Option<Arc<str>> {
        self.published.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
