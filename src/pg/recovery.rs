//! Whether this server is a standby, and its epoch: what every part of the
//! worker asks of recovery.

use pgrx::pg_sys;

/// Whether this server is a standby (in recovery).
pub fn in_recovery() -> bool {
    // SAFETY: reads shared state.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// This server's epoch: its system identifier, and the timeline it writes
/// (a primary) or replays (a standby). A promotion starts a new timeline.
pub fn epoch() -> (u64, u32) {
    // SAFETY: reads shared state set at startup and by recovery.
    unsafe {
        let mut timeline: pg_sys::TimeLineID = 0;
        if pg_sys::RecoveryInProgress() {
            pg_sys::GetXLogReplayRecPtr(&mut timeline);
        } else {
            timeline = pg_sys::GetWALInsertionTimeLine();
        }
        (pg_sys::GetSystemIdentifier(), timeline)
    }
}
