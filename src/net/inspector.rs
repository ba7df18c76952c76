//! `/inspector`: a page compiled into the library that speaks the protocol
//! from the browser (join, watch, send, track), and `/api/stats`, the worker's
//! latest `realtime.stats` snapshot for a service_role key.

use super::{Shared, auth, bearer, json_error};
use axum::http::{HeaderMap, StatusCode, header as h};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("inspector.html");
/// Only this host: the page's own script and styles, and its sockets.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'";

pub fn page() -> Response {
    (
        [(h::CONTENT_TYPE, "text/html; charset=utf-8"), (h::CONTENT_SECURITY_POLICY, CSP)],
        [(h::X_FRAME_OPTIONS, "DENY")],
        PAGE,
    )
        .into_response()
}

pub fn stats(shared: &Shared, headers: &HeaderMap) -> Response {
    let Some(token) = bearer(headers) else {
        return json_error(StatusCode::UNAUTHORIZED, "/api/stats needs Authorization: Bearer <service_role key>");
    };
    match shared.config().verifier.verify(&token, auth::unix_now()) {
        Ok(claims) if claims.role == "service_role" => {}
        Ok(_) => return json_error(StatusCode::FORBIDDEN, "/api/stats is for service_role keys"),
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.message()),
    }
    let latest = shared.published_stats.read().unwrap_or_else(|p| p.into_inner()).clone();
    match latest {
        Some(json) => ([(h::CONTENT_TYPE, "application/json")], json.to_string()).into_response(),
        None => json_error(StatusCode::SERVICE_UNAVAILABLE, "no figures yet: the worker publishes them every second"),
    }
}
