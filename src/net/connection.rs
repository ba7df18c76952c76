//! One WebSocket connection: frames are handled strictly in order, replies and
//! pushes go through the connection's bounded queue, and every channel it
//! joined is left when it ends.

use super::Shared;
use super::channel::{JoinConfig, bindings_with_ids};
use super::hub::CloseReason;
use super::hub::{ConnHandle, QueueMemory, SubId, Subscriber, TopicKey};
use super::limits::RateWindow;
use crate::bridge::{AuthContext, Extension, ReadPermissions, Request};
use crate::jwt::Claims;
use crate::protocol::{self, Body, Broadcast, Inbound, InboundPayload, Vsn};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Clients heartbeat every 25 s; a silent socket is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames taken from the queue for one write.
const WRITE_BATCH: usize = 256;
/// How long a closing connection spends writing what is queued before the close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
const PRESENCE_CALLS: u32 = 5;
const PRESENCE_WINDOW: Duration = Duration::from_secs(30);

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn auth_context(claims: &Claims) -> AuthContext {
    AuthContext {
        role: claims.role.clone(),
        claims_json: Value::Object(claims.all.clone()).to_string(),
        sub: claims.sub.clone(),
    }
}

/// A joined channel.
struct Channel {
    key: TopicKey,
    /// The topic without `realtime:`, as policies and system messages name it.
    sub_topic: String,
    join_ref: Option<String>,
    id: SubId,
    config: JoinConfig,
    presence_key: String,
    token: String,
    claims: Claims,
    read: ReadPermissions,
    /// Write permissions, checked on first use (private channels).
    broadcast_write: Option<bool>,
    presence_write: Option<bool>,
    presence_calls: RateWindow,
    /// Has `postgres_changes` bindings the worker routes changes to.
    changes: bool,
}

/// Writes what is queued for the connection, several frames per flush; on a
/// close, what is still queued (but for a slow consumer, who is cut off),
/// then the close frame.
async fn write_queued(
    conn: Arc<ConnHandle>,
    mut sink: SplitSink<WebSocket, Message>,
    mut close: watch::Receiver<Option<CloseReason>>,
) {
    loop {
        let closing = close.borrow_and_update().clone();
        if let Some(c) = closing {
            if c.code != 1008 {
                let drain = async {
                    loop {
                        let batch = conn.take(WRITE_BATCH);
                        if batch.is_empty() {
                            break;
                        }
                        for q in batch {
                            if sink.feed(q.message).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = sink.flush().await;
                };
                let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
            }
            let frame = CloseFrame { code: c.code, reason: c.reason.into() };
            let _ = sink.send(Message::Close(Some(frame))).await;
            break;
        }
        let batch = conn.take(WRITE_BATCH);
        if batch.is_empty() {
            tokio::select! {
                _ = conn.queued() => {}
                changed = close.changed() => if changed.is_err() { break },
            }
            continue;
        }
        let mut written = true;
        let mut bytes = 0;
        for q in batch {
            bytes += q.bytes();
            written = written && sink.feed(q.message).await.is_ok();
        }
        if !written || sink.flush().await.is_err() {
            break;
        }
        conn.wrote(bytes);
    }
    conn.stop_queueing();
    let _ = sink.close().await;
}

pub async fn serve(socket: WebSocket, shared: Arc<Shared>, vsn: Vsn, apikey: String) {
    shared.open_sockets.fetch_add(1, Ordering::Relaxed);
    let memory = QueueMemory { budget: shared.budget.clone(), sockets: shared.open_sockets.clone() };
    let (conn, mut close_rx) = ConnHandle::new(shared.hub.next_id(), vsn, memory);
    shared.hub.add_connection(conn.clone());
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_queued(conn.clone(), sink, close_rx.clone()));

    let mut session = Session { shared: shared.clone(), conn: conn.clone(), apikey, channels: HashMap::new() };
    loop {
        let expiry = session.next_expiry();
        tokio::select! {
            frame = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => match frame {
                Err(_) => { conn.close(1000, "idle timeout"); break }
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(Message::Text(text)))) => {
                    match protocol::decode_text(vsn, text.as_str()) {
                        Ok(inbound) => Box::pin(session.handle(inbound)).await,
                        Err(e) => { conn.close(1007, &e.to_string()); break }
                    }
                }
                Ok(Some(Ok(Message::Binary(bytes)))) => {
                    match protocol::decode_binary(vsn, &bytes) {
                        Ok(inbound) => Box::pin(session.handle(inbound)).await,
                        Err(e) => { conn.close(1007, &e.to_string()); break }
                    }
                }
                Ok(Some(Ok(_))) => {} // ping/pong: answered by the library
            },
            _ = close_rx.changed() => break,
            _ = tokio::time::sleep_until(expiry.into()) => session.expire_tokens(),
        }
    }
    session.leave_all();
    shared.hub.remove_connection(conn.id);
    // The client went away or closed: the writer answers with a close frame
    // (a first reason, given earlier, stands).
    conn.close(1000, "");
    drop(session);
    let cut_off = close_rx.borrow().as_ref().is_some_and(|c| c.code == 1008);
    drop(conn);
    // A slow consumer is cut off at once: its writer may be stuck on a full
    // socket, holding frames. Anyone else's writer gets to finish its queue.
    if cut_off {
        writer.abort();
    }
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_DRAIN * 2, &mut writer).await.is_err() {
        writer.abort();
    }
    // Counted until its last frame (a close frame at shutdown) is written.
    shared.open_sockets.fetch_sub(1, Ordering::Relaxed);
}

struct Session {
    shared: Arc<Shared>,
    conn: Arc<ConnHandle>,
    apikey: String,
    channels: HashMap<String, Channel>,
}

impl Session {
    fn send(&self, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, event: &str, payload: &Value) {
        self.conn.send_frame(protocol::encode(self.conn.vsn, join_ref, msg_ref, topic, event, payload));
    }

    fn reply(&self, msg: &Inbound, status: &str, response: Value) {
        let payload = protocol::reply(status, response);
        self.send(msg.join_ref.as_deref(), msg.msg_ref.as_deref(), &msg.topic, "phx_reply", &payload);
    }

    /// A `system` message, then (for errors) `phx_close`: the channel ends.
    fn system_error_and_close(&mut self, topic: &str, message: &str) {
        let Some(channel) = self.channels.remove(topic) else {
            return;
        };
        let payload =
            json!({"extension": "system", "status": "error", "message": message, "channel": channel.sub_topic});
        self.send(channel.join_ref.as_deref(), None, topic, "system", &payload);
        self.send(channel.join_ref.as_deref(), channel.join_ref.as_deref(), topic, "phx_close", &json!({}));
        self.end(&channel);
    }

    async fn handle(&mut self, msg: Inbound) {
        if msg.topic == "phoenix" {
            if msg.event == "heartbeat" {
                self.reply(&msg, "ok", json!({}));
            }
            return;
        }
        if msg.event == "phx_join" {
            return self.join(msg).await;
        }
        if !self.channels.contains_key(&msg.topic) {
            return self.reply(&msg, "error", json!({"reason": "unmatched topic"}));
        }
        match msg.event.as_str() {
            "phx_leave" => self.leave(&msg),
            "broadcast" => self.broadcast(msg).await,
            "presence" => self.presence(&msg).await,
            "access_token" => self.access_token(&msg).await,
            other => {
                eprintln!("realtime: connection {}: ignoring unknown event {other:?} on {}", self.conn.id, msg.topic)
            }
        }
    }

    fn token_for(&self, requested: Option<&str>) -> String {
        match requested {
            // `sb_` keys are API keys, not JWTs: the socket's apikey stands in.
            Some(t) if !t.is_empty() && !t.starts_with("sb_") => t.to_owned(),
            _ => self.apikey.clone(),
        }
    }

    async fn join(&mut self, msg: Inbound) {
        match self.try_join(&msg).await {
            Ok(()) => {}
            Err(JoinError::Unmatched) => self.reply(&msg, "error", json!({"reason": "unmatched topic"})),
            Err(JoinError::Refused(reason)) => {
                // Refused clients rejoin forever; slow the loop down, within
                // the clients' 10 s join timeout.
                tokio::time::sleep(self.shared.config().join_error_delay).await;
                self.reply(&msg, "error", json!({"reason": reason}));
            }
        }
    }

    async fn try_join(&mut self, msg: &Inbound) -> Result<(), JoinError> {
        let config = self.shared.config();
        let Some(sub_topic) = msg.topic.strip_prefix("realtime:") else {
            return Err(JoinError::Unmatched);
        };
        if sub_topic.is_empty() {
            return Err(refused("TopicNameRequired: You must provide a topic name"));
        }
        let InboundPayload::Json(payload) = &msg.payload else {
            return Err(refused("InvalidJoinPayload: the join payload must be JSON"));
        };
        let join = JoinConfig::parse(payload).map_err(JoinError::Refused)?;
        if !self.channels.contains_key(&msg.topic) && self.channels.len() >= config.max_channels_per_client {
            return Err(refused("ChannelRateLimitReached: Too many channels"));
        }
        let token = self.token_for(join.access_token.as_deref());
        let claims = config.verifier.verify(&token, unix_now()).map_err(|e| refused(&e.to_string()))?;
        if config.private_only && !join.private {
            return Err(refused("PrivateOnly: This project only allows private channels"));
        }
        if join.replay.is_some() && !join.private {
            return Err(refused("UnableToReplayMessages: Replay is not allowed for public channels"));
        }
        let read = if join.private {
            let read = self.read_permissions(&claims, sub_topic, join.presence_enabled).await?;
            if !read.broadcast && !read.presence {
                return Err(unauthorized(sub_topic));
            }
            read
        } else {
            ReadPermissions { broadcast: true, presence: true }
        };

        // A second join of the same topic (a client's rejoin) replaces the first.
        if let Some(old) = self.channels.remove(&msg.topic) {
            self.end(&old);
        }
        let key = TopicKey { private: join.private, topic: msg.topic.clone() };
        let id = self.shared.hub.next_id();
        let presence_key =
            if join.presence_key.is_empty() { uuid::Uuid::new_v4().to_string() } else { join.presence_key.clone() };
        let subscriber = Subscriber {
            conn: self.conn.clone(),
            broadcast: read.broadcast,
            presence: join.presence_enabled && read.presence,
        };
        self.shared.hub.subscribe(&key, id, subscriber);
        let bindings = bindings_with_ids(&join.postgres_changes);
        self.reply(msg, "ok", json!({"postgres_changes": bindings}));
        if join.presence_enabled {
            let state = self.shared.hub.presence_state(&key);
            self.send(msg.join_ref.as_deref(), None, &msg.topic, "presence_state", &state);
        }
        let replay = join.replay;
        let mut channel = Channel {
            key,
            sub_topic: sub_topic.to_owned(),
            join_ref: msg.join_ref.clone(),
            id,
            config: join,
            presence_key,
            token,
            claims,
            read,
            broadcast_write: None,
            presence_write: None,
            presence_calls: RateWindow::new(PRESENCE_CALLS, PRESENCE_WINDOW),
            changes: false,
        };
        if !bindings.is_empty() {
            self.subscribe_changes(&mut channel, &bindings).await;
        }
        if let Some(replay) = replay {
            self.replay(&channel, replay.since_ms, replay.limit).await;
        }
        self.channels.insert(msg.topic.clone(), channel);
        Ok(())
    }

    async fn read_permissions(
        &self,
        claims: &Claims,
        sub_topic: &str,
        presence: bool,
    ) -> Result<ReadPermissions, JoinError> {
        let ctx = auth_context(claims);
        let topic = sub_topic.to_owned();
        let answer = self
            .shared
            .bridge
            .call(|reply| Request::ReadPermissions { ctx, topic, presence, reply })
            .await
            .map_err(|e| refused(&format!("UnableToSetPolicies: {e}")))?;
        answer.map_err(|e| {
            // A broken policy denies this join only.
            eprintln!("realtime: RlsPolicyError: read check for topic {sub_topic:?} failed: {e}");
            unauthorized(sub_topic)
        })
    }

    async fn replay(&self, channel: &Channel, since_ms: i64, limit: i64) {
        let ctx = auth_context(&channel.claims);
        let topic = channel.sub_topic.clone();
        let stored = self.shared.bridge.call(|reply| Request::Replay { ctx, topic, since_ms, limit, reply }).await;
        let messages = match stored {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                return eprintln!("realtime: replay of {:?} failed: {e}", channel.sub_topic);
            }
            Err(e) => return eprintln!("realtime: replay of {:?} failed: {e}", channel.sub_topic),
        };
        for m in messages {
            let broadcast = Broadcast { event: m.event, payload: Body::json(&m.payload) };
            let meta = json!({"id": m.id, "replayed": true});
            if let Some(frame) = protocol::encode_broadcast(self.conn.vsn, &channel.key.topic, &broadcast, Some(&meta))
            {
                self.conn.send_frame(frame);
            }
        }
    }

    fn leave(&mut self, msg: &Inbound) {
        if let Some(channel) = self.channels.remove(&msg.topic) {
            self.end(&channel);
            self.reply(msg, "ok", json!({}));
            let join_ref = channel.join_ref.as_deref();
            self.send(join_ref, join_ref, &msg.topic, "phx_close", &json!({}));
        }
    }

    /// Everything a channel holds elsewhere goes with it.
    fn end(&self, channel: &Channel) {
        self.shared.hub.unsubscribe(&channel.key, channel.id);
        if channel.changes {
            self.shared.hub.remove_changes(channel.id);
            self.shared.bridge.tell(Request::UnsubscribeChanges { channel: channel.id });
        }
    }

    /// Starts `postgres_changes` for a joined channel; the `system` message
    /// says whether it worked. The channel stays open either way.
    async fn subscribe_changes(&self, channel: &mut Channel, bindings: &[Value]) {
        let bindings: Vec<(u32, Value)> =
            bindings.iter().map(|b| (b["id"].as_u64().unwrap_or_default() as u32, b.clone())).collect();
        let (id, ctx) = (channel.id, auth_context(&channel.claims));
        self.shared.hub.add_changes(id, self.conn.clone(), &channel.key.topic);
        let answer =
            self.shared.bridge.call(|reply| Request::SubscribeChanges { channel: id, ctx, bindings, reply }).await;
        let (status, message) = match answer {
            Ok(Ok(())) => {
                channel.changes = true;
                ("ok", "Subscribed to PostgreSQL".to_owned())
            }
            Ok(Err(message)) => ("error", message),
            Err(e) => ("error", format!("Unable to subscribe to changes: {e}")),
        };
        if !channel.changes {
            self.shared.hub.remove_changes(id);
        }
        let payload = json!({"extension": "postgres_changes", "status": status, "message": message, "channel": channel.sub_topic});
        self.send(channel.join_ref.as_deref(), None, &channel.key.topic, "system", &payload);
    }

    fn leave_all(&mut self) {
        let channels: Vec<Channel> = self.channels.drain().map(|(_, c)| c).collect();
        for channel in &channels {
            self.end(channel);
        }
    }

    /// May this channel write for `extension`? Asked once, then remembered.
    async fn may_write(&mut self, topic: &str, extension: Extension) -> bool {
        let Some(channel) = self.channels.get(topic) else {
            return false;
        };
        if !channel.key.private {
            return true;
        }
        let cached = match extension {
            Extension::Broadcast => channel.broadcast_write,
            Extension::Presence => channel.presence_write,
        };
        if let Some(allowed) = cached {
            return allowed;
        }
        let ctx = auth_context(&channel.claims);
        let sub_topic = channel.sub_topic.clone();
        let topic_arg = sub_topic.clone();
        let answer =
            self.shared.bridge.call(|reply| Request::WritePermission { ctx, topic: topic_arg, extension, reply }).await;
        let allowed = match answer {
            Ok(Ok(allowed)) => allowed,
            Ok(Err(e)) => {
                eprintln!("realtime: RlsPolicyError: write check for topic {sub_topic:?} failed: {e}");
                false
            }
            // Busy or shutting down: deny this once, ask again next time.
            Err(_) => return false,
        };
        if let Some(channel) = self.channels.get_mut(topic) {
            match extension {
                Extension::Broadcast => channel.broadcast_write = Some(allowed),
                Extension::Presence => channel.presence_write = Some(allowed),
            }
        }
        allowed
    }

    async fn broadcast(&mut self, msg: Inbound) {
        let broadcast = match &msg.payload {
            InboundPayload::Broadcast(b) => b.clone(),
            InboundPayload::Json(v) => Broadcast {
                event: v.get("event").and_then(Value::as_str).unwrap_or_default().to_owned(),
                payload: Body::json(v.get("payload").unwrap_or(&Value::Null)),
            },
        };
        let Some(channel) = self.channels.get(&msg.topic) else {
            return;
        };
        let ack = channel.config.broadcast_ack;
        if broadcast.payload.wire_len() > self.shared.config().max_payload_bytes {
            if ack {
                self.reply(&msg, "error", json!({"error": "payload_size_exceeded"}));
            }
            return;
        }
        if !self.may_write(&msg.topic, Extension::Broadcast).await {
            return; // denied writes are dropped without a reply, as Supabase does
        }
        let Some(channel) = self.channels.get(&msg.topic) else {
            return;
        };
        let except = if channel.config.broadcast_self { None } else { Some(channel.id) };
        self.shared.hub.broadcast(&channel.key, &broadcast, None, except);
        if ack {
            self.reply(&msg, "ok", json!({}));
        }
    }

    async fn presence(&mut self, msg: &Inbound) {
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return;
        };
        if !channel.presence_calls.allow(Instant::now()) {
            return self.system_error_and_close(&msg.topic, "Client presence rate limit exceeded");
        }
        let InboundPayload::Json(payload) = &msg.payload else {
            return self.reply(msg, "error", json!({}));
        };
        let event = payload.get("event").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        if !self.may_write(&msg.topic, Extension::Presence).await {
            return self.reply(msg, "error", json!({}));
        }
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return;
        };
        match event.as_str() {
            "track" => {
                let Some(meta) = payload.get("payload").and_then(Value::as_object) else {
                    return self.reply(msg, "error", json!({"reason": "Presence track payload must be a map"}));
                };
                if Body::json(&Value::Object(meta.clone())).wire_len() > self.shared.config().max_payload_bytes {
                    return self.system_error_and_close(&msg.topic, "Track message size exceeded");
                }
                if !channel.config.presence_enabled {
                    // The first track turns presence on for this channel.
                    channel.config.presence_enabled = true;
                    self.shared.hub.update(&channel.key, channel.id, channel.read.broadcast, channel.read.presence);
                }
                // The reply goes first: the diff follows it to every member, this one too.
                let (key, id, presence_key, meta) =
                    (channel.key.clone(), channel.id, channel.presence_key.clone(), meta.clone());
                self.reply(msg, "ok", json!({}));
                self.shared.hub.track(&key, id, &presence_key, meta);
            }
            "untrack" => {
                let (key, id) = (channel.key.clone(), channel.id);
                self.reply(msg, "ok", json!({}));
                self.shared.hub.untrack(&key, id);
            }
            other => {
                eprintln!("realtime: UnknownPresenceEvent {other:?} on {}", msg.topic);
                self.reply(msg, "error", json!({}));
            }
        }
    }

    /// A refreshed token: verified, then (private channels) read permission is
    /// checked again under the new claims. No reply, as in Supabase.
    async fn access_token(&mut self, msg: &Inbound) {
        let InboundPayload::Json(payload) = &msg.payload else {
            return;
        };
        let token = match payload.get("access_token") {
            None | Some(Value::Null) => return,
            Some(Value::String(t)) if t.starts_with("sb_") => return,
            Some(Value::String(t)) => t.clone(),
            Some(other) => other.to_string(),
        };
        let Some(channel) = self.channels.get(&msg.topic) else {
            return;
        };
        if channel.token == token {
            return;
        }
        let claims = match self.shared.config().verifier.verify(&token, unix_now()) {
            Ok(c) => c,
            Err(e) => return self.system_error_and_close(&msg.topic, &e.message()),
        };
        let (private, sub_topic, presence_enabled) =
            (channel.key.private, channel.sub_topic.clone(), channel.config.presence_enabled);
        let read = if private {
            match self.read_permissions(&claims, &sub_topic, presence_enabled).await {
                Ok(r) if r.broadcast || r.presence => r,
                _ => {
                    let message = format!("You no longer have permission to read from this Channel topic: {sub_topic}");
                    return self.system_error_and_close(&msg.topic, &message);
                }
            }
        } else {
            ReadPermissions { broadcast: true, presence: true }
        };
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return;
        };
        channel.token = token;
        channel.claims = claims;
        channel.read = read;
        if channel.changes {
            let ctx = auth_context(&channel.claims);
            self.shared.bridge.tell(Request::ChangesAuth { channel: channel.id, ctx });
        }
        channel.broadcast_write = None;
        channel.presence_write = None;
        self.shared.hub.update(
            &channel.key,
            channel.id,
            read.broadcast,
            channel.config.presence_enabled && read.presence,
        );
    }

    fn next_expiry(&self) -> Instant {
        let now = unix_now();
        let soonest = self.channels.values().map(|c| c.claims.exp).min();
        match soonest {
            Some(exp) => Instant::now() + Duration::from_secs((exp - now).max(0) as u64),
            None => Instant::now() + Duration::from_secs(24 * 3600),
        }
    }

    /// Channels whose token has expired get a system error and are closed.
    fn expire_tokens(&mut self) {
        let now = unix_now();
        let expired: Vec<(String, i64)> =
            self.channels.iter().filter(|(_, c)| c.claims.exp <= now).map(|(t, c)| (t.clone(), c.claims.exp)).collect();
        for (topic, exp) in expired {
            self.system_error_and_close(&topic, &format!("Token has expired {} seconds ago", now - exp));
        }
    }
}

enum JoinError {
    /// Not a `realtime:` topic.
    Unmatched,
    /// A join error reason, `<Code>: <message>`.
    Refused(String),
}

fn refused(reason: &str) -> JoinError {
    JoinError::Refused(reason.to_owned())
}

fn unauthorized(sub_topic: &str) -> JoinError {
    JoinError::Refused(format!(
        "Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}"
    ))
}
