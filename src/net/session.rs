//! One socket's channels and the frames that act on them. Frames are handled
//! in order; joins (`join.rs`) and the follow-ups of a join run beside them as
//! pending futures the connection's loop drives.

use super::auth::{Auth, unix_now};
use super::channel::{JoinConfig, Outcome};
use super::checks;
use super::hub::{ConnHandle, SubId, TopicKey};
use super::limits::{Change, ClientPresence, RateCounter};
use super::shared::Shared;
use crate::bridge::{Extension, ReadPermissions, Request, Share};
use crate::protocol::{self, Body, Broadcast, Inbound, InboundPayload};
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests one socket may have waiting for the worker.
pub const SOCKET_REQUESTS: usize = 16;

/// A joined channel.
pub struct Channel {
    pub key: TopicKey,
    /// The topic without `realtime:`, as policies and system messages name it.
    pub sub_topic: String,
    pub join_ref: Option<String>,
    pub id: SubId,
    pub config: JoinConfig,
    /// Chosen at the first track (`config.presence.key`, or a new UUID).
    pub presence_key: Option<String>,
    pub auth: Arc<Auth>,
    pub read: ReadPermissions,
    /// Write permissions, checked on first use (private channels).
    pub broadcast_write: Option<bool>,
    pub presence_write: Option<bool>,
    pub presence_calls: ClientPresence,
    /// Has `postgres_changes` bindings the worker routes changes to.
    pub changes: bool,
}

/// What a pending future of the session came to.
pub enum Done {
    Join(u64, Outcome),
    /// The channel (if it is still this one) ends with a system error.
    Close {
        topic: String,
        id: SubId,
        message: String,
    },
    Nothing,
}

pub type PendingFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

pub struct Session {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnHandle>,
    /// The socket's verified token (`apikey`).
    pub auth: Arc<Auth>,
    /// This socket's share of the worker's request queue.
    pub share: Share,
    /// Boxed: a map's buckets hold a few entries' room, and most sockets
    /// join one channel.
    pub channels: HashMap<String, Box<Channel>>,
    /// Topics with a join under way, and the number of the latest.
    pub joining: HashMap<String, u64>,
    pub generation: u64,
    pub pending: FuturesUnordered<PendingFuture>,
    /// This socket's rates (`realtime.max_*_per_second`).
    pub joins: RateCounter,
    events: RateCounter,
    bytes: RateCounter,
    /// Counted among `realtime.max_concurrent_users` (since its first join).
    pub counted_user: bool,
    /// `log_level=info` on the connect URL, as Supabase reads it: this
    /// socket's joins and their answers reach the log (at info, which
    /// `realtime.log_level` may still leave out).
    pub log_joins: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnHandle>, auth: Arc<Auth>) -> Session {
        Session {
            shared,
            conn,
            auth,
            share: Share::new(SOCKET_REQUESTS),
            channels: HashMap::new(),
            joining: HashMap::new(),
            generation: 0,
            pending: FuturesUnordered::new(),
            joins: RateCounter::new(None, Instant::now()),
            events: RateCounter::new(None, Instant::now()),
            bytes: RateCounter::new(None, Instant::now()),
            counted_user: false,
            log_joins: false,
        }
    }

    /// The join under way on `topic` is over. An empty map gives its room
    /// back: idle sockets are most sockets.
    pub fn forget_join(&mut self, topic: &str) {
        self.joining.remove(topic);
        if self.joining.is_empty() {
            self.joining = HashMap::new();
        }
    }

    /// A frame of `len` bytes came in.
    pub fn received(&mut self, len: usize) {
        self.bytes.add(Instant::now(), len as u64);
        self.shared.metrics.frames_in.inc();
        self.shared.metrics.bytes_in.inc_by(len as u64);
    }

    /// A client's message on a channel, counted for this socket and in
    /// total. Over a limit, the channel ends as in Supabase; `false` then.
    fn count_event(&mut self, topic: &str) -> bool {
        let (now, limits) = (Instant::now(), self.shared.config().settings.limits.clone());
        self.shared.rates.events.add(1);
        self.events.set_limit(Some(f64::from(limits.max_events_per_second)));
        self.bytes.set_limit(Some(f64::from(limits.max_bytes_per_second)));
        if self.events.add(now, 1) == Some(Change::Tripped) {
            self.shared.metrics.tripped("MessagePerSecondRateLimitReached");
            crate::log_warning!(
                "realtime: MessagePerSecondRateLimitReached: a socket sends more than \
                 realtime.max_events_per_second ({}) messages per second",
                limits.max_events_per_second
            );
        }
        if self.events.triggered(now) || self.shared.rates.events.triggered() {
            self.system_error_and_close(topic, "Too many messages per second");
            return false;
        }
        if self.bytes.triggered(now) {
            self.system_error_and_close(topic, "Too many bytes per second");
            return false;
        }
        true
    }

    /// A presence event in total; over the limit the channel ends.
    fn count_presence(&mut self, topic: &str, events: usize) -> bool {
        if self.shared.rates.presence.triggered() {
            self.system_error_and_close(topic, "Too many presence messages per second");
            return false;
        }
        self.shared.rates.presence.add(events as u64);
        true
    }

    pub fn send(&self, join_ref: Option<&str>, msg_ref: Option<&str>, topic: &str, event: &str, payload: &Value) {
        self.conn.send_frame(protocol::encode(self.conn.vsn, join_ref, msg_ref, topic, event, payload));
    }

    pub fn reply(&self, msg: &Inbound, status: &str, response: Value) {
        if self.log_joins && msg.event == "phx_join" {
            let reason = response.get("reason").and_then(Value::as_str).unwrap_or_default();
            crate::log_info!(
                "realtime: socket {} (role {}) joining {}: {status} {reason}",
                self.conn.id,
                self.auth.ctx.role,
                msg.topic
            );
        }
        let payload = protocol::reply(status, response);
        self.send(msg.join_ref.as_deref(), msg.msg_ref.as_deref(), &msg.topic, "phx_reply", &payload);
    }

    /// A `system` message, then (for errors) `phx_close`: the channel ends.
    pub fn system_error_and_close(&mut self, topic: &str, message: &str) {
        let Some(channel) = self.channels.remove(topic) else {
            return;
        };
        let payload =
            json!({"extension": "system", "status": "error", "message": message, "channel": channel.sub_topic});
        self.send(channel.join_ref.as_deref(), None, topic, "system", &payload);
        self.send(channel.join_ref.as_deref(), channel.join_ref.as_deref(), topic, "phx_close", &json!({}));
        self.end(&channel);
    }

    pub fn settle(&mut self, done: Done) {
        match done {
            Done::Join(generation, outcome) => self.complete(generation, outcome),
            Done::Close { topic, id, message } => {
                if self.channels.get(&topic).is_some_and(|c| c.id == id) {
                    self.system_error_and_close(&topic, &message);
                }
            }
            Done::Nothing => {}
        }
    }

    pub async fn handle(&mut self, msg: Inbound) {
        if msg.topic == "phoenix" {
            if msg.event == "heartbeat" {
                self.reply(&msg, "ok", json!({}));
            }
            return;
        }
        if msg.event == "phx_join" {
            return self.join(msg);
        }
        if msg.event == "phx_leave" {
            // A join under way is dropped with it.
            self.forget_join(&msg.topic);
        }
        if !self.channels.contains_key(&msg.topic) {
            return self.reply(&msg, "error", json!({"reason": "unmatched topic"}));
        }
        match msg.event.as_str() {
            "phx_leave" => self.leave(&msg),
            "presence" => self.presence(&msg).await,
            "access_token" => self.access_token(&msg).await,
            _ if !self.count_event(&msg.topic) => {}
            "broadcast" => self.broadcast(msg).await,
            // Not logged: a client could fill the log with them.
            _ => {}
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

    /// Everything a channel holds elsewhere goes with it. The worker's part
    /// is a control message, which is never refused.
    pub fn end(&self, channel: &Channel) {
        if self.shared.hub.unsubscribe(&channel.key, channel.id) {
            super::relay::untrack(&self.shared, &channel.key, channel.id);
        }
        if channel.changes {
            self.shared.hub.remove_changes(channel.id);
            if !self.shared.bridge.tell(Request::UnsubscribeChanges { channel: channel.id }) {
                self.conn.close(1011, "the realtime worker is gone");
            }
        }
    }

    /// The socket's end.
    pub fn leave_all(&mut self) {
        if std::mem::take(&mut self.counted_user) {
            self.shared.rates.users.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.joining.clear();
        let channels: Vec<Channel> = self.channels.drain().map(|(_, c)| *c).collect();
        for channel in &channels {
            self.end(channel);
        }
    }

    /// Asks the worker to check a write permission for a channel.
    async fn ask(
        shared: &Arc<Shared>,
        share: &Share,
        request: impl FnOnce(tokio::sync::oneshot::Sender<Result<bool, String>>) -> Request,
    ) -> Option<bool> {
        match checks::call(shared, share, request).await {
            Ok(Ok(allowed)) => Some(allowed),
            Ok(Err(e)) => {
                crate::log_warning!("realtime: RlsPolicyError: a permission check failed: {e}");
                Some(false)
            }
            // Busy or shutting down: deny this once, ask again next time.
            Err(_) => None,
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
        let (ctx, topic_arg) = (channel.auth.ctx.clone(), channel.sub_topic.clone());
        let asked = Self::ask(&self.shared, &self.share, |reply| Request::WritePermission {
            ctx,
            topic: topic_arg,
            extension,
            reply,
        });
        let Some(allowed) = asked.await else {
            return false;
        };
        if let Some(channel) = self.channels.get_mut(topic) {
            match extension {
                Extension::Broadcast => channel.broadcast_write = Some(allowed),
                Extension::Presence => channel.presence_write = Some(allowed),
            }
        }
        allowed
    }

    /// May this private channel read presence? Asked when a track turns
    /// presence on for a join that did not ask for it.
    async fn may_read_presence(&mut self, topic: &str) -> bool {
        let Some(channel) = self.channels.get(topic) else {
            return false;
        };
        if !channel.key.private || channel.config.presence_enabled {
            return channel.read.presence;
        }
        let (ctx, topic_arg) = (channel.auth.ctx.clone(), channel.sub_topic.clone());
        let asked = checks::call(&self.shared, &self.share, |reply| Request::ReadPermissions {
            ctx,
            topic: topic_arg,
            presence: true,
            reply,
        });
        let read = match asked.await {
            Ok(Ok(read)) => read.presence,
            _ => false,
        };
        if let Some(channel) = self.channels.get_mut(topic) {
            channel.read.presence = read;
        }
        read
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
        if broadcast.payload.wire_len() > self.shared.config().settings.max_payload_bytes {
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
        let delivered = self.shared.hub.broadcast(&channel.key, &broadcast, None, except);
        self.shared.rates.events.add(delivered as u64);
        super::relay::send(&self.shared, &channel.key, &broadcast);
        if ack {
            self.reply(&msg, "ok", json!({}));
        }
    }

    async fn presence(&mut self, msg: &Inbound) {
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return;
        };
        if !channel.presence_calls.allow() {
            self.shared.metrics.tripped("ClientPresenceRateLimitReached");
            crate::log_warning!(
                "realtime: ClientPresenceRateLimitReached: a channel sent more presence messages than allowed"
            );
            return self.system_error_and_close(&msg.topic, "Client presence rate limit exceeded");
        }
        let InboundPayload::Json(payload) = &msg.payload else {
            return self.reply(msg, "error", json!({}));
        };
        let event = payload.get("event").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        if !self.may_write(&msg.topic, Extension::Presence).await {
            return self.reply(msg, "error", json!({}));
        }
        match event.as_str() {
            "track" => {
                let Some(meta) = payload.get("payload").and_then(Value::as_object) else {
                    return self.reply(msg, "error", json!({"reason": "Presence track payload must be a map"}));
                };
                if Body::json(&Value::Object(meta.clone())).wire_len() > self.shared.config().settings.max_payload_bytes
                {
                    return self.system_error_and_close(&msg.topic, "Track message size exceeded");
                }
                if !self.count_presence(&msg.topic, 1) {
                    return;
                }
                // The first track turns presence on for this channel; it
                // receives presence only if its policy lets it read presence.
                let reads = self.may_read_presence(&msg.topic).await;
                let Some(channel) = self.channels.get_mut(&msg.topic) else {
                    return;
                };
                if !channel.config.presence_enabled {
                    channel.config.presence_enabled = true;
                    self.shared.hub.update(&channel.key, channel.id, channel.read.broadcast, reads);
                }
                let presence_key = channel
                    .presence_key
                    .get_or_insert_with(|| match channel.config.presence_key.as_str() {
                        "" => uuid::Uuid::new_v4().to_string(),
                        key => key.to_owned(),
                    })
                    .clone();
                // The reply goes first: the diff follows it to every member, this one too.
                let (key, id, meta) = (channel.key.clone(), channel.id, meta.clone());
                self.reply(msg, "ok", json!({}));
                let diffs = self.shared.hub.track(&key, id, &presence_key, meta.clone());
                self.shared.rates.presence.add(diffs as u64);
                super::relay::track(&self.shared, &key, id, &presence_key, &meta);
            }
            "untrack" => {
                let Some(channel) = self.channels.get(&msg.topic) else {
                    return;
                };
                let (key, id, tracked) = (channel.key.clone(), channel.id, channel.presence_key.is_some());
                self.reply(msg, "ok", json!({}));
                let diffs = self.shared.hub.untrack(&key, id);
                self.shared.rates.presence.add(diffs as u64);
                if tracked {
                    super::relay::untrack(&self.shared, &key, id);
                }
            }
            _ => self.reply(msg, "error", json!({})),
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
        if channel.auth.token == token {
            return;
        }
        let auth = match self.shared.config().verifier.verify(&token, unix_now()) {
            Ok(claims) => Auth::new(token, claims, self.auth.ctx.headers.clone()),
            Err(e) => return self.system_error_and_close(&msg.topic, &e.message()),
        };
        let (private, sub_topic, presence_enabled) =
            (channel.key.private, channel.sub_topic.clone(), channel.config.presence_enabled);
        let read = if private {
            let (ctx, topic) = (auth.ctx.clone(), sub_topic.clone());
            let asked = checks::call(&self.shared, &self.share, |reply| Request::ReadPermissions {
                ctx,
                topic,
                presence: presence_enabled,
                reply,
            });
            match asked.await {
                Ok(Ok(r)) if r.broadcast || r.presence => r,
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
        channel.auth = auth;
        channel.read = read;
        if channel.changes {
            let ctx = channel.auth.ctx.clone();
            // Rows are checked with the new claims from the next batch on, or
            // the socket closes: stale claims must not keep reading.
            if !self.shared.bridge.tell(Request::ChangesAuth { channel: channel.id, ctx }) {
                self.conn.close(1011, "the realtime worker is gone");
            }
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

    pub fn next_expiry(&self) -> Instant {
        let now = unix_now();
        let soonest = self.channels.values().map(|c| c.auth.exp()).min();
        match soonest {
            Some(exp) => Instant::now() + Duration::from_secs((exp - now).max(0) as u64),
            None => Instant::now() + Duration::from_secs(24 * 3600),
        }
    }

    /// Channels whose token has expired get a system error and are closed.
    pub fn expire_tokens(&mut self) {
        let now = unix_now();
        let expired: Vec<(String, i64)> =
            self.channels.iter().filter(|(_, c)| c.auth.exp() <= now).map(|(t, c)| (t.clone(), c.auth.exp())).collect();
        for (topic, exp) in expired {
            self.system_error_and_close(&topic, &format!("Token has expired {} seconds ago", now - exp));
        }
    }
}
