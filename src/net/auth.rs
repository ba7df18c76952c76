//! A verified token, shared: the socket's and every channel joined with the
//! same token hold one copy, and the claims are written as JSON once, not
//! for every request to the worker.

use crate::bridge::AuthContext;
use crate::jwt::Claims;
use serde_json::Value;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[derive(Debug)]
pub struct Auth {
    pub token: String,
    pub claims: Claims,
    /// Who is asking, as RLS policies see it.
    pub ctx: AuthContext,
}

impl Auth {
    pub fn new(token: String, claims: Claims) -> Arc<Auth> {
        let ctx = AuthContext {
            role: claims.role.clone(),
            claims_json: Value::Object(claims.all.clone()).to_string(),
            sub: claims.sub.clone(),
        };
        Arc::new(Auth { token, claims, ctx })
    }

    pub fn exp(&self) -> i64 {
        self.claims.exp
    }
}
