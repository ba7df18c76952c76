//! What the network side asks of the worker's main thread, and who asks.

use tokio::sync::oneshot;

/// Who is asking, as RLS policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthContext {
    pub role: String,
    /// Every JWT claim as JSON text, for `request.jwt.claims`.
    pub claims_json: String,
    pub sub: Option<String>,
    /// The request's `x-` headers as a JSON object, for `request.headers`
    /// in private-channel checks (as Supabase sets it); None: `{}`.
    pub headers: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPermissions {
    pub broadcast: bool,
    pub presence: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    Broadcast,
    Presence,
}

impl Extension {
    pub fn as_str(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
        }
    }
}

/// A broadcast stored in `realtime.messages`, for replay.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBroadcast {
    pub id: String,
    pub event: String,
    pub payload: serde_json::Value,
    /// A binary message's bytes (`realtime.send_binary`), instead of `payload`.
    pub binary: Option<Vec<u8>>,
}

/// A broadcast read back from the bus for a resuming channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// Its position on the bus.
    pub position: u64,
    /// A database broadcast's id (`realtime.messages`); none for a client's.
    pub id: Option<String>,
    pub event: String,
    /// JSON text, or base64 when `binary`.
    pub payload: String,
    pub binary: bool,
}

/// What a resume found: the broadcasts, the position it read up to (held
/// live broadcasts up to it were among them), and what it could not read.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumption {
    pub broadcasts: Vec<Resumed>,
    pub until: u64,
    pub missed: Option<super::Gap>,
}

/// Work only the main thread can do. `topic` is the sub-topic (no `realtime:`).
pub enum Request {
    /// May this context read the topic (broadcast, and presence when asked)?
    ReadPermissions {
        ctx: AuthContext,
        topic: String,
        presence: bool,
        reply: oneshot::Sender<Result<ReadPermissions, String>>,
    },
    /// May this context write the topic for this extension?
    WritePermission {
        ctx: AuthContext,
        topic: String,
        extension: Extension,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Checks a channel's `postgres_changes` bindings (with the ids its join
    /// reply gave them) and starts routing changes to it.
    SubscribeChanges {
        channel: u64,
        ctx: AuthContext,
        bindings: Vec<(u32, serde_json::Value)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The channel is gone. No answer.
    UnsubscribeChanges { channel: u64 },
    /// The channel's token was refreshed. No answer.
    ChangesAuth { channel: u64, ctx: AuthContext },
    /// Client broadcasts ([`super::Relayed`] rows) for the bus. No answer.
    BusRelay(Vec<String>),
    /// The topic's broadcasts on the bus after `after` (a position of this
    /// cluster, `system_identifier`'s if given), up to what this node has.
    Resume {
        topic: String,
        private: bool,
        after: u64,
        system_identifier: Option<String>,
        timeline: Option<u32>,
        reply: oneshot::Sender<Result<Resumption, String>>,
    },
    /// Stored private broadcasts of the topic since `since_ms`, oldest first.
    Replay {
        ctx: AuthContext,
        topic: String,
        since_ms: i64,
        limit: i64,
        reply: oneshot::Sender<Result<Vec<StoredBroadcast>, String>>,
    },
}
