//! The only types both sides of the worker know: what the network side asks
//! of the main thread (`request`, through `queue`), what the main thread hands
//! to the network side (`outbound`), the settings it hands over (`settings`),
//! and the memory both draw from (`budget`). Nothing here calls Postgres or
//! touches a socket.

pub mod budget;
pub mod gap;
pub mod latency;
pub mod log;
pub mod outbound;
pub mod queue;
pub mod request;
pub mod settings;
pub mod stats;

pub use budget::{Budget, Charge};
pub use gap::{Commits, Gap};
pub use outbound::{Batch, DbBroadcast, Decoded, Delivery, Network, RelayKind, Relayed};
pub use queue::{Bridge, Inbox, Share};
pub use request::{AuthContext, Extension, ReadPermissions, Request, Resumed, Resumption, StoredBroadcast};
pub use settings::{Limits, Settings};
pub use stats::Stats;
