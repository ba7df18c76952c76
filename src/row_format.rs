//! The row format, owned here alone: what the output plugin writes, what the
//! decoder reads back, what the bus between nodes carries and what the spill
//! file holds. A row is a one-byte tag and its text:
//! - `B{json}`: a database broadcast (a committed insert into
//!   `realtime.messages`);
//! - `R{json}`: a row change of a watched or published table, with each row
//!   as `row_to_json` wrote it (made right for clients by
//!   [`crate::changes::RowChange::parse`], the one parse on its way out);
//! - `X{json}`: a client's broadcast or presence relayed through the bus;
//! - `C{unix µs}`: the end of a transaction that wrote any of the above;
//! - bus only, [`Control`]: `P{lsn}`, a mark, and `G{json}`, a gap.
//!
//! Pure: no Postgres calls.

use crate::bridge::Gap;
use std::ffi::CStr;
use std::io::{self, Read, Write};

pub const COMMIT: u8 = b'C';
pub const BROADCAST: u8 = b'B';
pub const ROW_CHANGE: u8 = b'R';
pub const RELAYED: u8 = b'X';
/// Bus only: everything committed before this position that had rows for
/// the bus is on it.
pub const MARK: u8 = b'P';
/// Bus only: a [`Gap`] every node reports to its subscribers.
pub const GAP: u8 = b'G';

/// The logical messages' prefix. The version is part of it: a reader skips
/// envelopes it does not know (v2: presence rows, marks and gaps; v3: every
/// message sealed, `crate::bus_seal`). Every node runs the same version.
pub const BUS_PREFIX: &CStr = c"realtime.bus.v3";

/// One row of plugin output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A broadcast from `realtime.messages` (JSON).
    Broadcast(String),
    /// A row change of a watched table (JSON).
    Change(String),
    /// A client's broadcast another node relayed through the bus, and its
    /// position there (when decoded: the message's end; else 0).
    Relayed(String, u64),
    /// The end of a transaction that wrote rows: its end LSN and commit time
    /// (Unix microseconds; 0 when unknown).
    Commit { lsn: u64, committed_at_us: i64 },
}

/// `tag` then `body`, as the plugin and the bus write a row.
pub fn tagged(tag: u8, body: &str) -> String {
    let mut text = String::with_capacity(body.len() + 1);
    text.push(tag as char);
    text.push_str(body);
    text
}

/// A message's tag and body; None when it starts with no ASCII tag.
fn split_tag(message: &str) -> Option<(u8, &str)> {
    let tag = *message.as_bytes().first()?;
    // An ASCII first byte is a whole character: the body starts after it.
    tag.is_ascii().then(|| (tag, &message[1..]))
}

impl Row {
    /// About what the row holds in memory.
    pub fn bytes(&self) -> usize {
        const OVERHEAD: usize = 40;
        match self {
            Row::Broadcast(s) | Row::Change(s) | Row::Relayed(s, _) => s.len() + OVERHEAD,
            Row::Commit { .. } => OVERHEAD,
        }
    }

    /// A row the plugin wrote, decoded at `lsn` (a commit's end; a relayed
    /// message's end, its position on the bus). None for other output.
    pub fn from_plugin(bytes: &[u8], lsn: u64) -> Option<Row> {
        let (&tag, body) = bytes.split_first()?;
        let text = || String::from_utf8_lossy(body).into_owned();
        match tag {
            BROADCAST => Some(Row::Broadcast(text())),
            ROW_CHANGE => Some(Row::Change(text())),
            RELAYED => Some(Row::Relayed(text(), lsn)),
            COMMIT => {
                let committed_at_us = std::str::from_utf8(body).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                Some(Row::Commit { lsn, committed_at_us })
            }
            _ => None,
        }
    }

    /// The bus message of a decoded row (commits are not sent: messages are
    /// written once their commit was decoded; relayed rows came from the bus).
    pub fn bus_message(&self) -> Option<String> {
        match self {
            Row::Broadcast(text) => Some(tagged(BROADCAST, text)),
            Row::Change(text) => Some(tagged(ROW_CHANGE, text)),
            Row::Commit { .. } | Row::Relayed(..) => None,
        }
    }

    /// The row a bus message carries; None for a control, or a tag this
    /// version does not know.
    pub fn from_bus(message: &str) -> Option<Row> {
        let (tag, body) = split_tag(message)?;
        match tag {
            BROADCAST => Some(Row::Broadcast(body.to_owned())),
            ROW_CHANGE => Some(Row::Change(body.to_owned())),
            RELAYED => Some(Row::Relayed(body.to_owned(), 0)),
            _ => None,
        }
    }

    /// Appends the row to a spill file: tag, then length and text (or a
    /// commit's LSN and time), little-endian.
    pub fn write_framed(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Row::Broadcast(s) | Row::Change(s) | Row::Relayed(s, _) => {
                let tag = match self {
                    Row::Broadcast(_) => BROADCAST,
                    Row::Change(_) => ROW_CHANGE,
                    _ => RELAYED,
                };
                let len = u32::try_from(s.len()).map_err(|_| io::Error::other("a decoded row over 4 GB"))?;
                w.write_all(&[tag])?;
                w.write_all(&len.to_le_bytes())?;
                w.write_all(s.as_bytes())?;
                if let Row::Relayed(_, position) = self {
                    w.write_all(&position.to_le_bytes())?;
                }
                Ok(())
            }
            Row::Commit { lsn, committed_at_us } => {
                w.write_all(&[COMMIT])?;
                w.write_all(&lsn.to_le_bytes())?;
                w.write_all(&committed_at_us.to_le_bytes())
            }
        }
    }

    /// Reads back a row [`Row::write_framed`] wrote.
    pub fn read_framed(r: &mut impl Read) -> io::Result<Row> {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        let mut word = [0u8; 8];
        if tag[0] == COMMIT {
            r.read_exact(&mut word)?;
            let lsn = u64::from_le_bytes(word);
            r.read_exact(&mut word)?;
            return Ok(Row::Commit { lsn, committed_at_us: i64::from_le_bytes(word) });
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let mut text = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut text)?;
        let text = String::from_utf8(text).map_err(|_| io::Error::other("a spilled row is not UTF-8"))?;
        match tag[0] {
            BROADCAST => Ok(Row::Broadcast(text)),
            ROW_CHANGE => Ok(Row::Change(text)),
            RELAYED => {
                r.read_exact(&mut word)?;
                Ok(Row::Relayed(text, u64::from_le_bytes(word)))
            }
            other => Err(io::Error::other(format!("unknown spilled row tag {other}"))),
        }
    }
}

/// Bus messages that are not rows: they tell where the bus stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Everything committed before this position that had rows for the bus
    /// is on it (written by the primary after each batch, and about once a
    /// second while its decoder moves on without rows).
    Mark(u64),
    /// What the nodes could not deliver (written by a promoted primary).
    Gap(Gap),
}

impl Control {
    pub fn message(&self) -> String {
        match self {
            Control::Mark(lsn) => tagged(MARK, &lsn.to_string()),
            Control::Gap(gap) => tagged(GAP, &serde_json::to_string(gap).expect("numbers serialize")),
        }
    }

    /// The control a bus message carries, if it is one this version reads.
    pub fn read(message: &str) -> Option<Control> {
        let (tag, body) = split_tag(message)?;
        match tag {
            MARK => body.parse().ok().map(Control::Mark),
            GAP => serde_json::from_str(body).ok().map(Control::Gap),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::Commits;

    #[test]
    fn rows_travel_with_their_tag() {
        for row in [Row::Broadcast(r#"{"topic":"t"}"#.into()), Row::Change(r#"{"rel":1}"#.into())] {
            assert_eq!(Row::from_bus(&row.bus_message().unwrap()), Some(row));
        }
        assert_eq!(Row::Relayed("r".into(), 7).bus_message(), None, "relayed rows are on the bus already");
        assert_eq!(Row::from_bus("Xr"), Some(Row::Relayed("r".into(), 0)));
        assert_eq!(Row::Commit { lsn: 1, committed_at_us: 2 }.bus_message(), None);
        assert_eq!(Row::from_bus("Z{}"), None, "unknown tags are skipped");
        assert_eq!(Row::from_bus(""), None);
        assert_eq!(Row::from_bus("é"), None, "a multi-byte first character is no tag");
    }

    #[test]
    fn plugin_output_reads_back_with_its_position() {
        assert_eq!(Row::from_plugin(b"B{}", 9), Some(Row::Broadcast("{}".into())));
        assert_eq!(Row::from_plugin(b"X{}", 9), Some(Row::Relayed("{}".into(), 9)));
        assert_eq!(Row::from_plugin(b"C1700", 9), Some(Row::Commit { lsn: 9, committed_at_us: 1700 }));
        assert_eq!(Row::from_plugin(b"Cjunk", 9), Some(Row::Commit { lsn: 9, committed_at_us: 0 }));
        assert_eq!(Row::from_plugin(b"", 9), None);
        assert_eq!(Row::from_plugin(b"P1", 9), None, "controls are not plugin rows");
    }

    #[test]
    fn framed_rows_round_trip() {
        let rows = [
            Row::Broadcast("{\"a\":1}".into()),
            Row::Change("{}".into()),
            Row::Relayed("r".into(), 42),
            Row::Commit { lsn: 7, committed_at_us: -3 },
        ];
        let mut file = Vec::new();
        for row in &rows {
            row.write_framed(&mut file).unwrap();
        }
        let mut reader = &file[..];
        for row in &rows {
            assert_eq!(&Row::read_framed(&mut reader).unwrap(), row);
        }
        assert!(Row::read_framed(&mut reader).is_err(), "the end of the file");
        assert!(Row::read_framed(&mut &b"Q\0\0\0\0"[..]).is_err(), "an unknown tag");
    }

    #[test]
    fn controls_round_trip_and_rows_are_not_controls() {
        let gap = Gap { from: 1, to: 2, commits: Some(Commits { count: 3, first_at_us: 4, last_at_us: 5 }) };
        for control in [Control::Mark(0x4B08_A7D8), Control::Gap(gap)] {
            assert_eq!(Control::read(&control.message()), Some(control));
        }
        assert_eq!(Control::read("P"), None);
        assert_eq!(Control::read("Gnot json"), None);
        assert_eq!(Control::read(&Row::Broadcast("{}".into()).bus_message().unwrap()), None);
    }
}
