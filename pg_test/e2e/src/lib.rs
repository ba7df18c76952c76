//! Helpers for end-to-end tests against the cluster `make test` starts
//! (`PG_PORT`, `WS_PORT`): a raw Phoenix client speaking V1 or V2, JWTs signed
//! with the development secret, and psql.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The development API keys `make run` maps in `realtime.api_keys` (scripts/common.sh).
pub const PUBLISHABLE_KEY: &str = "sb_publishable_realtime_dev_0123456789";
pub const SECRET_KEY: &str = "sb_secret_realtime_dev_0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a database message may take to arrive.
pub const DB_WAIT: Duration = Duration::from_secs(10);

pub fn pg_port() -> String {
    std::env::var("PG_PORT").unwrap_or_else(|_| "54399".into())
}

pub fn ws_port() -> String {
    std::env::var("WS_PORT").unwrap_or_else(|_| "4099".into())
}

pub fn http_base() -> String {
    format!("http://127.0.0.1:{}", ws_port())
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An HS256 token with these claims merged over `role`, `exp` (+1 h) and `iat`.
pub fn jwt_with(role: &str, extra: Value) -> String {
    let mut claims = json!({"role": role, "exp": now() + 3600, "iat": now()});
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

pub fn jwt(role: &str) -> String {
    jwt_with(role, json!({}))
}

/// Runs SQL as the superuser; None when psql fails (its stderr is returned).
pub fn try_psql(sql: &str) -> Result<String, String> {
    try_psql_at(&pg_port(), sql)
}

/// `try_psql` against the server on this port.
pub fn try_psql_at(port: &str, sql: &str) -> Result<String, String> {
    try_psql_in(port, "postgres", sql)
}

/// `try_psql` in database `db` of the server on this port.
pub fn try_psql_in(port: &str, db: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", port])
        .args(["-U", "postgres", "-d", db, "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs SQL as the superuser; returns psql's unaligned output.
pub fn psql(sql: &str) -> String {
    try_psql(sql).unwrap_or_else(|e| panic!("psql failed on {sql}: {e}"))
}

/// The test cluster's server log (`$RUN_DIR/postgres.log`), read from a mark on.
pub struct ServerLog {
    path: std::path::PathBuf,
    from: u64,
}

impl ServerLog {
    /// Marks the log's current end.
    pub fn mark() -> ServerLog {
        let dir = std::env::var("RUN_DIR").unwrap_or_else(|_| {
            let major = std::env::var("PG_VERSION").unwrap_or_else(|_| "15".into());
            format!("{}/../../target/pg{major}/test-cluster", env!("CARGO_MANIFEST_DIR"))
        });
        ServerLog::mark_in(std::path::Path::new(&dir))
    }

    /// Marks the end of `dir/postgres.log` (a node of `scripts/nodes.sh`).
    pub fn mark_in(dir: &std::path::Path) -> ServerLog {
        let path = dir.join("postgres.log");
        let from = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        ServerLog { path, from }
    }

    /// What was logged since the mark.
    pub fn since(&self) -> String {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(self.from as usize..).unwrap_or_default()).into_owned()
    }
}

/// The realtime worker's pid, waiting up to 30 s for one.
pub fn worker_pid() -> String {
    for _ in 0..300 {
        if let Ok(pid) = try_psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'")
            && !pid.is_empty()
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no realtime worker within 30 s");
}

/// Waits until `/health` answers 200, for up to 30 s.
pub async fn wait_for_health() {
    for _ in 0..300 {
        if get("/health").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the worker did not come back within 30 s");
}

/// Ends the worker with `pg_terminate_backend` and waits for the next one to serve.
pub async fn restart_worker() {
    let pid = worker_pid();
    psql(&format!("SELECT pg_terminate_backend({pid})"));
    for _ in 0..300 {
        if worker_pid() != pid {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_for_health().await;
}

/// A unique topic name per call, so tests never share channels.
/// Runs `sql` (an `ALTER SYSTEM`), reloads the configuration and gives the
/// worker time to take it.
pub fn reload(sql: &str) {
    psql(sql);
    psql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(700));
}

/// A setting changed with `ALTER SYSTEM` for one test, reset when dropped
/// (a failing test leaves none behind).
pub struct SystemSetting(&'static str);

impl SystemSetting {
    pub fn set(name: &'static str, value: &str) -> SystemSetting {
        reload(&format!("ALTER SYSTEM SET {name} = '{}'", value.replace('\'', "''")));
        SystemSetting(name)
    }
}

impl Drop for SystemSetting {
    fn drop(&mut self) {
        reload(&format!("ALTER SYSTEM RESET {}", self.0));
    }
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

/// A received message, whatever its framing. Binary kind-4 broadcasts become
/// `broadcast` with `{type, event, payload, meta?}`, as realtime-js builds them;
/// `binary` is set for them and holds a binary payload's bytes.
#[derive(Debug, Clone)]
pub struct Msg {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
    pub binary: Option<Vec<u8>>,
}

pub struct Client {
    pub vsn: Vsn,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
}

pub fn ws_url(vsn: Vsn, apikey: &str) -> String {
    ws_url_at(&ws_port(), vsn, apikey)
}

/// `ws_url` for the worker listening on this port.
pub fn ws_url_at(port: &str, vsn: Vsn, apikey: &str) -> String {
    let v = if vsn == Vsn::V2 { "2.0.0" } else { "1.0.0" };
    format!("ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={apikey}&vsn={v}")
}

impl Client {
    pub async fn connect(vsn: Vsn, apikey: &str) -> Client {
        Self::connect_url(vsn, &ws_url(vsn, apikey)).await
    }

    pub async fn connect_url(vsn: Vsn, url: &str) -> Client {
        let (ws, _) = connect_async(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Client { vsn, ws, next_ref: 1 }
    }

    /// Connects to `url` sending these extra request headers.
    pub async fn connect_with_headers(vsn: Vsn, url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("a websocket URL");
        for (name, value) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (ws, _) = connect_async(request).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Client { vsn, ws, next_ref: 1 }
    }

    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    pub async fn push(
        &mut self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = match self.vsn {
            Vsn::V1 => {
                json!({"topic": topic, "event": event, "payload": payload, "ref": msg_ref, "join_ref": join_ref})
            }
            Vsn::V2 => json!([join_ref, msg_ref, topic, event, payload]),
        };
        self.send_raw(Message::Text(text.to_string().into())).await;
    }

    /// Joins and returns (join_ref, reply payload).
    pub async fn join(&mut self, topic: &str, payload: Value) -> (String, Value) {
        let r = self.make_ref();
        self.push(Some(&r), Some(&r), topic, "phx_join", payload).await;
        let reply = self.recv_event("phx_reply").await;
        assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()), "the reply carries the join's ref");
        (r, reply.payload)
    }

    /// Joins and asserts the reply is ok.
    pub async fn join_ok(&mut self, topic: &str, config: Value) -> String {
        let (jr, reply) = self.join(topic, json!({"config": config})).await;
        assert_eq!(reply["status"], "ok", "join of {topic} refused: {reply}");
        jr
    }

    /// The next message, or None after `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Msg> {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match next.ok()? {
                Message::Text(t) => return Some(decode_text(self.vsn, t.as_str())),
                Message::Binary(b) => return Some(decode_kind4(&b)),
                Message::Close(c) => {
                    return Some(Msg {
                        join_ref: None,
                        msg_ref: None,
                        topic: String::new(),
                        event: "socket_close".into(),
                        payload: close_json(c),
                        binary: None,
                    });
                }
                _ => continue,
            }
        }
    }

    /// Reads until the server ends the connection: the close frame's
    /// `{code, reason}`, or `{"code": null}` when it was cut off without one.
    /// None when it is still open after `wait`.
    pub async fn until_closed(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None | Some(Err(_))) => return Some(json!({"code": null})),
                Ok(Some(Ok(Message::Close(c)))) => return Some(close_json(c)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Msg {
        self.try_recv(WAIT).await.expect("a message within 5 s")
    }

    /// The next message whose event is `event`, skipping heartbeat replies.
    pub async fn recv_event(&mut self, event: &str) -> Msg {
        loop {
            let m = self.recv().await;
            if m.topic == "phoenix" {
                continue;
            }
            assert_eq!(m.event, event, "expected {event}, got {m:?}");
            return m;
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(m) = self.try_recv(wait).await {
            panic!("expected nothing, got {m:?}");
        }
    }
}

fn close_json(c: Option<CloseFrame>) -> Value {
    match c {
        Some(c) => json!({"code": u16::from(c.code), "reason": c.reason.as_str()}),
        None => json!({"code": null}),
    }
}

fn opt(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

pub fn decode_text(vsn: Vsn, t: &str) -> Msg {
    let v: Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("server sent invalid JSON {t}: {e}"));
    match vsn {
        Vsn::V1 => {
            assert!(v.get("ref").is_some(), "V1 messages always carry \"ref\": {t}");
            Msg {
                join_ref: opt(&v["join_ref"]),
                msg_ref: opt(&v["ref"]),
                topic: v["topic"].as_str().unwrap().into(),
                event: v["event"].as_str().unwrap().into(),
                payload: v["payload"].clone(),
                binary: None,
            }
        }
        Vsn::V2 => {
            let a = v.as_array().unwrap_or_else(|| panic!("V2 text frames are arrays: {t}"));
            assert_eq!(a.len(), 5, "{t}");
            Msg {
                join_ref: opt(&a[0]),
                msg_ref: opt(&a[1]),
                topic: a[2].as_str().unwrap().into(),
                event: a[3].as_str().unwrap().into(),
                payload: a[4].clone(),
                binary: None,
            }
        }
    }
}

/// Decodes a kind-4 frame exactly as realtime-js does.
pub fn decode_kind4(b: &[u8]) -> Msg {
    assert_eq!(b[0], 4, "the only binary kind a server may send is 4");
    let (t, e, m, enc) = (b[1] as usize, b[2] as usize, b[3] as usize, b[4]);
    let mut at = 5;
    let mut take = |n: usize| {
        let s = &b[at..at + n];
        at += n;
        s.to_vec()
    };
    let topic = String::from_utf8(take(t)).unwrap();
    let event = String::from_utf8(take(e)).unwrap();
    let meta = take(m);
    let body = b[at..].to_vec();
    let mut payload = json!({"type": "broadcast", "event": event});
    if !meta.is_empty() {
        payload["meta"] = serde_json::from_slice(&meta).unwrap();
    }
    let binary = if enc == 1 {
        payload["payload"] = serde_json::from_slice(&body).unwrap();
        None
    } else {
        Some(body)
    };
    Msg { join_ref: None, msg_ref: None, topic, event: "broadcast".into(), payload, binary }
}

/// Builds a kind-3 frame (a client's binary broadcast push), as realtime-js does.
pub fn kind3(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    json_body: Option<&Value>,
    bin: &[u8],
) -> Message {
    let (enc, body) = match json_body {
        Some(v) => (1u8, serde_json::to_vec(v).unwrap()),
        None => (0u8, bin.to_vec()),
    };
    let mut f = vec![3, join_ref.len() as u8, msg_ref.len() as u8, topic.len() as u8, event.len() as u8, 0, enc];
    for s in [join_ref, msg_ref, topic, event] {
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(&body);
    Message::Binary(f.into())
}

/// An HTTP answer: status (0 when nothing listens), headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn http(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    // A fresh connection per request: a pooled one the server is closing
    // (after answering a request early, without reading its body) would be
    // reused by a concurrent test and fail it with no answer.
    let client =
        CLIENT.get_or_init(|| reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client"));
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method, format!("{}{path}", http_base())).body(body.to_vec());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    match request.send().await {
        Ok(r) => {
            let (status, headers) = (r.status().as_u16(), r.headers().clone());
            Answer { status, headers, body: r.text().await.unwrap_or_default() }
        }
        Err(_) => Answer { status: 0, headers: Default::default(), body: String::new() },
    }
}

pub async fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let a = http("POST", path, headers, body).await;
    (a.status, a.body)
}

pub async fn get(path: &str) -> (u16, String) {
    let a = http("GET", path, &[], b"").await;
    (a.status, a.body)
}

/// A fresh table in the publication, readable by service_role (as Supabase's
/// default privileges would make it); returns its name.
pub fn published_table(columns: &str) -> String {
    let name = unique("pc").replace('-', "_");
    psql(&format!(
        "CREATE TABLE {name} ({columns}); ALTER PUBLICATION supabase_realtime ADD TABLE {name};
         GRANT SELECT ON {name} TO service_role;"
    ));
    name
}

/// Joins with these `postgres_changes` bindings; returns (join_ref, ids in order, system payload).
pub async fn subscribe_changes(c: &mut Client, topic: &str, bindings: Value) -> (String, Vec<u64>, Value) {
    let (jr, reply) = c.join(topic, json!({"config": {"postgres_changes": bindings}})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let ids =
        reply["response"]["postgres_changes"].as_array().unwrap().iter().map(|b| b["id"].as_u64().unwrap()).collect();
    let system = c.recv_event("system").await;
    assert_eq!(system.payload["extension"], "postgres_changes");
    assert_eq!(system.payload["channel"], topic.trim_start_matches("realtime:"));
    (jr, ids, system.payload)
}

pub async fn subscribed_changes(c: &mut Client, topic: &str, bindings: Value) -> Vec<u64> {
    let (_, ids, system) = subscribe_changes(c, topic, bindings).await;
    assert_eq!(system["status"], "ok", "{system}");
    assert_eq!(system["message"], "Subscribed to PostgreSQL");
    ids
}

pub async fn next_change(c: &mut Client) -> Value {
    loop {
        let m = c.try_recv(DB_WAIT).await.expect("a postgres_changes message");
        if m.event == "postgres_changes" {
            assert_eq!((m.join_ref, m.msg_ref), (None, None));
            return m.payload;
        }
    }
}
