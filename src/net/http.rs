//! The HTTP side: the routes (under `/realtime/v1` and at the root, as
//! Supabase's clients and probes ask for them), the WebSocket upgrade, and
//! serving each listen address until the worker stops.

use super::request_parts::{header, json_error, query_params};
use super::shared::Shared;
use super::{auth, connection, inspector, jwks_url, listen, metrics, probes, rest};
use crate::protocol::Vsn;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, OriginalUri, Request, State, ws::WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Largest frame a client may send (Supabase allows 5 MB).
const MAX_FRAME: usize = 5_000_000;
const READ_BUFFER: usize = 512;
/// Queued frames are written together up to this much, then flushed.
const WRITE_BUFFER: usize = 16 * 1024;

/// Every route, under Supabase's prefix and at the root; anything else
/// (another path, another method) is a JSON 404.
fn router(shared: Arc<Shared>) -> Router {
    let routes = || {
        Router::new()
            .route("/websocket", get(websocket))
            .route("/socket/websocket", get(websocket))
            .route("/health", get(health))
            .route("/metrics", get(metrics_page))
            .route("/inspector", get(|| async { inspector::page() }))
            .route(
                "/api/stats",
                get(|State(s): State<Arc<Shared>>, h: HeaderMap| async move { inspector::stats(&s, &h) }),
            )
            .route("/healthcheck", get(|| async { probes::healthcheck() }))
            .route("/api/ping", get(|| async { probes::ping() }))
            .route("/api/tenants/{id}/health", get(tenant_health))
            .route("/api/broadcast", axum::routing::post(batch).options(preflight))
            .route("/api/broadcast/{*rest}", axum::routing::post(single).options(preflight))
    };
    Router::new()
        .nest("/realtime/v1", routes())
        .merge(routes())
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not found")
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.sockets.stopping.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "stopping"}))).into_response();
    }
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn tenant_health(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    probes::tenant_health(&shared, &headers)
}

async fn preflight(headers: HeaderMap) -> Response {
    rest::preflight(&headers)
}

async fn batch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    rest::cors_open(rest::rate_limited(shared.clone(), rest::batch(shared, request)).await)
}

async fn single(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // Topic and event come from the path as sent, so an encoded `/` stays in the topic.
    let raw = match request.extensions().get::<OriginalUri>() {
        Some(OriginalUri(uri)) => uri.path().to_owned(),
        None => request.uri().path().to_owned(),
    };
    rest::cors_open(rest::rate_limited(shared.clone(), rest::single(shared, raw, request)).await)
}

pub async fn serve(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let app = router(shared.clone());
    let mut servers = Vec::new();
    for addr in shared.config().listen.clone() {
        servers.push(tokio::spawn(listen::listen(addr, shared.clone(), app.clone(), stop.clone())));
    }
    let _ = stop.wait_for(|s| *s).await;
    // Upgraded sockets outlive the HTTP servers: wait (briefly) until every
    // connection has written its close frame, then drop whatever is left.
    let closed = async {
        futures_util::future::join_all(servers).await;
        while shared.sockets.open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
}

/// `/metrics`: 404 unless `realtime.metrics_token` is set, 401 without it
/// as a bearer token.
async fn metrics_page(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(token) = shared.config().settings.metrics_token.clone() else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    if !metrics::authorized(header(&headers, "authorization").as_deref(), &token) {
        return json_error(StatusCode::UNAUTHORIZED, "/metrics needs Authorization: Bearer <realtime.metrics_token>");
    }
    let m = &shared.metrics;
    m.sockets.set(shared.sockets.open.load(Ordering::Relaxed) as i64);
    m.channels.set(shared.hub.topic_count() as i64);
    m.queued_bytes.set(shared.budget.used() as i64);
    m.max_memory_bytes.set(shared.budget.limit() as i64);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}

async fn websocket(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let params = query_params(&request);
    let vsn = match Vsn::from_query(params.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    if shared.sockets.stopping.load(Ordering::Relaxed) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "RealtimeRestarting: Realtime is restarting");
    }
    if shared.sockets.open.load(Ordering::Relaxed) >= shared.sockets.max {
        shared.metrics.tripped("ConnectionRateLimitReached");
        crate::log_warning!(
            "realtime: refusing a connection: {} sockets open, the most the open-file limit allows",
            shared.sockets.max
        );
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "ConnectionRateLimitReached: Too many connected users");
    }
    let users = shared.rates.users.load(Ordering::Relaxed);
    if users >= shared.config().settings.limits.max_concurrent_users {
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
    let claims = match jwks_url::verify(&shared.config(), &shared.jwks, &apikey).await {
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
