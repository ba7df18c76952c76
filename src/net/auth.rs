//! A verified token, shared: the socket's and every channel joined with the
//! same token hold one copy, and the claims are written as JSON once, not
//! for every request to the worker.

use crate::bridge::AuthContext;
use crate::jwt::Claims;
use serde_json::Value;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A request's `x-…` headers as the JSON object Supabase gives policies in
/// `request.headers` (names lowercase, the last of a repeated one wins);
/// None when there are none.
pub fn x_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    let mut object = serde_json::Map::new();
    for (name, value) in headers {
        if name.as_str().starts_with("x-")
            && let Ok(value) = value.to_str()
        {
            object.insert(name.as_str().to_owned(), Value::String(value.to_owned()));
        }
    }
    (!object.is_empty()).then(|| Value::Object(object).to_string())
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The claims are kept as their JSON text only: a parsed map costs about
/// 600 bytes a socket, and nothing reads it after the token is checked.
#[derive(Debug)]
pub struct Auth {
    pub token: String,
    exp: i64,
    /// Who is asking, as RLS policies see it.
    pub ctx: AuthContext,
}

impl Auth {
    /// `headers`: the request's `x-` headers, from [`x_headers`].
    pub fn new(token: String, claims: Claims, headers: Option<String>) -> Arc<Auth> {
        let Claims { role, exp, sub, all } = claims;
        let ctx = AuthContext { role, claims_json: Value::Object(all).to_string(), sub, headers };
        Arc::new(Auth { token, exp, ctx })
    }

    pub fn exp(&self) -> i64 {
        self.exp
    }
}
