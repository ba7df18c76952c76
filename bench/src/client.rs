//! A lean Phoenix V2 client for load: one task reads each socket and records
//! delivery latency from the send time carried in the payload (`t`, µs since
//! the Unix epoch, on this machine's clock).

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

pub type Ws = WebSocketStream<TcpStream>;
pub type Sink = SplitSink<Ws, Message>;

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Latencies (µs) and a delivery count shared by every reader of a run.
#[derive(Clone)]
pub struct Recorder {
    pub latency: Arc<Mutex<Histogram<u64>>>,
    pub delivered: Arc<AtomicU64>,
    pub last_at: Arc<AtomicU64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).unwrap())),
            delivered: Arc::new(AtomicU64::new(0)),
            last_at: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Recorder {
    pub fn count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn record(&self, sent_us: i64) {
        let now = now_us();
        let _ = self.latency.lock().unwrap().record((now - sent_us).max(1) as u64);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_at.store(now as u64, Ordering::Relaxed);
    }

    /// (p50, p95, p99) in ms.
    pub fn percentiles(&self) -> (f64, f64, f64) {
        let h = self.latency.lock().unwrap();
        let ms = |q| h.value_at_quantile(q) as f64 / 1000.0;
        (ms(0.5), ms(0.95), ms(0.99))
    }

    pub fn p95_ms(&self) -> f64 {
        self.percentiles().1
    }

    /// Waits until `expected` deliveries or `limit` passes.
    pub async fn wait_for(&self, expected: u64, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        while self.count() < expected && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Connects from `source` (several loopback addresses give more than one
/// port range's worth of connections).
pub async fn connect(url: &str, server: SocketAddr, source: IpAddr) -> std::io::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = client_async(url, stream).await.map_err(std::io::Error::other)?;
    Ok(ws)
}

/// Joins and waits for the reply. Returns the reply's status.
pub async fn join(ws: &mut Ws, topic: &str, config: Value, token: Option<&str>) -> String {
    let mut payload = json!({"config": config});
    if let Some(t) = token {
        payload["access_token"] = t.into();
    }
    let frame = json!(["1", "1", topic, "phx_join", payload]).to_string();
    if ws.send(Message::Text(frame.into())).await.is_err() {
        return "send failed".into();
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if v[3] == "phx_reply" && v[1] == "1" {
                    return v[4]["status"].as_str().unwrap_or("?").to_owned();
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => return "no reply".into(),
        }
    }
}

/// The send time of a delivered message, wherever the payload carries it.
fn sent_time(payload: &Value) -> Option<i64> {
    [&payload["payload"]["t"], &payload["payload"]["record"]["t"], &payload["data"]["record"]["t"], &payload["t"]]
        .into_iter()
        .find_map(Value::as_i64)
}

/// Reads a socket until it closes, recording every message that carries `t`.
pub fn spawn_reader(mut stream: SplitStream<Ws>, recorder: Recorder) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let sent = match message {
                Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).ok().and_then(|v| sent_time(&v[4])),
                // Kind 4: u8 kind, topic/event/meta lengths, encoding, then fields.
                Message::Binary(b) if b.len() > 5 && b[0] == 4 => {
                    let skip = 5 + b[1] as usize + b[2] as usize + b[3] as usize;
                    serde_json::from_slice::<Value>(&b[skip.min(b.len())..])
                        .ok()
                        .and_then(|body| body["t"].as_i64().or_else(|| body["record"]["t"].as_i64()))
                }
                _ => None,
            };
            if let Some(sent) = sent {
                recorder.record(sent);
            }
        }
    })
}

/// A broadcast push with a send time and `pad` bytes of padding.
pub fn broadcast_frame(topic: &str, event: &str, pad: &str) -> Message {
    let payload = json!({"type": "broadcast", "event": event, "payload": {"t": now_us(), "pad": pad}});
    Message::Text(json!(["1", null, topic, "broadcast", payload]).to_string().into())
}

pub async fn send(sink: &mut Sink, frame: Message) -> bool {
    sink.send(frame).await.is_ok()
}
