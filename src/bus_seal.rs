//! Sealing bus messages so that only this cluster's workers can write them.
//!
//! `pg_logical_emit_message` is executable by PUBLIC, so any role that can
//! connect can put a message with the bus prefix into WAL. Each bus message
//! therefore carries an HMAC-SHA256 under a key kept in the data directory
//! (`realtime_bus.key`, readable by the server's OS user only; a standby made
//! with `pg_basebackup` gets it with the rest of the files). A reader drops
//! what does not verify.
//!
//! A sealed message also names where WAL insertion stood just before it was
//! written, the process that wrote it and a counter of that process's
//! messages. A copy of a genuine message re-emitted later (a replay) ends
//! further than [`WINDOW`] past that position, or repeats a counter the
//! reader has already seen within the window: either way it is dropped.
//!
//! Layout: `body ␟ position(16 hex) writer(16 hex) counter(16 hex) mac(64 hex)`.
//! Pure: no Postgres.

use ring::hmac;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// The key's length in bytes.
pub const KEY_BYTES: usize = 32;
/// How far (in WAL bytes) a message may end past the insert position its
/// writer read just before writing it. Other backends insert meanwhile, but
/// only for the microseconds between the two.
pub const WINDOW: u64 = 64 * 1024 * 1024;
const SEPARATOR: u8 = 0x1f;
/// The separator, three 16-digit words and the 64-digit MAC.
pub const TRAILER: usize = 1 + 3 * 16 + 64;
/// Bound on the writers a reader remembers at once.
const MAX_WRITERS: usize = 1024;

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key on this node: nothing can be verified.
    NoKey,
    /// Too short, or the trailer is not hex.
    Malformed,
    /// The MAC does not match: not written with this cluster's key.
    Forged,
    /// A genuine message written again later, or out of its window.
    Replayed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NoKey => "no bus key on this node (realtime_bus.key in the data directory)",
            Refusal::Malformed => "not a sealed bus message",
            Refusal::Forged => "its seal does not verify: not written by a worker of this cluster",
            Refusal::Replayed => "a copy of an earlier bus message",
        })
    }
}

/// The secret both ends share.
pub struct Key(hmac::Key);

impl Key {
    pub fn new(bytes: &[u8; KEY_BYTES]) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The key file's contents: 64 hex digits, surrounding whitespace allowed.
    pub fn parse(text: &str) -> Option<Key> {
        let text = text.trim();
        let mut bytes = [0u8; KEY_BYTES];
        if text.len() != 2 * KEY_BYTES {
            return None;
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Key::new(&bytes))
    }

    /// A fresh key file's contents.
    pub fn generate() -> Option<String> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; KEY_BYTES];
        ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
        Some(hex(&bytes) + "\n")
    }

    fn tag(&self, position: u64, writer: u64, counter: u64, body: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(b"realtime.bus.v3\0");
        context.update(&position.to_be_bytes());
        context.update(&writer.to_be_bytes());
        context.update(&counter.to_be_bytes());
        context.update(body);
        context.sign()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes sealed messages for one process.
pub struct Sealer {
    writer: u64,
    counter: u64,
}

impl Sealer {
    /// `writer` tells this process's messages from others' (random per process).
    pub fn new(writer: u64) -> Sealer {
        Sealer { writer, counter: 0 }
    }

    /// `body` sealed, for writing at a WAL insert position of `position`.
    pub fn seal(&mut self, key: &Key, position: u64, body: &str) -> String {
        self.counter += 1;
        let tag = key.tag(position, self.writer, self.counter, body.as_bytes());
        format!(
            "{body}{}{position:016x}{:016x}{:016x}{}",
            SEPARATOR as char,
            self.writer,
            self.counter,
            hex(tag.as_ref())
        )
    }
}

/// Checks sealed messages in WAL order, for one reader.
#[derive(Default)]
pub struct Verifier {
    /// Per writer: the last counter seen and where that message ended.
    seen: HashMap<u64, (u64, u64)>,
}

impl Verifier {
    /// The body of the message that ends at `end`, if it is genuine and new.
    pub fn open<'a>(&mut self, key: Option<&Key>, end: u64, sealed: &'a [u8]) -> Result<&'a [u8], Refusal> {
        let key = key.ok_or(Refusal::NoKey)?;
        if sealed.len() < TRAILER {
            return Err(Refusal::Malformed);
        }
        let (body, trailer) = sealed.split_at(sealed.len() - TRAILER);
        if trailer[0] != SEPARATOR {
            return Err(Refusal::Malformed);
        }
        let word = |at: usize| -> Result<u64, Refusal> {
            let digits = std::str::from_utf8(&trailer[at..at + 16]).map_err(|_| Refusal::Malformed)?;
            u64::from_str_radix(digits, 16).map_err(|_| Refusal::Malformed)
        };
        let (position, writer, counter) = (word(1)?, word(17)?, word(33)?);
        let mut mac = [0u8; 32];
        for (i, byte) in mac.iter_mut().enumerate() {
            let digits = std::str::from_utf8(&trailer[49 + 2 * i..51 + 2 * i]).map_err(|_| Refusal::Malformed)?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| Refusal::Malformed)?;
        }
        let expected = key.tag(position, writer, counter, body);
        if !bool::from(expected.as_ref().ct_eq(&mac[..])) {
            return Err(Refusal::Forged);
        }
        if end <= position || end - position > WINDOW {
            return Err(Refusal::Replayed);
        }
        if let Some(&(last, _)) = self.seen.get(&writer)
            && counter <= last
        {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= MAX_WRITERS {
            // A writer last heard of more than a window ago can no longer
            // send anything that passes the window check with an old counter.
            self.seen.retain(|_, (_, at)| at.saturating_add(WINDOW) >= end);
            if self.seen.len() >= MAX_WRITERS {
                self.seen.clear();
            }
        }
        self.seen.insert(writer, (counter, end));
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::new(&[n; KEY_BYTES])
    }

    #[test]
    fn a_sealed_message_opens_once() {
        let mut sealer = Sealer::new(7);
        let sealed = sealer.seal(&key(1), 1000, "X{\"a\":1}\n{}");
        let mut verifier = Verifier::default();
        assert_eq!(verifier.open(Some(&key(1)), 1100, sealed.as_bytes()), Ok(&b"X{\"a\":1}\n{}"[..]));
        // The same bytes again, even at once, are a replay.
        assert_eq!(verifier.open(Some(&key(1)), 1200, sealed.as_bytes()), Err(Refusal::Replayed));
        // A later message of the same writer still opens.
        let next = sealer.seal(&key(1), 1300, "B{}");
        assert_eq!(verifier.open(Some(&key(1)), 1400, next.as_bytes()), Ok(&b"B{}"[..]));
    }

    #[test]
    fn a_copy_written_far_later_is_a_replay_even_to_a_new_reader() {
        let sealed = Sealer::new(7).seal(&key(1), 1000, "B{}");
        let mut fresh = Verifier::default();
        assert_eq!(fresh.open(Some(&key(1)), 1000 + WINDOW + 1, sealed.as_bytes()), Err(Refusal::Replayed));
        assert_eq!(fresh.open(Some(&key(1)), 999, sealed.as_bytes()), Err(Refusal::Replayed));
    }

    #[test]
    fn another_key_or_an_edit_does_not_verify() {
        let sealed = Sealer::new(7).seal(&key(1), 1000, "B{\"topic\":\"a\"}");
        assert_eq!(Verifier::default().open(Some(&key(2)), 1100, sealed.as_bytes()), Err(Refusal::Forged));
        let edited = sealed.replacen("\"a\"", "\"b\"", 1);
        assert_eq!(Verifier::default().open(Some(&key(1)), 1100, edited.as_bytes()), Err(Refusal::Forged));
        // Moving the position to fit a later end breaks the MAC too.
        let at = sealed.len() - TRAILER + 1;
        let moved = format!("{}{:016x}{}", &sealed[..at], 5000u64, &sealed[at + 16..]);
        assert_eq!(Verifier::default().open(Some(&key(1)), 5100, moved.as_bytes()), Err(Refusal::Forged));
        assert_eq!(Verifier::default().open(None, 1100, sealed.as_bytes()), Err(Refusal::NoKey));
    }

    #[test]
    fn what_the_old_bus_wrote_is_malformed() {
        let old = br#"X{"origin":"evil","topic":"realtime:secret-room","private":true,"event":"pwned"}
{"msg":"forged"}"#;
        assert_eq!(Verifier::default().open(Some(&key(1)), 10, old), Err(Refusal::Malformed));
        assert_eq!(Verifier::default().open(Some(&key(1)), 10, b""), Err(Refusal::Malformed));
    }

    #[test]
    fn key_files_round_trip() {
        let text = Key::generate().unwrap();
        assert!(Key::parse(&text).is_some());
        assert!(Key::parse("abc").is_none());
        assert!(Key::parse(&"zz".repeat(KEY_BYTES)).is_none());
    }

    #[test]
    fn the_writer_table_stays_bounded() {
        let mut verifier = Verifier::default();
        for writer in 0..(3 * MAX_WRITERS as u64) {
            let end = writer * 2 * WINDOW + 10;
            let sealed = Sealer::new(writer).seal(&key(1), end - 5, "B{}");
            assert!(verifier.open(Some(&key(1)), end, sealed.as_bytes()).is_ok());
        }
        assert!(verifier.seen.len() <= MAX_WRITERS);
    }
}

/// Run for millions of cases by `make fuzz`.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> Key {
        Key::new(&[n; KEY_BYTES])
    }

    proptest! {
        #[test]
        fn a_key_file_is_64_hex_digits_and_nothing_else(text in " ?[0-9a-fA-F]{62,66}\n?|.{0,80}") {
            let digits = text.trim();
            let hex = digits.len() == 2 * KEY_BYTES && digits.bytes().all(|b| b.is_ascii_hexdigit());
            prop_assert_eq!(Key::parse(&text).is_some(), hex);
        }

        #[test]
        fn arbitrary_bytes_never_open_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), end in any::<u64>()) {
            prop_assert!(Verifier::default().open(Some(&key(1)), end, &bytes).is_err());
        }

        #[test]
        fn any_body_round_trips(body in ".{0,200}", position in 0u64..u64::MAX / 2, gap in 1u64..WINDOW) {
            let sealed = Sealer::new(3).seal(&key(9), position, &body);
            prop_assert_eq!(Verifier::default().open(Some(&key(9)), position + gap, sealed.as_bytes()), Ok(body.as_bytes()));
        }
    }
}
