//! After a promotion on PostgreSQL 17+, the new primary decodes from its
//! synced failover slot, which may stand before what this node (and every
//! standby reading the same bus) already delivered from the old primary's
//! bus. [`AlreadyDelivered`] drops those rows from the decoder's output, so
//! each reaches the sockets once. Pure.
//!
//! What the bus told the node, in the old primary's publication order (which
//! is commit order): a mark at `commits_through` (every transaction ending
//! there or before was on the bus), then `rows_after` rows with no mark yet
//! (the first bus-carried rows of the transactions after it), and relayed
//! client broadcasts up to `relayed_through` (the reader's position).

use crate::row_format::Row;

/// What a promoted standby had delivered from the old primary's bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub commits_through: u64,
    pub rows_after: usize,
    pub relayed_through: u64,
}

#[derive(Debug)]
pub struct AlreadyDelivered {
    delivered: Delivered,
    /// Rows of a transaction whose commit has not been decoded yet (a chunk
    /// can end inside one), held until it says whether they were delivered.
    pending: Vec<Row>,
    /// A commit past `commits_through` has been decoded: no row needs
    /// holding any more.
    past_commits: bool,
    rows_to_skip: usize,
}

impl AlreadyDelivered {
    /// For a decoder that starts at `decoding_from`. Rows past the last mark
    /// are the first of the transactions after it only when decoding starts
    /// at or before that mark; later, those transactions are not decoded.
    pub fn new(delivered: Delivered, decoding_from: u64) -> AlreadyDelivered {
        let rows_to_skip = if decoding_from <= delivered.commits_through { delivered.rows_after } else { 0 };
        AlreadyDelivered { delivered, pending: Vec::new(), past_commits: false, rows_to_skip }
    }

    /// The rows of `rows` (decoder output, in order) not delivered before.
    pub fn filter(&mut self, rows: Vec<Row>) -> Vec<Row> {
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Row::Relayed(_, at) if at <= self.delivered.relayed_through => {}
                Row::Relayed(..) => kept.push(row),
                Row::Commit { lsn, .. } if !self.past_commits => {
                    if lsn <= self.delivered.commits_through {
                        self.pending.clear();
                    } else {
                        self.past_commits = true;
                        let held = std::mem::take(&mut self.pending);
                        for row in held {
                            self.keep_unless_counted(row, &mut kept);
                        }
                        kept.push(row);
                    }
                }
                Row::Broadcast(_) | Row::Change(_) if !self.past_commits => self.pending.push(row),
                other => self.keep_unless_counted(other, &mut kept),
            }
        }
        kept
    }

    /// Drops the first `rows_after` bus-carried rows past the mark.
    fn keep_unless_counted(&mut self, row: Row, kept: &mut Vec<Row>) {
        if self.rows_to_skip > 0 && row.bus_message().is_some() {
            self.rows_to_skip -= 1;
        } else {
            kept.push(row);
        }
    }

    /// Nothing is left to drop or hold once decoding has read up to
    /// `position`: the filter can go.
    pub fn is_done_at(&self, position: u64) -> bool {
        self.is_done() && position > self.delivered.relayed_through
    }

    fn is_done(&self) -> bool {
        self.past_commits && self.rows_to_skip == 0 && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u32) -> Row {
        Row::Broadcast(format!("{{\"n\":{n}}}"))
    }
    fn commit(lsn: u64) -> Row {
        Row::Commit { lsn, committed_at_us: 0 }
    }

    #[test]
    fn transactions_through_the_mark_are_dropped_and_later_ones_kept() {
        let delivered = Delivered { commits_through: 200, rows_after: 0, relayed_through: 250 };
        let mut skip = AlreadyDelivered::new(delivered, 100);
        let out = skip.filter(vec![b(1), commit(150), b(2), commit(200), b(3), commit(300), b(4), commit(400)]);
        assert_eq!(out, vec![b(3), commit(300), b(4), commit(400)]);
        assert!(skip.is_done());
    }

    #[test]
    fn a_transaction_split_across_chunks_waits_for_its_commit() {
        let delivered = Delivered { commits_through: 200, rows_after: 0, relayed_through: 200 };
        let mut skip = AlreadyDelivered::new(delivered, 100);
        assert_eq!(skip.filter(vec![b(1), b(2)]), vec![], "held: its commit may be through the mark");
        assert_eq!(skip.filter(vec![b(3), commit(180)]), vec![], "it was: all three were delivered");
        assert_eq!(skip.filter(vec![b(4)]), vec![]);
        assert_eq!(skip.filter(vec![b(5), commit(260)]), vec![b(4), b(5), commit(260)]);
        assert_eq!(skip.filter(vec![b(6)]), vec![b(6)], "past the mark: nothing is held");
    }

    #[test]
    fn rows_read_after_the_last_mark_are_the_first_ones_after_it() {
        let delivered = Delivered { commits_through: 200, rows_after: 3, relayed_through: 500 };
        let mut skip = AlreadyDelivered::new(delivered, 100);
        let out = skip.filter(vec![b(1), commit(200), b(2), b(3), commit(300), b(4), b(5), commit(400)]);
        assert_eq!(out, vec![commit(300), b(5), commit(400)], "2, 3 and 4 were delivered without their mark");
        assert!(skip.is_done());
    }

    #[test]
    fn unmarked_rows_are_not_counted_when_decoding_starts_past_the_mark() {
        // PostgreSQL 15: the new slot starts after the gap; its first
        // transactions are new, whatever the bus had.
        let delivered = Delivered { commits_through: 200, rows_after: 3, relayed_through: 250 };
        let mut skip = AlreadyDelivered::new(delivered, 900);
        assert_eq!(skip.filter(vec![b(1), commit(1000)]), vec![b(1), commit(1000)]);
    }

    #[test]
    fn relayed_rows_read_from_the_bus_are_dropped() {
        let delivered = Delivered { commits_through: 200, rows_after: 0, relayed_through: 250 };
        let mut skip = AlreadyDelivered::new(delivered, 100);
        let relayed = |at| Row::Relayed("{}".into(), at);
        let out = skip.filter(vec![relayed(120), b(1), commit(300), relayed(250), relayed(260)]);
        assert_eq!(out, vec![b(1), commit(300), relayed(260)]);
    }
}
