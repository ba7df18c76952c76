//! What the handlers read from a request (query parameters, headers, a
//! bearer token) and the JSON error they answer with.

use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use headers::HeaderMapExt;
use headers::authorization::{Authorization, Bearer};
use serde_json::json;
use std::collections::HashMap;

/// The query string's parameters; a malformed one yields none (the request
/// is then refused for what it lacks, e.g. `API key is missing`).
pub fn query_params(request: &Request) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(request.uri()).map(|q| q.0).unwrap_or_default()
}

pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.typed_get::<Authorization<Bearer>>().map(|a| a.token().to_owned())
}

pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// Collapses `//` in the path before routing, so a prefix given with a
/// trailing slash still matches; the path as sent stays the request's
/// [`OriginalUri`] (a topic in it is taken from there).
pub fn collapse_slashes<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    if !request.uri().path().contains("//") {
        return request;
    }
    let uri = request.uri().clone();
    let mut path = String::with_capacity(uri.path().len());
    for c in uri.path().chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    if let Ok(collapsed) = Uri::builder().path_and_query(path_and_query).build() {
        request.extensions_mut().insert(OriginalUri(uri));
        *request.uri_mut() = collapsed;
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_in_any_case_of_the_scheme() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc"] {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value.parse().unwrap());
            assert_eq!(bearer(&headers).as_deref(), Some("abc"), "{value}");
        }
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&basic), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn doubled_slashes_collapse_and_the_path_as_sent_is_kept() {
        let request = collapse_slashes(axum::http::Request::new(()));
        assert!(request.extensions().get::<OriginalUri>().is_none(), "nothing to collapse");
        let sent = "/realtime/v1//api/broadcast/a%2F%2Fb/events/e?x=1";
        let request = collapse_slashes(axum::http::Request::builder().uri(sent).body(()).unwrap());
        assert_eq!(request.uri(), "/realtime/v1/api/broadcast/a%2F%2Fb/events/e?x=1");
        assert_eq!(request.extensions().get::<OriginalUri>().unwrap().0, sent);
    }
}
