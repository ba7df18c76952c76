//! The health probes Supabase's Realtime answers, for load balancers and
//! compose files written for it: `GET /healthcheck`, `GET /api/ping`, and
//! `GET /api/tenants/:tenant_id/health` (for any id: this worker is one
//! tenant), each also under `/realtime/v1`. `/health` is this worker's own.

use super::auth;
use super::request_parts::bearer;
use super::shared::Shared;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::atomic::Ordering;

pub fn healthcheck() -> Response {
    (StatusCode::OK, "ok").into_response()
}

pub fn ping() -> Response {
    axum::Json(json!({"message": "Success"})).into_response()
}

/// `/api/tenants/<id>/health`, one id segment.
/// Behind a bearer token, as Supabase's (its API JWT; here any token or key
/// this worker accepts): 403 with no body otherwise. `healthy` while the
/// worker serves and is not stopping; `replication_connected` once database
/// messages flow; `connected_cluster` the sockets with a joined channel.
pub fn tenant_health(shared: &Shared, headers: &HeaderMap) -> Response {
    let verified =
        bearer(headers).is_some_and(|token| shared.config().verifier.verify(&token, auth::unix_now()).is_ok());
    if !verified {
        return StatusCode::FORBIDDEN.into_response();
    }
    let healthy = !shared.sockets.stopping.load(Ordering::Relaxed);
    axum::Json(json!({"data": {
        "healthy": healthy,
        "db_connected": healthy,
        "replication_connected": shared.delivery.replication_ready.load(Ordering::Relaxed),
        "connected_cluster": shared.rates.users.load(Ordering::Relaxed),
        "region": null,
        "node": "realtime",
    }}))
    .into_response()
}
