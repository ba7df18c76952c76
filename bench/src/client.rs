//! A lean Phoenix V2 client for load: one task reads each socket and records
//! delivery latency from the send time carried in the payload (`t`, µs since
//! the Unix epoch, on this machine's clock).

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[cfg(test)]
mod tests {
    #[test]
    fn send_times_are_found_in_any_frame() {
        assert_eq!(super::sent_time(br#"[null,null,"t","broadcast",{"payload":{"t":123,"pad":"x"}}]"#), Some(123));
        assert_eq!(super::sent_time(br#"{"topic" : "x", "payload" : {"record" : {"id":1,"t" : 45}}}"#), Some(45));
        assert_eq!(super::sent_time(br#"{"columns":[{"name":"t"}],"record":{"t":7}}"#), Some(7));
        assert_eq!(super::sent_time(b"{}"), None);
    }
}
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

/// The send time of a delivered message: the number after the first `"t"`
/// key. A scan, not a parse, so the load generator's cost per message stays
/// far below the servers' (every payload this suite sends has one `"t"` key).
pub fn sent_time(frame: &[u8]) -> Option<i64> {
    let mut from = 0;
    while let Some(found) = frame[from..].windows(3).position(|w| w == b"\"t\"") {
        from += found + 3;
        let rest = &frame[from..];
        let Some(colon) = rest.iter().position(|b| !b.is_ascii_whitespace()) else { break };
        let Some(rest) = rest[colon..].strip_prefix(b":") else { continue };
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let digits = rest[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        return std::str::from_utf8(&rest[start..start + digits]).ok()?.parse().ok();
    }
    None
}

/// Reads a socket until it closes, recording every message that carries `t`.
pub fn spawn_reader(mut stream: SplitStream<Ws>, recorder: Recorder) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let sent = match &message {
                Message::Text(t) => sent_time(t.as_bytes()),
                // Kind 4 broadcasts carry the payload after their header.
                Message::Binary(b) if b.len() > 5 && b[0] == 4 => sent_time(b),
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
