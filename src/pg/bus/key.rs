//! The bus key (`crate::bus_seal`) in the data directory: made by a
//! primary's worker when missing, read by every process that writes or
//! reads bus messages. The data directory is the server's own, so the key is
//! readable by exactly who can read the rest of the database's files; a
//! standby made with `pg_basebackup` (or promoted from one) has the same key.

use crate::bus_seal::Key;
use pgrx::prelude::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

/// Relative to the data directory, every backend's working directory.
pub const FILE: &str = "realtime_bus.key";

static KEY: OnceLock<Option<Key>> = OnceLock::new();

/// The key, read once per process; None if this node has none.
pub fn key() -> Option<&'static Key> {
    KEY.get_or_init(|| std::fs::read_to_string(FILE).ok().and_then(|text| Key::parse(&text))).as_ref()
}

/// On a primary: makes the key file if it is missing (a new file, mode 0600,
/// fsynced, then renamed into place). Logs why if it cannot.
pub fn ensure() {
    if std::fs::metadata(FILE).is_ok() {
        if key().is_none() {
            warning!(
                "realtime: {FILE} in the data directory is not 64 hex digits: bus messages cannot be sealed or read"
            );
        }
        return;
    }
    let Some(text) = Key::generate() else {
        warning!("realtime: no random source for the bus key");
        return;
    };
    let temporary = format!("{FILE}.tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, FILE));
    match written {
        Ok(()) => log!("realtime: made the bus key {FILE} in the data directory (standbys copy it with pg_basebackup)"),
        Err(e) => warning!("realtime: cannot write the bus key {FILE}: {e}"),
    }
}
