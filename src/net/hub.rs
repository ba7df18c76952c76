//! The registry: topic → subscribers, sharded by topic so unrelated topics
//! never contend. A message is encoded once per serializer and the frame is
//! shared by every subscriber's queue. Public and private topics are different
//! keys, so they never see each other's messages.

use super::auth::Auth;
use super::presence::TopicPresence;
use crate::bridge::stats::ChannelRow;
use crate::bridge::{Budget, Charge};
use crate::protocol::{self, Broadcast, Frame, Vsn};
use axum::extract::ws::Message;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::Notify;

/// One joined channel instance; also its presence owner id.
pub type SubId = u64;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub private: bool,
    /// The full topic, `realtime:<name>`.
    pub topic: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// Who is on the other end of a connection.
pub struct Peer {
    /// The token it connected with (`None` in unit tests).
    pub auth: Option<Arc<Auth>>,
    pub remote: Option<SocketAddr>,
    pub connected_at: SystemTime,
}

impl Peer {
    #[cfg(test)]
    pub fn unknown() -> Peer {
        Peer { auth: None, remote: None, connected_at: SystemTime::now() }
    }
}

/// What queued frames may hold: the worker's budget, shared by every socket.
#[derive(Clone)]
pub struct QueueMemory {
    pub budget: Arc<Budget>,
    /// Live sockets, to tell a socket's fair share of a full budget.
    pub sockets: Arc<AtomicUsize>,
}

impl QueueMemory {
    /// Plenty of memory, for tests.
    #[cfg(test)]
    pub fn unbounded() -> QueueMemory {
        QueueMemory { budget: Budget::new(usize::MAX / 2), sockets: Arc::new(AtomicUsize::new(1)) }
    }
}

/// No socket may hold more than this fraction of the budget in its queue.
/// (Database messages are handed over only while the budget is a quarter
/// used, so a socket that keeps reading never gets here; see `pressure`.)
const SOCKET_MAX_SHARE: usize = 2;
/// What one queue entry costs besides its bytes.
const ENTRY_BYTES: usize = 128;

/// An encoded frame and its memory, counted once however many queues hold it.
#[derive(Clone)]
pub struct SharedFrame {
    pub message: Message,
    charge: Arc<Charge>,
}

impl SharedFrame {
    pub fn new(message: Message, budget: &Arc<Budget>) -> SharedFrame {
        let charge = Arc::new(budget.charge(message_len(&message)));
        SharedFrame { message, charge }
    }
}

/// A frame waiting in a connection's queue: the frame's bytes are counted
/// against the budget until the last queue holding it has written it, and
/// against this connection's share until this one has.
pub struct Queued {
    pub message: Message,
    _frame: Arc<Charge>,
    _entry: (Charge, Charge),
}

impl Queued {
    pub fn bytes(&self) -> usize {
        message_len(&self.message)
    }
}

/// The sending half of one WebSocket connection. Its queue is a plain
/// deque, allocated only while it holds frames: an idle socket holds none.
pub struct ConnHandle {
    pub id: u64,
    pub vsn: Vsn,
    /// Who connected, from where, when (for `realtime.connections`).
    pub peer: Peer,
    queue: Mutex<Outbox>,
    /// Frames were queued (or the connection is closing).
    ready: Notify,
    /// A close was asked for (see `close_reason`); the reader waits on it.
    closing: Notify,
    memory: QueueMemory,
    /// What this connection's queue holds (shared frames in full).
    held: Arc<Budget>,
    /// Bytes written to the socket so far.
    written: AtomicU64,
    /// Frames were queued and the writer is yet to be woken (see [`Wakeups`]).
    wake_pending: AtomicBool,
}

/// `postgres_changes` frames encoded for a batch, by serializer, topic,
/// binding ids and the shared `data` they carry.
#[derive(Default)]
pub struct ChangeFrames(HashMap<(Vsn, Arc<str>, Vec<u32>, SameData), SharedFrame>);

/// A `data` JSON compared by identity: the router shares one per group of
/// subscribers, and holding it keeps its address from being reused.
struct SameData(Arc<str>);

impl PartialEq for SameData {
    fn eq(&self, other: &SameData) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SameData {}

impl std::hash::Hash for SameData {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0) as *const u8, state);
    }
}

/// Writers to wake once a batch of messages has been queued.
#[derive(Default)]
pub struct Wakeups(Vec<Arc<ConnHandle>>);

impl Wakeups {
    pub fn wake(self) {
        for conn in self.0 {
            conn.wake_pending.store(false, Ordering::Relaxed);
            conn.ready.notify_one();
        }
    }
}

#[derive(Default)]
struct Outbox {
    frames: VecDeque<Queued>,
    /// Why the connection is to close; the first reason given stands.
    close: Option<CloseReason>,
    /// The writer is gone: nothing more is queued.
    writer_gone: bool,
}

impl ConnHandle {
    /// The queue is bounded in bytes, not entries (see [`ConnHandle::send_shared`]).
    pub fn new(id: u64, vsn: Vsn, peer: Peer, memory: QueueMemory) -> Arc<ConnHandle> {
        let held = Budget::new(usize::MAX);
        let written = AtomicU64::new(0);
        let queue = Mutex::default();
        let wake_pending = AtomicBool::new(false);
        let (ready, closing) = (Notify::new(), Notify::new());
        Arc::new(ConnHandle { id, vsn, peer, queue, ready, closing, memory, held, written, wake_pending })
    }

    /// Up to `max` queued frames, oldest first, for the writer.
    pub fn take(&self, max: usize) -> Vec<Queued> {
        let mut outbox = lock(&self.queue);
        let n = outbox.frames.len().min(max);
        let taken: Vec<Queued> = outbox.frames.drain(..n).collect();
        if outbox.frames.is_empty() {
            outbox.frames = VecDeque::new();
        }
        taken
    }

    /// Waits until frames are queued (or a close is asked for).
    pub async fn queued(&self) {
        self.ready.notified().await;
    }

    /// The writer has stopped: frames queued from now on are dropped, and
    /// those still queued are let go.
    pub fn stop_queueing(&self) {
        let mut outbox = lock(&self.queue);
        outbox.writer_gone = true;
        outbox.frames = VecDeque::new();
    }

    /// Bytes waiting in this connection's queue.
    pub fn queued_bytes(&self) -> usize {
        self.held.used()
    }

    /// The writer wrote `bytes` to the socket.
    pub fn wrote(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn written_bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Queues a frame for this connection alone.
    pub fn send(&self, message: Message) -> bool {
        self.send_shared(&SharedFrame::new(message, &self.memory.budget))
    }

    /// Queues a frame without waiting. A client that does not keep up is
    /// closed (1008) rather than buffered without bound: when its queue holds
    /// more than half the budget, or when the budget is spent and it holds
    /// more than an equal share of it.
    pub fn send_shared(&self, frame: &SharedFrame) -> bool {
        let queued = self.push(frame);
        if queued {
            self.ready.notify_one();
        }
        queued
    }

    /// Queues a frame and leaves waking the writer to `wakeups`, so a batch
    /// of messages reaches each socket's writer as one write.
    pub fn send_deferred(self: &Arc<Self>, frame: &SharedFrame, wakeups: &mut Wakeups) -> bool {
        let queued = self.push(frame);
        if queued && !self.wake_pending.swap(true, Ordering::Relaxed) {
            wakeups.0.push(self.clone());
        }
        queued
    }

    fn push(&self, frame: &SharedFrame) -> bool {
        let bytes = frame.charge.bytes() + ENTRY_BYTES;
        let held = self.held.used() + bytes;
        let budget = &self.memory.budget;
        let fair = budget.limit() / self.memory.sockets.load(Ordering::Relaxed).max(1);
        if held > budget.limit() / SOCKET_MAX_SHARE || (budget.room() == 0 && held > fair) {
            self.close(1008, "slow consumer: too much queued for this socket");
            return false;
        }
        let mut outbox = lock(&self.queue);
        if outbox.writer_gone {
            return false;
        }
        outbox.frames.push_back(Queued {
            message: frame.message.clone(),
            _frame: frame.charge.clone(),
            _entry: (budget.charge(ENTRY_BYTES), self.held.charge(bytes)),
        });
        true
    }

    pub fn send_frame(&self, frame: Frame) -> bool {
        self.send(to_message(frame))
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut outbox = lock(&self.queue);
            if outbox.close.is_some() {
                return;
            }
            outbox.close = Some(CloseReason { code, reason: reason.to_owned() });
        }
        if code == 1008 {
            crate::log_info!("realtime: closing connection {}: {reason}", self.id);
        }
        self.ready.notify_one();
        self.closing.notify_one();
    }

    /// Why the connection is to close, once `close` was called.
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.queue).close.clone()
    }

    /// Waits until `close` is called (for the reader: one waiter).
    pub async fn closed(&self) {
        self.closing.notified().await;
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

pub fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
}

pub struct Subscriber {
    pub conn: Arc<ConnHandle>,
    /// Receives broadcasts (always on public channels; read permission on private).
    pub broadcast: bool,
    /// Receives presence diffs (presence enabled, and read permission on private).
    pub presence: bool,
    /// While its replay runs, broadcasts wait here with their message id, so
    /// none of the replayed messages arrives twice or before the replay.
    pub held: Option<Vec<(Option<String>, u64, SharedFrame)>>,
    /// After a resume: broadcasts on the bus up to here were sent by it, and
    /// are not sent again when they arrive live.
    pub resumed_until: u64,
    /// After a replay, the ids it sent (25 at most): a database broadcast
    /// among them that arrives later (held back by a starting worker's
    /// restart grace, say) is not sent again.
    pub replayed: Option<Box<[String]>>,
}

impl Subscriber {
    pub fn new(conn: Arc<ConnHandle>, broadcast: bool, presence: bool) -> Subscriber {
        Subscriber { conn, broadcast, presence, held: None, resumed_until: 0, replayed: None }
    }
}

#[derive(Default)]
struct Topic {
    subscribers: HashMap<SubId, Subscriber>,
    presence: TopicPresence,
}

type Shard = Mutex<HashMap<TopicKey, Topic>>;
/// Where a channel's changes go: its connection and its topic.
/// A channel's socket, topic, and how many `postgres_changes` bindings it has.
type ChangesRoute = (Arc<ConnHandle>, Arc<str>, u32);

pub struct Hub {
    /// Channels with `postgres_changes` bindings: where their changes go.
    changes: Mutex<HashMap<SubId, ChangesRoute>>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    connections: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    next_id: AtomicU64,
}

const SHARDS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock leaves plain maps behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Frames encoded lazily, at most once per serializer, and shared.
struct PerVsn<F: FnMut(Vsn) -> Option<Message>> {
    encode: F,
    v1: Option<Option<SharedFrame>>,
    v2: Option<Option<SharedFrame>>,
}

impl<F: FnMut(Vsn) -> Option<Message>> PerVsn<F> {
    fn new(encode: F) -> Self {
        PerVsn { encode, v1: None, v2: None }
    }

    fn get(&mut self, conn: &ConnHandle) -> Option<&SharedFrame> {
        let slot = match conn.vsn {
            Vsn::V1 => &mut self.v1,
            Vsn::V2 => &mut self.v2,
        };
        let encode = &mut self.encode;
        slot.get_or_insert_with(|| encode(conn.vsn).map(|m| SharedFrame::new(m, &conn.memory.budget))).as_ref()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            changes: Mutex::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            connections: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Hub {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, key: &TopicKey) -> MutexGuard<'_, HashMap<TopicKey, Topic>> {
        lock(&self.shards[self.hasher.hash_one(key) as usize % SHARDS])
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// A row per topic, and how many channels each connection has joined.
    /// Each shard is locked in turn, briefly.
    pub fn channel_rows(&self) -> (Vec<ChannelRow>, HashMap<u64, u32>) {
        // Per topic: channels with bindings, and their bindings.
        let mut bindings: HashMap<Arc<str>, (u32, u32)> = HashMap::new();
        for (_, topic, count) in lock(&self.changes).values() {
            let entry = bindings.entry(topic.clone()).or_default();
            entry.0 += 1;
            entry.1 += count;
        }
        let (mut rows, mut per_conn) = (Vec::new(), HashMap::<u64, u32>::new());
        for shard in self.shards.iter() {
            for (key, topic) in lock(shard).iter() {
                for s in topic.subscribers.values() {
                    *per_conn.entry(s.conn.id).or_default() += 1;
                }
                rows.push(ChannelRow {
                    topic: key.topic.clone(),
                    private: key.private,
                    subscribers: topic.subscribers.len() as u32,
                    presence_members: topic.presence.members() as u32,
                    postgres_changes_subscribers: bindings.get(key.topic.as_str()).map_or(0, |b| b.0),
                    postgres_changes_bindings: bindings.get(key.topic.as_str()).map_or(0, |b| b.1),
                });
            }
        }
        rows.sort_by(|a, b| (&a.topic, a.private).cmp(&(&b.topic, b.private)));
        (rows, per_conn)
    }

    pub fn add_connection(&self, conn: Arc<ConnHandle>) {
        lock(&self.connections).insert(conn.id, conn);
    }

    pub fn remove_connection(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    pub fn connections(&self) -> Vec<Arc<ConnHandle>> {
        lock(&self.connections).values().cloned().collect()
    }

    /// One `system` message to every channel, with `field` set to `value`
    /// (rare: no frame sharing).
    pub fn system_to_all(&self, message: &str, field: &str, value: &Value) {
        for shard in self.shards.iter() {
            for (key, topic) in lock(shard).iter() {
                let channel = key.topic.strip_prefix("realtime:").unwrap_or(&key.topic);
                let mut payload = json!({"extension": "system", "status": "ok", "message": message,
                                         "channel": channel});
                payload[field] = value.clone();
                for s in topic.subscribers.values() {
                    s.conn.send_frame(protocol::encode(s.conn.vsn, None, None, &key.topic, "system", &payload));
                }
            }
        }
    }

    pub fn close_all(&self, code: u16, reason: &str) {
        for conn in lock(&self.connections).values() {
            conn.close(code, reason);
        }
    }

    pub fn add_changes(&self, id: SubId, conn: Arc<ConnHandle>, topic: &str, bindings: u32) {
        lock(&self.changes).insert(id, (conn, Arc::from(topic), bindings));
    }

    pub fn remove_changes(&self, id: SubId) {
        lock(&self.changes).remove(&id);
    }

    /// A `postgres_changes` message to one channel; `data` is already JSON.
    /// Channels of the same topic and bindings that get the same `data` share
    /// one frame, encoded once (`frames` lives for a batch).
    pub fn send_change(
        &self,
        id: SubId,
        ids: &[u32],
        data: &Arc<str>,
        frames: &mut ChangeFrames,
        wakeups: &mut Wakeups,
    ) {
        let Some((conn, topic, _)) = lock(&self.changes).get(&id).cloned() else { return };
        let key = (conn.vsn, topic.clone(), ids.to_vec(), SameData(data.clone()));
        let frame = frames.0.entry(key).or_insert_with(|| {
            let payload = format!(r#"{{"ids":{},"data":{data}}}"#, Value::from(ids.to_vec()));
            SharedFrame::new(
                to_message(protocol::encode_raw(conn.vsn, &topic, "postgres_changes", &payload)),
                &conn.memory.budget,
            )
        });
        conn.send_deferred(frame, wakeups);
    }

    pub fn subscribe(&self, key: &TopicKey, id: SubId, subscriber: Subscriber) {
        self.shard(key).entry(key.clone()).or_default().subscribers.insert(id, subscriber);
    }

    /// Changes what a subscriber receives (after a token refresh, or when a
    /// first track enables presence).
    pub fn update(&self, key: &TopicKey, id: SubId, broadcast: bool, presence: bool) {
        if let Some(s) = self.shard(key).get_mut(key).and_then(|t| t.subscribers.get_mut(&id)) {
            s.broadcast = broadcast;
            s.presence = presence;
        }
    }

    /// Ends a subscriber's replay or resume: the broadcasts held meanwhile
    /// go out, but for those the replay already sent (by id) and those the
    /// resume already sent (on the bus up to `resumed_until`).
    pub fn release(&self, key: &TopicKey, id: SubId, replayed: &HashSet<String>, resumed_until: u64) {
        let held = self.shard(key).get_mut(key).and_then(|t| t.subscribers.get_mut(&id)).and_then(|s| {
            s.resumed_until = resumed_until;
            if !replayed.is_empty() {
                s.replayed = Some(replayed.iter().cloned().collect());
            }
            let held = s.held.take()?;
            Some((s.conn.clone(), held))
        });
        let Some((conn, held)) = held else { return };
        for (message_id, position, frame) in held {
            let resumed = position != 0 && position <= resumed_until;
            if !resumed && !message_id.is_some_and(|m| replayed.contains(&m)) {
                conn.send_shared(&frame);
            }
        }
    }

    /// Removes a subscriber; its presence leaves are sent to the others.
    /// Whether it was tracked.
    pub fn unsubscribe(&self, key: &TopicKey, id: SubId) -> bool {
        let mut shard = self.shard(key);
        let Some(topic) = shard.get_mut(key) else {
            return false;
        };
        topic.subscribers.remove(&id);
        let diff = topic.presence.untrack(id);
        if let Some(diff) = &diff {
            send_presence_diff(&key.topic, topic, &diff.to_json());
        }
        if topic.subscribers.is_empty() && topic.presence.is_empty() {
            shard.remove(key);
        }
        diff.is_some()
    }

    /// Sends a broadcast to every subscriber of the topic but `except`.
    /// Returns how many subscribers it was queued for.
    pub fn broadcast(
        &self,
        key: &TopicKey,
        broadcast: &Broadcast,
        meta: Option<&Value>,
        except: Option<SubId>,
    ) -> usize {
        let mut wakeups = Wakeups::default();
        let delivered = self.broadcast_deferred(key, broadcast, meta, 0, except, &mut wakeups);
        wakeups.wake();
        delivered
    }

    /// [`Hub::broadcast`] of a broadcast at `position` on the bus (0: none,
    /// else also in `meta`), leaving the writers to wake to `wakeups`.
    pub fn broadcast_deferred(
        &self,
        key: &TopicKey,
        broadcast: &Broadcast,
        meta: Option<&Value>,
        position: u64,
        except: Option<SubId>,
        wakeups: &mut Wakeups,
    ) -> usize {
        let mut shard = self.shard(key);
        let Some(topic) = shard.get_mut(key) else {
            return 0;
        };
        let mut frames =
            PerVsn::new(|vsn| protocol::encode_broadcast(vsn, &key.topic, broadcast, meta).map(to_message));
        let mut delivered = 0;
        let message_id = meta.and_then(|m| m.get("id")).and_then(Value::as_str);
        for (id, sub) in &mut topic.subscribers {
            if !sub.broadcast || Some(*id) == except || (position != 0 && position <= sub.resumed_until) {
                continue;
            }
            if let (Some(replayed), Some(message_id)) = (&sub.replayed, message_id)
                && replayed.iter().any(|r| r == message_id)
            {
                continue;
            }
            let Some(frame) = frames.get(&sub.conn) else { continue };
            if let Some(held) = &mut sub.held {
                held.push((message_id.map(str::to_owned), position, frame.clone()));
                delivered += 1;
                continue;
            }
            delivered += usize::from(sub.conn.send_deferred(frame, wakeups));
        }
        delivered
    }

    /// Returns how many presence diffs it sent.
    pub fn track(&self, key: &TopicKey, id: SubId, presence_key: &str, payload: Map<String, Value>) -> usize {
        let mut shard = self.shard(key);
        let topic = shard.entry(key.clone()).or_default();
        match topic.presence.track(id, presence_key, payload) {
            Some(diff) => send_presence_diff(&key.topic, topic, &diff.to_json()),
            None => 0,
        }
    }

    /// Returns how many presence diffs it sent. A topic only another node's
    /// presence kept goes when that is gone.
    pub fn untrack(&self, key: &TopicKey, id: SubId) -> usize {
        let mut shard = self.shard(key);
        let Some(topic) = shard.get_mut(key) else { return 0 };
        let sent = match topic.presence.untrack(id) {
            Some(diff) => send_presence_diff(&key.topic, topic, &diff.to_json()),
            None => 0,
        };
        if topic.subscribers.is_empty() && topic.presence.is_empty() {
            shard.remove(key);
        }
        sent
    }

    /// Whether anyone but `skip`'s owners is tracked on any topic.
    pub fn tracks_any(&self, skip: impl Fn(SubId) -> bool) -> bool {
        self.shards.iter().any(|shard| lock(shard).values().any(|t| t.presence.entries().any(|(o, ..)| !skip(o))))
    }

    /// Everything tracked on every topic, but `skip`'s owners: (topic, owner,
    /// presence key, payload). Each shard is locked in turn, briefly.
    pub fn presences(&self, skip: impl Fn(SubId) -> bool) -> Vec<(TopicKey, SubId, String, Map<String, Value>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (key, topic) in lock(shard).iter() {
                for (owner, presence_key, payload) in topic.presence.entries() {
                    if !skip(owner) {
                        out.push((key.clone(), owner, presence_key.to_owned(), payload.clone()));
                    }
                }
            }
        }
        out
    }

    /// The `presence_state` payload for the topic.
    pub fn presence_state(&self, key: &TopicKey) -> Value {
        self.shard(key).get(key).map(|t| t.presence.state()).unwrap_or_else(|| Value::Object(Map::new()))
    }
}

fn send_presence_diff(topic_name: &str, topic: &Topic, diff: &Value) -> usize {
    let mut frames =
        PerVsn::new(|vsn| Some(to_message(protocol::encode(vsn, None, None, topic_name, "presence_diff", diff))));
    let mut sent = 0;
    for sub in topic.subscribers.values().filter(|s| s.presence) {
        if let Some(frame) = frames.get(&sub.conn) {
            sent += usize::from(sub.conn.send_shared(frame));
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Body;
    use serde_json::json;

    fn key(private: bool) -> TopicKey {
        TopicKey { private, topic: "realtime:room".into() }
    }

    fn drain(conn: &ConnHandle) -> Vec<Message> {
        conn.take(usize::MAX).into_iter().map(|q| q.message).collect()
    }

    fn ping() -> Broadcast {
        Broadcast { event: "ping".into(), payload: Body::json(&json!({"n": 1})) }
    }

    #[test]
    fn broadcasts_reach_subscribers_of_the_same_key_only() {
        let hub = Hub::default();
        let a = ConnHandle::new(1, Vsn::V1, Peer::unknown(), QueueMemory::unbounded());
        let b = ConnHandle::new(2, Vsn::V2, Peer::unknown(), QueueMemory::unbounded());
        let p = ConnHandle::new(3, Vsn::V1, Peer::unknown(), QueueMemory::unbounded());
        hub.subscribe(&key(false), 10, Subscriber::new(a.clone(), true, false));
        hub.subscribe(&key(false), 11, Subscriber::new(b.clone(), true, false));
        hub.subscribe(&key(true), 12, Subscriber::new(p.clone(), true, false));

        assert_eq!(hub.broadcast(&key(false), &ping(), None, Some(10)), 1);
        assert!(drain(&a).is_empty(), "the sender is excluded");
        assert!(matches!(drain(&b).as_slice(), [Message::Binary(_)]), "V2 gets kind 4");
        assert!(drain(&p).is_empty(), "a private subscriber never sees a public message");

        assert_eq!(hub.broadcast(&key(true), &ping(), None, None), 1);
        let got = drain(&p);
        let [Message::Text(t)] = got.as_slice() else { panic!("{got:?}") };
        assert!(t.as_str().contains(r#""event":"ping""#));
    }

    #[test]
    fn subscribers_without_read_get_nothing() {
        let hub = Hub::default();
        let a = ConnHandle::new(1, Vsn::V1, Peer::unknown(), QueueMemory::unbounded());
        hub.subscribe(&key(true), 10, Subscriber::new(a.clone(), false, false));
        assert_eq!(hub.broadcast(&key(true), &ping(), None, None), 0);
        hub.update(&key(true), 10, true, false);
        assert_eq!(hub.broadcast(&key(true), &ping(), None, None), 1);
        assert_eq!(drain(&a).len(), 1);
    }

    #[test]
    fn queued_frames_count_against_the_budget_once_until_written() {
        let memory = QueueMemory { budget: Budget::new(1 << 20), sockets: Arc::new(AtomicUsize::new(2)) };
        let a = ConnHandle::new(1, Vsn::V1, Peer::unknown(), memory.clone());
        let b = ConnHandle::new(2, Vsn::V1, Peer::unknown(), memory.clone());
        let frame = SharedFrame::new(Message::Text("x".repeat(1000).into()), &memory.budget);
        assert!(a.send_shared(&frame) && b.send_shared(&frame));
        drop(frame);
        assert_eq!(memory.budget.used(), 1000 + 2 * ENTRY_BYTES, "a shared frame is counted once");
        assert_eq!(a.queued_bytes(), 1000 + ENTRY_BYTES);
        drop(a.take(1));
        assert_eq!(memory.budget.used(), 1000 + ENTRY_BYTES, "b still holds the frame");
        drop(b.take(1));
        assert_eq!((memory.budget.used(), a.queued_bytes()), (0, 0), "written frames give their bytes back");
        assert!(a.close_reason().is_none());
    }

    #[test]
    fn a_socket_over_half_the_budget_is_closed() {
        let memory = QueueMemory { budget: Budget::new(2 * 4096), sockets: Arc::new(AtomicUsize::new(1)) };
        let a = ConnHandle::new(1, Vsn::V1, Peer::unknown(), memory.clone());
        let frame = || Message::Text("x".repeat(1000).into());
        assert!(a.send(frame()) && a.send(frame()) && a.send(frame()));
        assert!(!a.send(frame()), "the fourth frame passes 4096 bytes");
        assert_eq!(a.close_reason().map(|c| c.code), Some(1008));
    }

    #[test]
    fn with_the_budget_spent_a_socket_over_an_equal_share_is_closed() {
        let memory = QueueMemory { budget: Budget::new(64 * 1024), sockets: Arc::new(AtomicUsize::new(64)) };
        let _elsewhere = memory.budget.charge(64 * 1024);
        let a = ConnHandle::new(1, Vsn::V1, Peer::unknown(), memory.clone());
        assert!(!a.send(Message::Text("x".repeat(2000).into())), "an equal share is 1 KB");
        assert_eq!(a.close_reason().map(|c| c.code), Some(1008));
        let b = ConnHandle::new(2, Vsn::V1, Peer::unknown(), memory.clone());
        assert!(b.send(Message::Text("x".repeat(100).into())), "a small frame still goes out");
    }

    #[test]
    fn presence_diffs_go_to_presence_subscribers_and_leaves_follow_unsubscribe() {
        let hub = Hub::default();
        let a = ConnHandle::new(1, Vsn::V1, Peer::unknown(), QueueMemory::unbounded());
        let b = ConnHandle::new(2, Vsn::V1, Peer::unknown(), QueueMemory::unbounded());
        hub.subscribe(&key(false), 10, Subscriber::new(a.clone(), true, true));
        hub.subscribe(&key(false), 11, Subscriber::new(b.clone(), true, false));
        let Value::Object(payload) = json!({"name": "a"}) else { panic!() };
        hub.track(&key(false), 10, "alice", payload);
        let got = drain(&a);
        let [Message::Text(t)] = got.as_slice() else { panic!("{got:?}") };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["event"], "presence_diff");
        assert_eq!(v["payload"]["joins"]["alice"]["metas"][0]["name"], "a");
        assert!(drain(&b).is_empty(), "presence not enabled");
        assert!(hub.presence_state(&key(false))["alice"].is_object());

        hub.update(&key(false), 11, true, true);
        hub.unsubscribe(&key(false), 10);
        let got = drain(&b);
        let [Message::Text(t)] = got.as_slice() else { panic!("{got:?}") };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["payload"]["leaves"]["alice"]["metas"][0]["name"], "a");
        assert_eq!(hub.presence_state(&key(false)), json!({}));
    }
}
