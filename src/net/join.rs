//! Joining a channel. What needs no database is checked at once; a private
//! channel's read check goes to the worker and runs beside the socket's other
//! frames (heartbeats, other channels), as does the delay before a refused
//! join's reply: only that join's reply waits. A later join or leave of the
//! same topic makes an earlier pending join's outcome moot.

use super::auth::{Auth, unix_now};
use super::channel::{JoinConfig, Outcome, Prepared, Resume, bindings_with_ids};
use super::checks;
use super::hub::{Subscriber, TopicKey};
use super::limits::ClientPresence;
use super::session::{Channel, Done, Session};
use crate::bridge::gap::lsn_text;
use crate::bridge::{ReadPermissions, Request};
use crate::protocol::{self, Body, Broadcast, Inbound, InboundPayload};
use serde_json::{Value, json};
use std::sync::Arc;

const REPLICATION_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const REPLICATION_READY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

fn unauthorized(sub_topic: &str) -> String {
    format!("Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}")
}

impl Session {
    /// `phx_join`: answered now, or once its read check (or its refusal's
    /// delay) is done.
    pub fn join(&mut self, msg: Inbound) {
        let Some(sub_topic) = msg.topic.strip_prefix("realtime:").map(str::to_owned) else {
            self.shared.metrics.refused("unmatched topic");
            return self.reply(&msg, "error", json!({"reason": "unmatched topic"}));
        };
        self.generation += 1;
        let generation = self.generation;
        self.joining.insert(msg.topic.clone(), generation);
        if let Err(reason) = self.admit() {
            if reason.starts_with("ClientJoinRateLimitReached") {
                // Supabase disconnects the socket after this reply.
                self.shared.metrics.refused(&reason);
                self.reply(&msg, "error", json!({"reason": reason}));
                return self.conn.close(1000, "");
            }
            return self.refuse_later(generation, msg, reason);
        }
        let (join, auth) = match self.prepare(&msg, &sub_topic) {
            Ok(checked) => checked,
            Err(reason) => return self.refuse_later(generation, msg, reason),
        };
        match (Prepared { msg, sub_topic, join, auth }) {
            prepared if !prepared.join.private => {
                let all = ReadPermissions { broadcast: true, presence: true };
                self.complete(generation, Outcome::Allowed(Box::new(prepared), all));
            }
            prepared => self.check_read(generation, prepared),
        }
    }

    /// Supabase's first join checks: concurrent users, then this socket's
    /// joins per second. A join let through is counted.
    fn admit(&mut self) -> Result<(), String> {
        let (now, limits) = (std::time::Instant::now(), self.shared.config().settings.limits.clone());
        let users = self.shared.rates.users.load(std::sync::atomic::Ordering::Relaxed);
        if !self.counted_user && users >= limits.max_concurrent_users {
            self.shared.metrics.tripped("ConnectionRateLimitReached");
            return Err("ConnectionRateLimitReached: Too many connected users".into());
        }
        self.joins.set_limit(Some(f64::from(limits.max_joins_per_second)));
        if self.joins.triggered(now) {
            self.shared.metrics.tripped("ClientJoinRateLimitReached");
            crate::log_warning!(
                "realtime: ClientJoinRateLimitReached: a socket joins more than realtime.max_joins_per_second ({}) \
                 channels per second; it is disconnected",
                limits.max_joins_per_second
            );
            return Err("ClientJoinRateLimitReached: Too many joins per second".into());
        }
        self.joins.add(now, 1);
        Ok(())
    }

    /// The checks that need no database.
    fn prepare(&self, msg: &Inbound, sub_topic: &str) -> Result<(JoinConfig, Arc<Auth>), String> {
        let config = self.shared.config();
        if sub_topic.is_empty() {
            return Err("TopicNameRequired: You must provide a topic name".into());
        }
        let InboundPayload::Json(payload) = &msg.payload else {
            return Err("InvalidJoinPayload: the join payload must be JSON".into());
        };
        let join = JoinConfig::parse(payload)?;
        let most_changes = config.settings.limits.max_postgres_changes_per_join;
        if join.postgres_changes.len() > most_changes {
            return Err(format!(
                "TooManyPostgresChanges: A channel may listen to at most {most_changes} postgres_changes bindings"
            ));
        }
        if !self.channels.contains_key(&msg.topic) && self.channels.len() >= config.settings.max_channels_per_client {
            return Err("ChannelRateLimitReached: Too many channels".into());
        }
        let auth = self.auth_for(join.access_token.as_deref())?;
        if config.settings.private_only && !join.private {
            return Err("PrivateOnly: This project only allows private channels".into());
        }
        if join.replay.is_some() && !join.private {
            return Err("UnableToReplayMessages: Replay is not allowed for public channels".into());
        }
        if join.replay.is_some() && join.resume.is_some() {
            return Err("UnableToResume: a join either replays or resumes, not both".into());
        }
        Ok((join, auth))
    }

    /// The socket's token, or the join's own (`access_token`), verified.
    fn auth_for(&self, requested: Option<&str>) -> Result<Arc<Auth>, String> {
        match requested {
            // `sb_` keys are API keys, not JWTs: the socket's token stands in.
            Some(t) if !t.is_empty() && !t.starts_with("sb_") && t != self.auth.token => {
                let claims = self.shared.config().verifier.verify(t, unix_now()).map_err(|e| e.to_string())?;
                Ok(Auth::new(t.to_owned(), claims, self.auth.ctx.headers.clone()))
            }
            _ => {
                // The socket's token was checked at connect; it may have expired since.
                self.shared.config().verifier.verify(&self.auth.token, unix_now()).map_err(|e| e.to_string())?;
                Ok(self.auth.clone())
            }
        }
    }

    /// Refused clients rejoin forever: the reply waits (within the clients'
    /// 10 s join timeout), and nothing else on the socket does.
    fn refuse_later(&mut self, generation: u64, msg: Inbound, reason: String) {
        let delay = self.shared.config().settings.join_error_delay;
        self.pending.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Done::Join(generation, Outcome::Refused { msg, reason })
        }));
    }

    fn check_read(&mut self, generation: u64, prepared: Prepared) {
        let (shared, share) = (self.shared.clone(), self.share.clone());
        let (ctx, topic, presence) =
            (prepared.auth.ctx.clone(), prepared.sub_topic.clone(), prepared.join.presence_enabled);
        let now = std::time::Instant::now();
        match shared.read_cache.get(&ctx, &topic, presence, now) {
            Some(read) if read.broadcast || read.presence => {
                return self.complete(generation, Outcome::Allowed(Box::new(prepared), read));
            }
            Some(_) => {
                let reason = unauthorized(&prepared.sub_topic);
                return self.refuse_later(generation, prepared.msg, reason);
            }
            None => {}
        }
        let remember = (ctx.clone(), topic.clone());
        let asked = checks::request(&shared, &share, |reply| Request::ReadPermissions { ctx, topic, presence, reply });
        let (delay, ttl) = (shared.config().settings.join_error_delay, shared.config().settings.authorization_cache);
        self.pending.push(Box::pin(async move {
            let answer = match asked {
                Ok(reply) => {
                    reply.await.map_err(|_| "UnableToSetPolicies: the realtime worker is shutting down".into())
                }
                Err(e) => Err(format!("UnableToSetPolicies: {e}")),
            };
            if let Ok(Ok(read)) = &answer {
                shared.read_cache.put(&remember.0, &remember.1, presence, *read, ttl);
            }
            let outcome = match answer {
                Ok(Ok(read)) if read.broadcast || read.presence => Outcome::Allowed(Box::new(prepared), read),
                Ok(Ok(_)) => Outcome::Refused { reason: unauthorized(&prepared.sub_topic), msg: prepared.msg },
                // A standby that cannot reach the primary says so.
                Ok(Err(e)) if e.starts_with("UnableToSetPolicies:") => {
                    Outcome::Refused { msg: prepared.msg, reason: e }
                }
                Ok(Err(e)) => {
                    // A broken policy denies this join only.
                    crate::log_warning!(
                        "realtime: RlsPolicyError: read check for topic {:?} failed: {e}",
                        prepared.sub_topic
                    );
                    Outcome::Refused { reason: unauthorized(&prepared.sub_topic), msg: prepared.msg }
                }
                Err(reason) => Outcome::Refused { msg: prepared.msg, reason },
            };
            if let Outcome::Refused { .. } = outcome {
                tokio::time::sleep(delay).await;
            }
            Done::Join(generation, outcome)
        }));
    }

    /// A pending join's outcome, unless a later join or leave of its topic
    /// made it moot.
    pub fn complete(&mut self, generation: u64, outcome: Outcome) {
        let topic = match &outcome {
            Outcome::Allowed(p, _) => &p.msg.topic,
            Outcome::Refused { msg, .. } => &msg.topic,
        };
        if self.joining.get(topic) != Some(&generation) {
            return;
        }
        let topic = topic.clone();
        self.forget_join(&topic);
        match outcome {
            Outcome::Refused { msg, reason } => {
                self.shared.metrics.refused(&reason);
                self.reply(&msg, "error", json!({"reason": reason}))
            }
            Outcome::Allowed(prepared, read) => {
                self.shared.metrics.joined();
                self.enter(*prepared, read)
            }
        }
    }

    /// Joins: the channel replaces an earlier join of its topic, the reply
    /// and (when allowed) the presence state go out, then Postgres Changes
    /// and replay start beside the socket.
    fn enter(&mut self, prepared: Prepared, read: ReadPermissions) {
        let Prepared { msg, sub_topic, join, auth } = prepared;
        if let Some(old) = self.channels.remove(&msg.topic) {
            self.end(&old);
        }
        let key = TopicKey { private: join.private, topic: msg.topic.clone() };
        let id = self.shared.hub.next_id();
        let presence = join.presence_enabled && read.presence;
        if !std::mem::replace(&mut self.counted_user, true) {
            self.shared.rates.users.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut subscriber = Subscriber::new(self.conn.clone(), read.broadcast, presence);
        if join.replay.is_some() || join.resume.is_some() {
            subscriber.held = Some(Vec::new());
        }
        self.shared.hub.subscribe(&key, id, subscriber);
        let bindings = bindings_with_ids(&join.postgres_changes);
        self.reply(&msg, "ok", json!({"postgres_changes": bindings}));
        // Private channels show presence only to members whose policy lets
        // them read it. The state counts as a presence event.
        let presence_over = presence && self.shared.rates.presence.triggered();
        if presence && !presence_over {
            self.shared.rates.presence.add(1);
            let state = self.shared.hub.presence_state(&key);
            self.send(msg.join_ref.as_deref(), None, &msg.topic, "presence_state", &state);
        }
        let (replay, resume) = (join.replay, join.resume.clone());
        let channel = Channel {
            key,
            sub_topic,
            join_ref: msg.join_ref.clone(),
            id,
            presence_key: None,
            auth,
            read,
            broadcast_write: None,
            presence_write: None,
            presence_calls: ClientPresence::new(
                self.shared.config().settings.limits.max_client_presence_events_per_window,
                self.shared.config().settings.limits.client_presence_window,
            ),
            changes: !bindings.is_empty(),
            config: join,
        };
        if channel.changes {
            self.subscribe_changes(&channel, &bindings);
        }
        if let Some(replay) = replay {
            self.replay(&channel, replay.since_ms, replay.limit);
        }
        if let Some(resume) = resume {
            self.resume(&channel, resume);
        }
        if channel.config.replication_ready {
            self.announce_replication(&channel);
        }
        let topic = msg.topic;
        self.channels.insert(topic.clone(), Box::new(channel));
        if presence_over {
            self.system_error_and_close(&topic, "Too many presence messages per second");
        }
    }

    /// Starts `postgres_changes` for a channel; a `system` message says
    /// whether it worked, and the channel stays open either way. The request
    /// is queued now, so a leave that follows reaches the worker after it.
    fn subscribe_changes(&mut self, channel: &Channel, bindings: &[Value]) {
        let bindings: Vec<(u32, Value)> =
            bindings.iter().map(|b| (b["id"].as_u64().unwrap_or_default() as u32, b.clone())).collect();
        let (id, ctx) = (channel.id, channel.auth.ctx.clone());
        self.shared.hub.add_changes(id, self.conn.clone(), &channel.key.topic, bindings.len() as u32);
        let asked = self.shared.bridge.request(&self.share, |reply| Request::SubscribeChanges {
            channel: id,
            ctx,
            bindings,
            reply,
        });
        let (shared, conn) = (self.shared.clone(), self.conn.clone());
        let (topic, sub_topic, join_ref) =
            (channel.key.topic.clone(), channel.sub_topic.clone(), channel.join_ref.clone());
        self.pending.push(Box::pin(async move {
            let answer = match asked {
                Ok(reply) => reply.await.unwrap_or_else(|_| Err("the realtime worker is shutting down".into())),
                Err(e) => Err(format!("Unable to subscribe to changes: {e}")),
            };
            let (status, message) = match answer {
                Ok(()) => ("ok", "Subscribed to PostgreSQL".to_owned()),
                Err(message) => {
                    shared.hub.remove_changes(id);
                    ("error", message)
                }
            };
            let payload =
                json!({"extension": "postgres_changes", "status": status, "message": message, "channel": sub_topic});
            conn.send_frame(protocol::encode(conn.vsn, join_ref.as_deref(), None, &topic, "system", &payload));
            Done::Nothing
        }));
    }

    /// `replication_ready`: a `system` message once database messages flow
    /// (from then on, a commit reaches this channel), or an error and the
    /// channel's end if they do not within a minute, as Supabase does.
    fn announce_replication(&mut self, channel: &Channel) {
        let (shared, conn) = (self.shared.clone(), self.conn.clone());
        let (topic, sub_topic, join_ref, id) =
            (channel.key.topic.clone(), channel.sub_topic.clone(), channel.join_ref.clone(), channel.id);
        self.pending.push(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + REPLICATION_READY_TIMEOUT;
            while !shared.delivery.replication_ready.load(std::sync::atomic::Ordering::Relaxed) {
                if tokio::time::Instant::now() >= deadline {
                    let message = "Replication connection was not established in time".to_owned();
                    return Done::Close { topic, id, message };
                }
                tokio::time::sleep(REPLICATION_READY_POLL).await;
            }
            let payload = json!({"extension": "system", "status": "ok",
                                 "message": "Replication connection established", "channel": sub_topic});
            conn.send_frame(protocol::encode(conn.vsn, join_ref.as_deref(), None, &topic, "system", &payload));
            Done::Nothing
        }));
    }

    /// Stored broadcasts since `since_ms`, sent after the join's reply; then
    /// the live broadcasts held meanwhile, but for the replayed ones.
    fn replay(&mut self, channel: &Channel, since_ms: i64, limit: i64) {
        let (ctx, topic) = (channel.auth.ctx.clone(), channel.sub_topic.clone());
        let asked =
            self.shared.bridge.request(&self.share, |reply| Request::Replay { ctx, topic, since_ms, limit, reply });
        let (conn, key_topic, sub_topic) = (self.conn.clone(), channel.key.topic.clone(), channel.sub_topic.clone());
        let (shared, key, id) = (self.shared.clone(), channel.key.clone(), channel.id);
        self.pending.push(Box::pin(async move {
            let mut replayed = std::collections::HashSet::new();
            let stored = match asked {
                Ok(reply) => reply.await.unwrap_or_else(|_| Err("the realtime worker is shutting down".into())),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(messages) => {
                    for m in messages {
                        replayed.insert(m.id.clone());
                        let payload = match m.binary {
                            Some(bytes) => Body::Binary(bytes),
                            None => Body::json(&m.payload),
                        };
                        let broadcast = Broadcast { event: m.event, payload };
                        let meta = json!({"id": m.id, "replayed": true});
                        if let Some(frame) = protocol::encode_broadcast(conn.vsn, &key_topic, &broadcast, Some(&meta)) {
                            conn.send_frame(frame);
                        }
                    }
                }
                Err(e) => crate::log_warning!("realtime: replay of {sub_topic:?} failed: {e}"),
            }
            shared.hub.release(&key, id, &replayed, 0);
            Done::Nothing
        }));
    }

    /// The topic's broadcasts on the bus after the client's position, sent
    /// after the join's reply with `resumed: true`; what could not be read
    /// back is reported in a `system` message; then the live broadcasts held
    /// meanwhile, but for those the resume sent.
    fn resume(&mut self, channel: &Channel, resume: Resume) {
        let (topic, private, after) = (channel.key.topic.clone(), channel.key.private, resume.after);
        let (system_identifier, timeline) = (resume.system_identifier, resume.timeline);
        let asked = self.shared.bridge.request(&self.share, |reply| Request::Resume {
            topic,
            private,
            after,
            system_identifier,
            timeline,
            reply,
        });
        let (conn, key, id, sub_topic) =
            (self.conn.clone(), channel.key.clone(), channel.id, channel.sub_topic.clone());
        let join_ref = channel.join_ref.clone();
        let shared = self.shared.clone();
        self.pending.push(Box::pin(async move {
            let found = match asked {
                Ok(reply) => reply.await.unwrap_or_else(|_| Err("the realtime worker is shutting down".into())),
                Err(e) => Err(e.to_string()),
            };
            let system = |status: &str, message: &str, missed: Option<Value>| {
                let mut payload =
                    json!({"extension": "system", "status": status, "message": message, "channel": sub_topic});
                if let Some(missed) = missed {
                    payload["missed"] = missed;
                }
                conn.send_frame(protocol::encode(conn.vsn, join_ref.as_deref(), None, &key.topic, "system", &payload));
            };
            let until = match found {
                Ok(found) => {
                    for b in found.broadcasts {
                        let Ok(payload) = Body::from_row_text(b.binary, &b.payload) else { continue };
                        let mut meta = json!({"position": lsn_text(b.position), "resumed": true});
                        if let Some(id) = b.id {
                            meta["id"] = id.into();
                        }
                        let broadcast = Broadcast { event: b.event, payload };
                        if let Some(frame) = protocol::encode_broadcast(conn.vsn, &key.topic, &broadcast, Some(&meta)) {
                            conn.send_frame(frame);
                        }
                    }
                    if let Some(gap) = found.missed {
                        let time = crate::changes::payload::commit_timestamp;
                        system("ok", &gap.message(time), Some(gap.to_json(time)));
                    }
                    found.until
                }
                Err(e) => {
                    system("error", &e, None);
                    0
                }
            };
            shared.hub.release(&key, id, &Default::default(), until);
            Done::Nothing
        }));
    }
}
