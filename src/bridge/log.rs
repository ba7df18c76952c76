//! Log lines from the network side. Its threads never call Postgres, so their
//! lines go through a bounded queue to the main thread, which writes them with
//! ereport (timestamps, levels, `log_line_prefix`). `realtime.log_level` picks
//! which are kept; a full queue drops lines and says how many.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something an operator should act on (a limit tripped, a refused socket).
    Warning = 1,
    /// What the worker does (listening, slow consumers cut off).
    Info = 2,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "warning" => Some(Level::Warning),
            "info" => Some(Level::Info),
            _ => None,
        }
    }
}

const QUEUE_LINES: usize = 1024;
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static QUEUE: Mutex<Option<mpsc::SyncSender<(Level, String)>>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Queues a line for the main thread (without one, as in unit tests, to stderr).
pub fn emit(level: Level, line: String) {
    if !enabled(level) {
        return;
    }
    match QUEUE.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(queue) => {
            if queue.try_send((level, line)).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => eprintln!("{line}"),
    }
}

/// The main thread's end of a new queue (a restarted network side gets a new one).
pub fn install() -> mpsc::Receiver<(Level, String)> {
    let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
    *QUEUE.lock().unwrap_or_else(|p| p.into_inner()) = Some(queue);
    lines
}

/// Lines dropped since the last call.
pub fn take_dropped() -> u64 {
    DROPPED.swap(0, Ordering::Relaxed)
}

/// `warning!`-like: `log_warning!("realtime: …", …)`.
#[macro_export]
macro_rules! log_warning {
    ($($arg:tt)*) => { $crate::bridge::log::emit($crate::bridge::log::Level::Warning, format!($($arg)*)) };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::bridge::log::emit($crate::bridge::log::Level::Info, format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse(" Warning "), Some(Level::Warning));
        assert_eq!(Level::parse("verbose"), None);
        assert!(Level::Warning < Level::Info);
    }
}
