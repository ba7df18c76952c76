//! `/inspector`: a page compiled into the library that speaks the protocol
//! from the browser (join, watch, send, track), and `/api/stats`, the worker's
//! latest `realtime.stats` snapshot for a service_role key.

use super::auth;
use super::request_parts::{bearer, json_error};
use super::shared::Shared;
use axum::http::{HeaderMap, StatusCode, header as h};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("inspector.html");

/// Only the page's own script and style (by hash: no other inline code
/// runs, should anything ever be injected into the page) and sockets to
/// this origin (`'self'` covers `ws:`/`wss:` to it).
fn csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
            inline_hash("script"),
            inline_hash("style")
        )
    })
}

/// `sha256-…` of the page's one `<tag>` element's text, as CSP hashes it.
fn inline_hash(tag: &str) -> String {
    use base64::Engine;
    let open = format!("<{tag}>");
    let start = PAGE.find(&open).map(|i| i + open.len()).expect("the page has the element");
    let end = start + PAGE[start..].find(&format!("</{tag}>")).expect("the element is closed");
    let digest = ring::digest::digest(&ring::digest::SHA256, &PAGE.as_bytes()[start..end]);
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

pub fn page() -> Response {
    (
        [(h::CONTENT_TYPE, "text/html; charset=utf-8"), (h::CONTENT_SECURITY_POLICY, csp())],
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
    let latest = shared.figures.published();
    match latest {
        Some(json) => ([(h::CONTENT_TYPE, "application/json")], json.to_string()).into_response(),
        None => json_error(StatusCode::SERVICE_UNAVAILABLE, "no figures yet: the worker publishes them every second"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_policy_allows_no_inline_code_but_the_page_s_own() {
        let csp = super::csp();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("script-src 'sha256-") && csp.contains("style-src 'sha256-"), "{csp}");
        assert!(csp.contains("connect-src 'self';") && !csp.contains("ws:"), "{csp}");
    }
}
