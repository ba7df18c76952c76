//! Resuming a channel from a position on the bus: the broadcasts a client
//! missed, read back from this node's WAL while it is kept. What a client
//! says (position, timeline, system identifier) is checked before it reaches
//! the WAL reader.

use super::reader::{Read, Reader};
use crate::bridge::gap::lsn_text;
use crate::bridge::{DbBroadcast, Gap, RelayKind, Relayed, Resumed, Resumption};
use crate::pg::recovery::epoch;
use crate::pg::wal::available_end;
use crate::pg::{settings, subxact};
use crate::row_format::{BROADCAST, RELAYED};
use pgrx::pg_sys;
use std::time::Duration;

/// The most broadcasts one resume sends; past it, the rest is reported missed.
const RESUME_MAX: usize = 1000;
/// The most bus bytes, and the longest time, one resume reads (the main
/// thread does nothing else meanwhile; each socket has few requests in
/// flight, and joins are rate-limited).
const RESUME_BYTES: usize = 4 * 1024 * 1024;
const RESUME_TIME: Duration = Duration::from_millis(250);

/// A resuming channel's broadcasts: `topic`'s (the full `realtime:…` one)
/// database and client broadcasts on the bus after `after`, read back from
/// this node's WAL while it is kept. What cannot be read (WAL removed, a
/// position that is no record's end, more than a resume sends) is reported
/// as missed.
pub fn resume(
    topic: &str,
    private: bool,
    after: u64,
    system_identifier: Option<&str>,
    timeline: Option<u32>,
) -> Result<Resumption, String> {
    if !settings::bus() {
        return Err("UnableToResume: realtime.bus is off on this node".into());
    }
    // What a client says is checked before it reaches the WAL reader.
    if timeline == Some(0) {
        return Err("UnableToResume: timeline 0 is no timeline (they start at 1)".into());
    }
    // SAFETY: reads a setting fixed at startup.
    let segment_size = u64::from(unsafe { pg_sys::wal_segment_size } as u32);
    if !is_record_boundary(after, segment_size) {
        return Err(format!("UnableToResume: {} is not a position a WAL record ends at", lsn_text(after)));
    }
    let (ours, our_timeline) = epoch();
    let ours = ours.to_string();
    if let Some(asked) = system_identifier
        && asked != ours
    {
        return Err(format!(
            "UnableToResume: the position is from another database cluster (system identifier {asked}, this one is {ours})"
        ));
    }
    // Past the point where two timelines parted, the same position names
    // other WAL: a position of an older timeline resumes from that point.
    let after = match timeline {
        Some(asked) if asked > our_timeline => {
            return Err(format!(
                "UnableToResume: the position is from timeline {asked}, and this node is still on timeline {our_timeline}"
            ));
        }
        Some(asked) if asked < our_timeline => after.min(timeline_end(asked, our_timeline)?),
        _ => after,
    };
    let until = available_end();
    if after >= until {
        return Ok(Resumption { broadcasts: Vec::new(), until: after, missed: None });
    }
    let mut reader = Reader::open(after);
    let mut messages = Vec::new();
    let read = reader.read_until(until, &mut messages, RESUME_BYTES, RESUME_TIME);
    let reached = reader.position();
    reader.close();
    let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
    let mut broadcasts = Vec::new();
    let mut upto = match read {
        Ok(Read::CaughtUp) => until,
        Ok(Read::Paused) => reached,
        Err(_) => after, // nothing could be read
    };
    for (position, message) in &messages {
        if broadcasts.len() == RESUME_MAX {
            upto = broadcasts.last().map_or(after, |b: &Resumed| b.position);
            break;
        }
        let body = message.get(1..).unwrap_or_default();
        let resumed = match message.as_bytes().first().copied() {
            Some(BROADCAST) => DbBroadcast::parse(body)
                .ok()
                .filter(|(m, _)| m.topic == sub_topic && m.private == private)
                .map(|(m, payload)| Resumed {
                    position: *position,
                    id: Some(m.id),
                    event: m.event,
                    payload: payload.into(),
                    binary: m.binary,
                }),
            Some(RELAYED) => Relayed::parse(body)
                .ok()
                .filter(|(r, _)| r.kind == RelayKind::Broadcast && r.topic == topic && r.private == private)
                .map(|(r, payload)| Resumed {
                    position: *position,
                    id: None,
                    event: r.event,
                    payload: payload.into(),
                    binary: r.binary,
                }),
            _ => None,
        };
        broadcasts.extend(resumed);
    }
    let missed = (upto < until).then_some(Gap { from: upto, to: until, commits: None });
    Ok(Resumption { broadcasts, until, missed })
}

/// Where timeline `old` ended in the history of timeline `current`.
/// Where a record can end (and so a read begin): not 0, and not inside a
/// page's header (a page's first byte is fine: the reader skips the header).
/// The first page of a segment has the long header. Pure.
fn is_record_boundary(position: u64, segment_size: u64) -> bool {
    let align = |n: usize| n.div_ceil(8) as u64 * 8;
    let header = if segment_size != 0 && position % segment_size < u64::from(pg_sys::XLOG_BLCKSZ) {
        align(size_of::<pg_sys::XLogLongPageHeaderData>())
    } else {
        align(size_of::<pg_sys::XLogPageHeaderData>())
    };
    let in_page = position % u64::from(pg_sys::XLOG_BLCKSZ);
    position != 0 && (in_page == 0 || in_page >= header)
}

fn timeline_end(old: u32, current: u32) -> Result<u64, String> {
    // SAFETY: main thread, in a transaction; the history list is palloc'd in
    // the subtransaction. An ERROR (a timeline not in the history) becomes a
    // panic the subtransaction catches and rolls back (`compat`).
    subxact::rolled_back(|| unsafe { crate::pg::compat::timeline_switch_point(old, current) })
        .map_err(|e| format!("UnableToResume: timeline {old} is not in this node's history: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_boundaries_are_not_inside_page_headers() {
        let segment = 16 * 1024 * 1024;
        let page = u64::from(pg_sys::XLOG_BLCKSZ);
        assert!(!is_record_boundary(0, segment));
        assert!(!is_record_boundary(1, segment), "inside the segment's long header");
        assert!(!is_record_boundary(segment + 39, segment));
        assert!(is_record_boundary(segment + 40, segment));
        assert!(!is_record_boundary(segment + page + 16, segment), "inside a short header");
        assert!(is_record_boundary(segment + page + 24, segment));
        assert!(is_record_boundary(segment + page, segment), "a page's first byte: the reader skips its header");
        assert!(is_record_boundary(u64::MAX - 7, segment));
    }
}
