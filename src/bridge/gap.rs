//! What a node could not deliver: the WAL between two positions, after a
//! failover (commits the old primary had not yet put on the bus) or after a
//! standby's bus reader lost WAL it had not read. Subscribers are told, in a
//! `system` message on every channel, never left to guess.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::types::PgLsn;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// Everything committed before this position was delivered.
    pub from: u64,
    /// Everything committed from here on is delivered.
    pub to: u64,
    /// Transactions (in any database) that committed in between, when the
    /// WAL could still be read; commit times of the first and last (Unix
    /// microseconds).
    pub commits: Option<Commits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Commits {
    pub count: u64,
    pub first_at_us: i64,
    pub last_at_us: i64,
}

/// An LSN as Postgres writes it: `0/16B3748`.
pub fn lsn_text(lsn: u64) -> String {
    PgLsn::from(lsn).to_string()
}

/// An LSN from the way Postgres writes it, as strictly as `pg_lsn_in` reads
/// it (each half at most 8 hex digits): `PgLsn`'s parser lets a low half
/// overflow into the high one, and clients send these.
pub fn lsn_from_text(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let (high, low) = (u32::from_str_radix(high, 16).ok()?, u32::from_str_radix(low, 16).ok()?);
    Some((u64::from(high) << 32) | u64::from(low))
}

impl Gap {
    /// Whether anything may be missing.
    pub fn is_empty(&self) -> bool {
        self.to <= self.from || self.commits.is_some_and(|c| c.count == 0)
    }

    /// The `system` message's text, with commit times as `time` writes them.
    pub fn message(&self, time: impl Fn(i64) -> String) -> String {
        let (from, to) = (lsn_text(self.from), lsn_text(self.to));
        match self.commits {
            Some(c) => format!(
                "Messages of the {} transactions committed between {from} and {to} ({} to {}) were not delivered",
                c.count,
                time(c.first_at_us),
                time(c.last_at_us)
            ),
            None => format!("Messages committed between {from} and {to} were not delivered"),
        }
    }

    /// The `missed` object of the `system` message: positions as Postgres
    /// writes them, and (when known) the transactions and their commit
    /// times, which private channels can `replay` from.
    pub fn to_json(&self, time: impl Fn(i64) -> String) -> Value {
        let mut missed = json!({"from": lsn_text(self.from), "to": lsn_text(self.to)});
        if let Some(c) = self.commits {
            missed["transactions"] = c.count.into();
            missed["first_commit_at"] = time(c.first_at_us).into();
            missed["last_commit_at"] = time(c.last_at_us).into();
        }
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(us: i64) -> String {
        format!("t{us}")
    }

    #[test]
    fn a_gap_reads_as_postgres_positions_and_times() {
        assert_eq!(lsn_text(0x016B_3748), "0/16B3748");
        assert_eq!(lsn_text(0x2_0000_0010), "2/10");
        for lsn in [0, 0x016B_3748, 0x2_0000_0010, u64::MAX] {
            assert_eq!(lsn_from_text(&lsn_text(lsn)), Some(lsn));
        }
        for bad in ["", "0", "0/", "/1", "g/1", "1/100000000", "0/1/2"] {
            assert_eq!(lsn_from_text(bad), None, "{bad:?}");
        }
        let commits = Commits { count: 3, first_at_us: 1, last_at_us: 2 };
        let gap = Gap { from: 0x300_0148, to: 0x30A_0000, commits: Some(commits) };
        assert!(!gap.is_empty());
        assert_eq!(
            gap.message(time),
            "Messages of the 3 transactions committed between 0/3000148 and 0/30A0000 (t1 to t2) were not delivered"
        );
        assert_eq!(gap.to_json(time)["transactions"], 3);
        assert_eq!(gap.to_json(time)["last_commit_at"], "t2");
        let unread = Gap { from: 10, to: 20, commits: None };
        assert_eq!(unread.to_json(time), json!({"from": "0/A", "to": "0/14"}));
        assert_eq!(unread.message(time), "Messages committed between 0/A and 0/14 were not delivered");
        assert!(!unread.is_empty());
        assert!(Gap { from: 10, to: 10, commits: None }.is_empty());
        assert!(Gap { commits: Some(Commits { count: 0, ..commits }), ..gap }.is_empty(), "nothing committed");
    }
}
