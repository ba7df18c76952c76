//! Streaming replication as the bus between nodes. On the primary, with
//! `realtime.bus` on, the worker writes every decoded database broadcast and
//! every change of a published table into WAL once more, as a sealed
//! non-transactional logical message (`envelope`), after its commit was
//! decoded, so only committed rows travel, in commit order. On a hot standby,
//! the worker reads those messages from its own WAL (`reader`), up to what
//! recovery has replayed (so the rows they name are visible there), routes
//! row changes against its own replica and delivers to its own sockets.
//! Clients resume from positions on it (`resume`); standbys relay their
//! clients' broadcasts to it through the primary (`relay`).
//!
//! The primary's worker knows the bus only as a [`Broker`], the way
//! Centrifuge's hub knows its broker: another transport fills the same seam.

mod envelope;
pub mod key;
mod reader;
mod relay;
mod resume;
pub mod slot;

pub use envelope::{open, write};
pub use reader::{Read, Reader, wake_on_replay};
pub use relay::write_relayed;
pub use resume::resume;

use crate::bridge::Gap;
use crate::row_format::{Control, Row};

/// What a batch put on the bus.
#[derive(Debug, Default)]
pub struct Published {
    /// Each row's position on the bus (0: not carried), which clients may
    /// resume from.
    pub positions: Vec<u64>,
    /// The end of the batch's mark, if one was written.
    pub mark_end: Option<u64>,
}

/// The bus as the primary's worker uses it.
pub trait Broker {
    /// Puts a batch's rows on the bus and, when the batch ends a
    /// transaction (`end_lsn` not 0) and carried rows, a mark there.
    fn publish(&mut self, rows: &[Row], end_lsn: u64) -> Published;
    /// Says that decoding moved on to `lsn` without rows; the mark's end.
    fn mark(&mut self, lsn: u64) -> Option<u64>;
    /// What the nodes could not deliver, for every node to report.
    fn gap(&mut self, gap: &Gap);
    /// Whether it carries every published table's changes (for the
    /// standbys' subscribers), or only what this node's subscribers watch.
    fn carries_all_published(&self) -> bool;
}

/// The broker `realtime.bus` names: WAL when on, none when off.
pub fn broker(on: bool) -> Box<dyn Broker> {
    if on { Box::new(WalBus) } else { Box::new(NoBus) }
}

/// The bus in this node's WAL, streamed to standbys by replication.
struct WalBus;

impl Broker for WalBus {
    fn publish(&mut self, rows: &[Row], end_lsn: u64) -> Published {
        let (mut messages, mut carried) = (Vec::new(), Vec::new());
        for (i, row) in rows.iter().enumerate() {
            if let Some(message) = row.bus_message() {
                messages.push(message);
                carried.push(i);
            }
        }
        let marked = !messages.is_empty() && end_lsn != 0;
        if marked {
            messages.push(Control::Mark(end_lsn).message());
        }
        let ends = write(&messages);
        let mut positions = vec![0; rows.len()];
        for (&i, &end) in carried.iter().zip(&ends) {
            positions[i] = end;
        }
        let mark_end = if marked { ends.last().copied() } else { None };
        Published { positions, mark_end }
    }

    fn mark(&mut self, lsn: u64) -> Option<u64> {
        write(&[Control::Mark(lsn).message()]).pop()
    }

    fn gap(&mut self, gap: &Gap) {
        write(&[Control::Gap(gap.clone()).message()]);
    }

    fn carries_all_published(&self) -> bool {
        true
    }
}

/// `realtime.bus = off`: a single node.
struct NoBus;

impl Broker for NoBus {
    fn publish(&mut self, _rows: &[Row], _end_lsn: u64) -> Published {
        Published::default()
    }

    fn mark(&mut self, _lsn: u64) -> Option<u64> {
        None
    }

    fn gap(&mut self, _gap: &Gap) {}

    fn carries_all_published(&self) -> bool {
        false
    }
}
