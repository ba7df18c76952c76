//! What the output plugin wrote, in WAL order (rows in the format of
//! `crate::row_format`), waiting to be routed and
//! handed to the network side: held in memory up to a bound (counted against
//! the worker's budget), and past it appended to a file, so a transaction of a
//! million rows, whose commit is replayed in one call, costs disk and not
//! memory. Pure: no Postgres calls.

use crate::bridge::{Budget, Charge};
use crate::row_format::Row;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Rows taken together for one batch.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    pub rows: Vec<Row>,
    /// The end LSN of the last transaction the chunk completes, else 0.
    pub end_lsn: u64,
    /// The commit times of the transactions it completes (Unix microseconds).
    pub commits: Vec<i64>,
}

struct Spill {
    writer: BufWriter<File>,
    reader: BufReader<File>,
    /// Written since the last flush, so a read must flush first.
    dirty: bool,
    rows: usize,
    bytes: u64,
}

pub struct Output {
    memory: VecDeque<Row>,
    charge: Charge,
    memory_limit: usize,
    spill: Option<Spill>,
    path: PathBuf,
}

impl Output {
    /// `path` is where rows past `memory_limit` bytes go.
    pub fn new(path: PathBuf, budget: &Arc<Budget>, memory_limit: usize) -> Output {
        Output { memory: VecDeque::new(), charge: budget.charge(0), memory_limit, spill: None, path }
    }

    pub fn set_memory_limit(&mut self, bytes: usize) {
        self.memory_limit = bytes;
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spill.is_none()
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.charge.bytes()
    }

    /// Bytes waiting in the spill file.
    pub fn spilled_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.bytes)
    }

    pub fn push(&mut self, row: Row) -> io::Result<()> {
        let bytes = row.bytes();
        if self.spill.is_none() && self.charge.bytes() + bytes <= self.memory_limit {
            self.charge.add(bytes);
            self.memory.push_back(row);
            return Ok(());
        }
        if self.spill.is_none() {
            self.spill = Some(self.open_spill()?);
        }
        let spill = self.spill.as_mut().expect("opened above");
        row.write_framed(&mut spill.writer)?;
        spill.dirty = true;
        spill.rows += 1;
        spill.bytes += bytes as u64;
        Ok(())
    }

    pub fn pop(&mut self) -> io::Result<Option<Row>> {
        if let Some(row) = self.memory.pop_front() {
            self.charge.release(row.bytes());
            return Ok(Some(row));
        }
        let Some(spill) = self.spill.as_mut() else {
            return Ok(None);
        };
        if spill.dirty {
            spill.writer.flush()?;
            spill.dirty = false;
        }
        let row = Row::read_framed(&mut spill.reader)?;
        spill.rows -= 1;
        spill.bytes = spill.bytes.saturating_sub(row.bytes() as u64);
        if spill.rows == 0 {
            self.close_spill();
        }
        Ok(Some(row))
    }

    /// Rows up to about `max_bytes` (at least one), in order.
    pub fn take_chunk(&mut self, max_bytes: usize) -> io::Result<Chunk> {
        let mut chunk = Chunk::default();
        let mut bytes = 0;
        while bytes < max_bytes.max(1) {
            let Some(row) = self.pop()? else { break };
            bytes += row.bytes();
            if let Row::Commit { lsn, committed_at_us } = row {
                chunk.end_lsn = lsn;
                chunk.commits.push(committed_at_us);
            }
            chunk.rows.push(row);
        }
        Ok(chunk)
    }

    fn open_spill(&self) -> io::Result<Spill> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(&self.path)?;
        // Opened on its own, so reading keeps a file position apart from writing.
        let reader = File::open(&self.path)?;
        Ok(Spill { writer: BufWriter::new(file), reader: BufReader::new(reader), dirty: false, rows: 0, bytes: 0 })
    }

    fn close_spill(&mut self) {
        if self.spill.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.close_spill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("realtime-spill-test-{}-{name}", std::process::id()))
    }

    fn b(n: usize) -> Row {
        Row::Broadcast(format!("{{\"n\":{n}}}"))
    }

    fn c(lsn: u64) -> Row {
        Row::Commit { lsn, committed_at_us: 1_700_000_000_000_000 + lsn as i64 }
    }

    #[test]
    fn rows_come_back_in_order_across_memory_and_file() {
        let budget = Budget::new(1 << 30);
        let p = path("order");
        let mut out = Output::new(p.clone(), &budget, 200);
        for n in 0..50 {
            out.push(b(n)).unwrap();
            if n % 10 == 9 {
                out.push(c(n as u64)).unwrap();
            }
            if n == 45 {
                out.push(Row::Relayed("relayed".into(), 42)).unwrap();
            }
        }
        assert!(out.spilled_bytes() > 0, "past the memory limit rows go to the file");
        assert!(out.memory_bytes() <= 200);
        assert_eq!(budget.used(), out.memory_bytes(), "only memory is charged");
        let mut got = Vec::new();
        // Interleave pushes with pops: new rows queue behind the spilled ones.
        got.extend(std::iter::from_fn(|| out.pop().unwrap()).take(30));
        out.push(b(50)).unwrap();
        got.extend(std::iter::from_fn(|| out.pop().unwrap()));
        assert!(got.contains(&Row::Relayed("relayed".into(), 42)), "relayed rows come back from the file");
        got.retain(|r| !matches!(r, Row::Relayed(..)));
        let (broadcasts, commits): (Vec<Row>, Vec<Row>) = got.into_iter().partition(|r| matches!(r, Row::Broadcast(_)));
        assert_eq!(broadcasts, (0..=50).map(b).collect::<Vec<_>>());
        assert_eq!(commits, [9, 19, 29, 39, 49].map(c), "commit rows keep their LSN and time through the file");
        assert!(out.is_empty());
        assert!(!p.exists(), "an emptied spill file is removed");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn chunks_end_at_the_last_commit_they_hold() {
        let budget = Budget::new(1 << 20);
        let mut out = Output::new(path("chunks"), &budget, 1 << 20);
        for row in [b(1), c(10), b(2), b(3), c(20), b(4)] {
            out.push(row).unwrap();
        }
        let first = out.take_chunk(2 * b(1).bytes() + c(0).bytes()).unwrap();
        assert_eq!(first.rows.len(), 3);
        assert_eq!(first.end_lsn, 10);
        assert_eq!(first.commits, vec![1_700_000_000_000_010]);
        let rest = out.take_chunk(1 << 20).unwrap();
        assert_eq!(rest.rows, vec![b(3), c(20), b(4)]);
        assert_eq!(rest.end_lsn, 20);
        assert_eq!(out.take_chunk(100).unwrap(), Chunk::default());
    }

    #[test]
    fn dropping_the_output_removes_its_file() {
        let budget = Budget::new(1 << 20);
        let p = path("drop");
        let mut out = Output::new(p.clone(), &budget, 100);
        for n in 0..20 {
            out.push(b(n)).unwrap();
        }
        assert!(p.exists());
        drop(out);
        assert!(!p.exists());
        assert_eq!(budget.used(), 0);
    }
}
