//! `realtime.jwt_jwks_url`: the signing keys of an auth server that rotates
//! them (Supabase Auth's `/auth/v1/.well-known/jwks.json`, Clerk, Auth0),
//! fetched when the worker starts, every ten minutes, and again when a
//! token names a `kid` no key has (at most once every five seconds). A
//! failed fetch keeps the last good set. Fetches run in a task of their own;
//! a request that found no key for its token waits for one (briefly), and
//! nothing else does.

use super::config::ServerConfig;
use crate::jwt::{Claims, FetchedKeys, JwtError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

const REFRESH: Duration = Duration::from_secs(600);
/// Between two fetches that tokens asked for.
const MIN_INTERVAL: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request with an unknown `kid` waits for a fetch.
const WAIT: Duration = Duration::from_secs(3);
/// A key set larger than this is refused.
const MAX_BYTES: usize = 1024 * 1024;

#[derive(Default)]
pub struct JwksUrl {
    pub keys: Arc<FetchedKeys>,
    asked: Notify,
    /// Counts finished fetches.
    fetches: watch::Sender<u64>,
}

impl JwksUrl {
    /// Asks for a fetch; true if one finished within [`WAIT`].
    async fn refreshed(&self) -> bool {
        let mut fetches = self.fetches.subscribe();
        fetches.borrow_and_update();
        self.asked.notify_one();
        matches!(tokio::time::timeout(WAIT, fetches.changed()).await, Ok(Ok(())))
    }

    /// The URL changed: fetch from the new one now.
    pub fn url_changed(&self) {
        self.asked.notify_one();
    }
}

/// `verify`, and when no key fits and a key set URL is set, again after a fetch.
pub async fn verify(config: &ServerConfig, jwks: &JwksUrl, token: &str) -> Result<Claims, JwtError> {
    // The fetched keys are shared by every verifier: the same one sees them.
    let first = config.verifier.verify(token, super::auth::unix_now());
    if matches!(first, Err(JwtError::NoKey)) && config.jwks_url.is_some() && jwks.refreshed().await {
        return config.verifier.verify(token, super::auth::unix_now());
    }
    first
}

/// Fetches the keys from the URL `url` names (read afresh each time) while
/// the worker runs.
pub async fn run(jwks: &JwksUrl, url: impl Fn() -> Option<String>) {
    let client = match reqwest::Client::builder().timeout(FETCH_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return crate::log_warning!("realtime: realtime.jwt_jwks_url: cannot make an HTTP client: {e}"),
    };
    let (mut failing, mut kids) = (false, Vec::new());
    loop {
        let url = url();
        let started = Instant::now();
        match &url {
            None => {
                let _ = jwks.keys.replace(r#"{"keys": []}"#);
            }
            Some(url) => match fetch(&client, url).await.and_then(|text| jwks.keys.replace(&text)) {
                Ok(count) => {
                    if failing {
                        crate::log_warning!("realtime: realtime.jwt_jwks_url: fetched again, {count} keys");
                    }
                    let now = jwks.keys.kids();
                    if now != kids {
                        crate::log_info!("realtime: realtime.jwt_jwks_url: {count} signing keys (kid {now:?})");
                        kids = now;
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        crate::log_warning!(
                            "realtime: realtime.jwt_jwks_url: cannot fetch {url}: {e}; keeping the keys fetched before"
                        );
                    }
                    failing = true;
                }
            },
        }
        jwks.fetches.send_modify(|n| *n += 1);
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = jwks.asked.notified() => {
                tokio::time::sleep(MIN_INTERVAL.saturating_sub(started.elapsed())).await;
            }
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            return Err(format!("larger than {MAX_BYTES} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| "not UTF-8".to_owned())
}
