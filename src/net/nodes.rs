//! The network side's state for the other nodes: the queue of client
//! broadcasts to relay, the connection to the primary (on a hot standby),
//! and what the other nodes' channels track. `relay` does the work.

use super::relay_tls;
use super::remote_presence::RemotePresence;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Client broadcasts waiting for the primary, at most; past it they reach
/// this node's clients only (counted in `realtime_bus_relay_dropped_total`).
pub const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connection, checks and relays fail at once for this long.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Permission checks a standby may have waiting on the primary at once.
const CHECKS_IN_FLIGHT: usize = 256;

/// The network side's part of the bus between nodes.
pub struct Nodes {
    /// Client broadcasts for the other nodes, and their bytes.
    pub queue: mpsc::Sender<String>,
    pub queued_bytes: std::sync::atomic::AtomicUsize,
    /// On a hot standby: the connection to the primary.
    pub primary: Primary,
    /// What the other nodes' channels track.
    pub remote_presence: RemotePresence,
    /// This node heard a node it did not know: it asks every node for what
    /// it tracks (`relay::keep_alive`).
    pub presence_ask: std::sync::atomic::AtomicBool,
    /// Another node asked (or a new epoch began): this node sends what it
    /// tracks, at the next tick.
    pub presence_asked: std::sync::atomic::AtomicBool,
}

impl Nodes {
    /// The nodes' state, and the queue `relay::run` sends from.
    pub fn new() -> (Nodes, mpsc::Receiver<String>) {
        let (queue, queued) = mpsc::channel(QUEUE);
        let nodes = Nodes {
            queue,
            queued_bytes: Default::default(),
            primary: Primary::default(),
            remote_presence: Default::default(),
            presence_ask: Default::default(),
            presence_asked: Default::default(),
        };
        (nodes, queued)
    }
}

/// One connection to the primary, shared by relays and checks, opened on
/// first use and again after it broke or `realtime.primary_conninfo` changed;
/// after a failed attempt, asked again only a second later (or at once with
/// another conninfo).
pub struct Primary {
    connection: tokio::sync::Mutex<Connection>,
    /// Room for permission checks waiting on the primary.
    pub checks: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct Connection {
    client: Option<(String, Arc<tokio_postgres::Client>)>,
    /// When connecting with which conninfo failed, and why.
    failed: Option<(std::time::Instant, String, String)>,
}

impl Default for Primary {
    fn default() -> Primary {
        Primary { connection: Default::default(), checks: Arc::new(tokio::sync::Semaphore::new(CHECKS_IN_FLIGHT)) }
    }
}

impl Primary {
    pub async fn client(&self, conninfo: &str) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut held = self.connection.lock().await;
        if let Some((used, client)) = held.client.as_ref()
            && used == conninfo
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        if let Some((at, used, e)) = &held.failed
            && at.elapsed() < RECONNECT_AFTER
            && used == conninfo
        {
            return Err(e.clone());
        }
        let connected = match relay_tls::connect(conninfo) {
            Ok(c) => tokio::time::timeout(CONNECT_TIMEOUT, c.config.connect(c.tls))
                .await
                .map(|r| r.map_err(|e| with_causes(&e))),
            Err(e) => Ok(Err(e)),
        };
        let connected = match connected {
            Ok(Ok(connected)) => connected,
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => "connecting timed out".to_owned(),
                };
                crate::log_warning!(
                    "realtime: this standby cannot connect to the primary (realtime.primary_conninfo): {e}"
                );
                held.failed = Some((std::time::Instant::now(), conninfo.to_owned(), e.clone()));
                return Err(e);
            }
        };
        let (client, connection) = connected;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let client = Arc::new(client);
        *held = Connection { client: Some((conninfo.to_owned(), client.clone())), failed: None };
        Ok(client)
    }
}

/// An error and its causes (tokio-postgres leaves the TLS handshake's out).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}
