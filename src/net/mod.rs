//! The network side: HTTP and WebSocket on a tokio runtime whose threads are
//! created with every signal blocked. Nothing here calls Postgres; what needs
//! the database goes to the worker's main thread through the bridge.

mod admission;
mod auth;
mod channel;
mod config;
mod connection;
pub mod hub;
mod inspector;
mod join;
mod jwks_url;
pub mod limits;
mod listen;
mod metrics;
pub mod presence;
mod pressure;
mod probes;
mod read_cache;
mod relay;
mod relay_tls;
mod remote_presence;
mod rest;
mod session;
mod stats;
mod tls;

pub use config::ServerConfig;

use crate::bridge::gap::lsn_text;
use crate::bridge::queue::CallError;
use crate::bridge::stats::MainFigures;
use crate::bridge::{Batch, Bridge, Budget, DbBroadcast, Decoded, Network, Settings, Share, Stats};
use crate::protocol::{Body, Broadcast, Vsn};
use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, Request, State, ws::WebSocketUpgrade};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hub::{ChangeFrames, Hub, TopicKey, Wakeups};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Largest frame a client may send (Supabase allows 5 MB).
const MAX_FRAME: usize = 5_000_000;
const READ_BUFFER: usize = 512;
/// Descriptors left to Postgres itself (max_files_per_process is 1000 by
/// default) and to connections not yet upgraded.
const RESERVED_FDS: usize = 1100 + admission::MAX_PENDING;
/// Queued frames are written together up to this much, then flushed.
const WRITE_BUFFER: usize = 16 * 1024;
/// How long a stopping worker spends fanning out what it was handed.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

pub struct Shared {
    pub hub: Hub,
    pub bridge: Bridge,
    pub budget: Arc<Budget>,
    config: RwLock<Arc<ServerConfig>>,
    /// Batches handed over and not yet fanned out.
    pending_batches: AtomicUsize,
    /// `end_lsn` of the newest batch fanned out.
    delivered_lsn: AtomicU64,
    /// Sockets the process can hold while Postgres keeps files to open.
    max_sockets: usize,
    /// Sockets whose tasks are still running (until their last frame is written).
    pub open_sockets: Arc<AtomicUsize>,
    /// HTTP connections not (yet) upgraded to a WebSocket.
    admission: Arc<admission::Admission>,
    /// When the counters of `realtime.stats` started (`stats_reset`).
    pub started_at: std::time::SystemTime,
    /// Keys from `realtime.jwt_jwks_url`, and their fetches.
    pub jwks: jwks_url::JwksUrl,
    /// The worker is stopping: no new sockets, and `/health` says so.
    stopping: AtomicBool,
    /// Database messages flow (the decoder holds the slot).
    pub replication_ready: AtomicBool,
    /// Supabase's tenant-wide counters.
    pub rates: limits::ServerRates,
    /// Recent private joins' read checks.
    pub read_cache: read_cache::ReadCache,
    /// What `/metrics` tells.
    pub metrics: metrics::Metrics,
    stats_previous: std::sync::Mutex<stats::Previous>,
    /// Client broadcasts for the other nodes ([`relay`]), and their bytes.
    relay: mpsc::Sender<String>,
    relay_bytes: AtomicUsize,
    /// On a hot standby: the connection to the primary ([`relay`]).
    primary: relay::Primary,
    /// What the other nodes' channels track.
    remote_presence: remote_presence::RemotePresence,
    /// This node heard a node it did not know: it asks every node for what
    /// it tracks ([`relay::keep_alive`]).
    presence_ask: AtomicBool,
    /// Another node asked (or a new epoch began): this node sends what it
    /// tracks, at the next tick.
    presence_asked: AtomicBool,
    /// Commit → send over the last minute.
    commit_to_send: std::sync::Mutex<crate::bridge::latency::Window>,
    /// The latest snapshot the main thread published (`/api/stats`).
    published_stats: RwLock<Option<Arc<str>>>,
}

impl Shared {
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks the main thread; on a hot standby, permission checks (whose
    /// probes write) go to the primary instead.
    pub fn request<T>(
        self: &Arc<Self>,
        share: &Share,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> crate::bridge::Request,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, CallError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = make(tx);
        match self.config().bus.as_ref().and_then(|b| b.primary_conninfo.clone()) {
            Some(conninfo)
                if matches!(
                    request,
                    crate::bridge::Request::ReadPermissions { .. } | crate::bridge::Request::WritePermission { .. }
                ) =>
            {
                let room = self.primary.checks.clone().try_acquire_owned().map_err(|_| CallError::Busy)?;
                let shared = self.clone();
                tokio::spawn(async move {
                    relay::check(shared, conninfo, request).await;
                    drop(room);
                });
            }
            _ => self.bridge.send(share, request)?,
        }
        Ok(rx)
    }

    pub async fn call<T>(
        self: &Arc<Self>,
        share: &Share,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> crate::bridge::Request,
    ) -> Result<T, CallError> {
        self.request(share, make)?.await.map_err(|_| CallError::Gone)
    }
}

/// The main thread's handle on the network side.
pub struct ServerHandle {
    shared: Arc<Shared>,
    decoded: mpsc::UnboundedSender<(Batch, Instant)>,
    stop: watch::Sender<bool>,
    stopped: std::sync::mpsc::Receiver<()>,
}

impl Network for ServerHandle {
    fn deliver(&self, batch: Batch) {
        self.shared.pending_batches.fetch_add(1, Ordering::Relaxed);
        // Unbounded in items, bounded in bytes: every batch carries its charge
        // and the main thread stops decoding when the budget is spent.
        let _ = self.decoded.send((batch, Instant::now()));
    }

    fn delivered_lsn(&self) -> u64 {
        self.shared.delivered_lsn.load(Ordering::Acquire)
    }

    fn pending_batches(&self) -> usize {
        self.shared.pending_batches.load(Ordering::Relaxed)
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
        *self.shared.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        warnings
    }

    fn disconnect_all(&self, code: u16, reason: &str) {
        self.shared.hub.close_all(code, reason);
    }

    fn set_replication_ready(&self, ready: bool) {
        self.shared.replication_ready.store(ready, Ordering::Relaxed);
    }

    fn new_epoch(&self, system_identifier: u64, timeline: u32) {
        let message = format!("New epoch: timeline {timeline}; messages committed before it may have been missed");
        let epoch = json!({"system_identifier": system_identifier.to_string(), "timeline": timeline});
        self.shared.hub.system_to_all(&message, "epoch", &epoch);
        // Relays in flight may have been lost: send everything tracked again.
        self.shared.presence_asked.store(true, Ordering::Relaxed);
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
        *self.shared.published_stats.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(json));
        self.shared.metrics.main_figures(main);
    }

    fn shutdown(&self, code: u16, reason: &str) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN;
        while self.pending_batches() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shared.hub.close_all(code, reason);
        let _ = self.stop.send(true);
        let _ = self.stopped.recv_timeout(Duration::from_secs(3));
    }
}

/// Starts the network thread. Listener errors are retried there, never fatal.
pub fn spawn(settings: &Settings, bridge: Bridge, budget: Arc<Budget>) -> (Box<dyn Network>, Vec<String>) {
    let jwks = jwks_url::JwksUrl::default();
    let config = ServerConfig::new(settings, &jwks.keys);
    let warnings = config.warnings.clone();
    crate::log_info!("realtime: listening on {}", config.listen_description());
    let grace = config.restart_grace;
    let (relay, relay_rx) = mpsc::channel(relay::QUEUE);
    let shared = Arc::new(Shared {
        started_at: std::time::SystemTime::now(),
        jwks,
        relay,
        relay_bytes: AtomicUsize::new(0),
        primary: relay::Primary::default(),
        remote_presence: Default::default(),
        presence_ask: AtomicBool::new(false),
        presence_asked: AtomicBool::new(false),
        hub: Hub::default(),
        bridge,
        budget,
        config: RwLock::new(Arc::new(config)),
        pending_batches: AtomicUsize::new(0),
        delivered_lsn: AtomicU64::new(0),
        max_sockets: socket_budget(),
        open_sockets: Arc::new(AtomicUsize::new(0)),
        admission: admission::Admission::new(admission::MAX_PENDING, admission::MAX_PENDING_PER_ADDRESS),
        stopping: AtomicBool::new(false),
        replication_ready: AtomicBool::new(false),
        rates: limits::ServerRates::new(&settings.limits),
        read_cache: read_cache::ReadCache::default(),
        metrics: metrics::Metrics::default(),
        stats_previous: Default::default(),
        commit_to_send: std::sync::Mutex::new(crate::bridge::latency::Window::new(Instant::now())),
        published_stats: RwLock::new(None),
    });
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
                        tokio::spawn(deliver_decoded(thread_shared.clone(), decoded_rx, grace));
                        tokio::spawn(pressure::watch(thread_shared.clone()));
                        tokio::spawn(relay::run(thread_shared.clone(), relay_rx));
                        tokio::spawn(relay::keep_alive(thread_shared.clone()));
                        tokio::spawn(jwks_url::run(thread_shared.clone()));
                        let rates = thread_shared.clone();
                        tokio::spawn(async move { rates.rates.run(&rates.metrics).await });
                        serve(thread_shared, stop_rx).await
                    }),
                    Err(e) => crate::log_warning!("realtime: cannot start the network runtime: {e}"),
                }
                let _ = stopped_tx.send(());
            })
            .expect("spawning the network thread")
    });
    (Box::new(ServerHandle { shared, decoded, stop, stopped }), warnings)
}

/// Sends what was decoded from the database, in commit order. A starting
/// worker first waits `grace`, so clients that were connected before a restart
/// have rejoined and receive what was committed while it was down.
async fn deliver_decoded(shared: Arc<Shared>, mut decoded: mpsc::UnboundedReceiver<(Batch, Instant)>, grace: Duration) {
    tokio::time::sleep(grace).await;
    while let Some(first) = decoded.recv().await {
        // The batches waiting now go out together: each socket's writer is
        // woken once for all of them, and writes them in one go.
        let mut wakeups = Wakeups::default();
        let mut frames = ChangeFrames::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            fan_out(&shared, batch, &mut frames, &mut wakeups);
            taken += 1;
            if taken < COALESCED_BATCHES {
                next = decoded.try_recv().ok();
            }
        }
        wakeups.wake();
    }
}

/// Batches fanned out before the writers are woken.
const COALESCED_BATCHES: usize = 64;

fn fan_out(shared: &Shared, (batch, handed_over): (Batch, Instant), frames: &mut ChangeFrames, wakeups: &mut Wakeups) {
    let Batch { items, end_lsn, commits, mut charge } = batch;
    shared.metrics.database_messages.inc_by(items.len() as u64);
    for item in items {
        match &item {
            Decoded::Broadcast(row, position) => deliver_row(shared, row, *position, wakeups),
            Decoded::Change(d) => shared.hub.send_change(d.channel, &d.ids, &d.data, frames, wakeups),
            Decoded::Relayed(row, position) => relay::deliver(shared, row, *position, wakeups),
        }
        // Now in the sockets' queues, counted there.
        charge.release(item.bytes());
    }
    if end_lsn != 0 {
        shared.delivered_lsn.fetch_max(end_lsn, Ordering::Release);
    }
    shared.pending_batches.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.fan_out_seconds.observe(handed_over.elapsed().as_secs_f64());
    stats::sent(shared, &commits);
}

fn deliver_row(shared: &Shared, row: &str, position: u64, wakeups: &mut Wakeups) {
    let (message, payload) = match DbBroadcast::parse(row) {
        Ok((m, p)) => match Body::from_row_text(m.binary, p) {
            Ok(payload) => (m, payload),
            Err(e) => return crate::log_warning!("realtime: skipping database broadcast {}: {e}", m.id),
        },
        Err(e) => return crate::log_warning!("realtime: skipping an undecodable database broadcast: {e}"),
    };
    if payload.wire_len() > shared.config().max_payload_bytes {
        return crate::log_warning!(
            "realtime: skipping database broadcast {}: payload larger than realtime.max_payload_size",
            message.id
        );
    }
    let key = TopicKey { private: message.private, topic: format!("realtime:{}", message.topic) };
    let mut meta = json!({"id": message.id});
    if position != 0 {
        meta["position"] = lsn_text(position).into();
    }
    let broadcast = Broadcast { event: message.event, payload };
    let delivered = shared.hub.broadcast_deferred(&key, &broadcast, Some(&meta), position, None, wakeups);
    shared.rates.events.add(delivered as u64);
}

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

async fn serve(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let app = Router::new().fallback(route).with_state(shared.clone());
    let mut servers = Vec::new();
    for addr in shared.config().listen.clone() {
        servers.push(tokio::spawn(listen::listen(addr, shared.clone(), app.clone(), stop.clone())));
    }
    let _ = stop.wait_for(|s| *s).await;
    // Upgraded sockets outlive the HTTP servers: wait (briefly) until every
    // connection has written its close frame, then drop whatever is left.
    let closed = async {
        futures_util::future::join_all(servers).await;
        while shared.open_sockets.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
}

/// Collapses `//` so a prefix given with a trailing slash still matches.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

const PREFIXES: [&str; 2] = ["/realtime/v1", ""];

async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = normalize(request.uri().path());
    let method = request.method().clone();
    let suffix = PREFIXES.iter().find_map(|p| path.strip_prefix(p).filter(|s| s.starts_with('/')));
    match (method, suffix) {
        (Method::GET, Some("/websocket" | "/socket/websocket")) => websocket(shared, request).await,
        (Method::GET, Some("/health")) if shared.stopping.load(Ordering::Relaxed) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "stopping"}))).into_response()
        }
        (Method::GET, Some("/health")) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        (Method::GET, Some("/metrics")) => metrics_page(&shared, request.headers()),
        (Method::GET, Some("/inspector")) => inspector::page(),
        (Method::GET, Some("/api/stats")) => inspector::stats(&shared, request.headers()),
        (Method::GET, Some("/healthcheck")) => probes::healthcheck(),
        (Method::GET, Some("/api/ping")) => probes::ping(),
        (Method::GET, Some(s)) if probes::is_tenant_health(s) => probes::tenant_health(&shared, request.headers()),
        (Method::OPTIONS, Some(s)) if s == "/api/broadcast" || s.starts_with("/api/broadcast/") => {
            rest::preflight(request.headers())
        }
        (Method::POST, Some("/api/broadcast")) => {
            rest::cors_open(rest::rate_limited(shared.clone(), rest::batch(shared, request)).await)
        }
        (Method::POST, Some(s)) if s.starts_with("/api/broadcast/") => {
            // Topic and event come from the raw path so an encoded `/` stays in the topic.
            let raw = request.uri().path().to_owned();
            rest::cors_open(rest::rate_limited(shared.clone(), rest::single(shared, raw, request)).await)
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not found"}))).into_response(),
    }
}

/// `/metrics`: 404 unless `realtime.metrics_token` is set, 401 without it
/// as a bearer token.
fn metrics_page(shared: &Shared, headers: &HeaderMap) -> Response {
    let Some(token) = shared.config().metrics_token.clone() else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    if !metrics::authorized(header(headers, "authorization").as_deref(), &token) {
        return json_error(StatusCode::UNAUTHORIZED, "/metrics needs Authorization: Bearer <realtime.metrics_token>");
    }
    let m = &shared.metrics;
    m.sockets.set(shared.open_sockets.load(Ordering::Relaxed) as i64);
    m.channels.set(shared.hub.topic_count() as i64);
    m.queued_bytes.set(shared.budget.used() as i64);
    m.max_memory_bytes.set(shared.budget.limit() as i64);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}

/// The query string's parameters; a malformed one yields none (the request
/// is then refused for what it lacks, e.g. `API key is missing`).
fn query_params(request: &Request) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(request.uri()).map(|q| q.0).unwrap_or_default()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The token of `Authorization: Bearer <token>` (either case of "bearer").
fn bearer(headers: &HeaderMap) -> Option<String> {
    let h = header(headers, "authorization")?;
    h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).map(str::to_owned)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

async fn websocket(shared: Arc<Shared>, request: Request) -> Response {
    let params = query_params(&request);
    let vsn = match Vsn::from_query(params.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    if shared.stopping.load(Ordering::Relaxed) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "RealtimeRestarting: Realtime is restarting");
    }
    if shared.open_sockets.load(Ordering::Relaxed) >= shared.max_sockets {
        shared.metrics.tripped("ConnectionRateLimitReached");
        crate::log_warning!(
            "realtime: refusing a connection: {} sockets open, the most the open-file limit allows",
            shared.max_sockets
        );
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "ConnectionRateLimitReached: Too many connected users");
    }
    let users = shared.rates.users.load(Ordering::Relaxed);
    if users >= shared.config().limits.max_concurrent_users {
        shared.metrics.tripped("ConnectionRateLimitReached");
        return json_error(StatusCode::TOO_MANY_REQUESTS, "Too many connected users");
    }
    let (apikey, x_headers) = {
        let headers = request.headers();
        // As Supabase: the x-api-key header (where its gateway puts the JWT) first.
        let apikey = [header(headers, "x-api-key"), params.get("apikey").cloned(), header(headers, "apikey")]
            .into_iter()
            .flatten()
            .find(|k| !k.is_empty());
        (apikey, auth::x_headers(headers))
    };
    let Some(apikey) = apikey else {
        return json_error(StatusCode::UNAUTHORIZED, "API key is missing");
    };
    let claims = match jwks_url::verify(&shared, &apikey).await {
        Ok(claims) => claims,
        // Supabase's connect error says only that much.
        Err(crate::jwt::JwtError::Expired { .. }) => return json_error(StatusCode::UNAUTHORIZED, "Token has expired"),
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.message()),
    };
    let auth = auth::Auth::new(apikey, claims, x_headers);
    // Supabase's levels are info, warning and error (its default).
    let asked = connection::Asked { vsn, log_joins: params.get("log_level").is_some_and(|l| l == "info") };
    let remote = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let upgrade = match WebSocketUpgrade::from_request(request, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        // The default 128 KiB read buffer per socket would dominate an idle
        // connection's memory; it grows for larger frames.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| connection::serve(socket, shared, asked, auth, remote))
}
