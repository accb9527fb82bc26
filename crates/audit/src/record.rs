//! The line format and its hashing.
//!
//! A record is one line: `{"seq":N,<event fields>,"prev":"<hex>","hash":"<hex>"}\n`. The hash
//! is the SHA-256 of the line's *body* — the same object without the `,"hash":"…"` suffix, i.e.
//! ending in `"prev":"…"}`. Because the suffix has a fixed length, a verifier recovers the body
//! bytes exactly by cutting it off; nothing is ever re-serialized.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::AuditError;
use crate::event::Event;

/// The `prev` of the first record (seq 1): 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hex length of a SHA-256 digest.
const HASH_HEX_LEN: usize = 64;
/// What precedes the hash in the suffix.
const HASH_KEY: &[u8] = b",\"hash\":\"";
/// What follows the hash: end of the string and of the object.
const HASH_END: &[u8] = b"\"}";
/// Length of the `,"hash":"<hex>"}` suffix.
const SUFFIX_LEN: usize = HASH_KEY.len() + HASH_HEX_LEN + HASH_END.len();

/// One record of the log as read back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    /// Position in the chain, starting at 1.
    pub seq: u64,
    /// Hash of the previous record ([`GENESIS_HASH`] for seq 1).
    pub prev: String,
    /// Hash of this record's body.
    pub hash: String,
    /// The recorded event.
    #[serde(flatten)]
    pub event: Event,
}

/// An event serialized to a JSON object, ready to be framed: its fields (without the enclosing
/// braces) go into the line.
///
/// Serializing happens before the log lock is taken, so the lock covers only framing,
/// hashing and the write.
#[derive(Debug)]
pub(crate) struct EncodedEvent(Vec<u8>);

impl EncodedEvent {
    /// The object's fields, without its braces.
    fn fields(&self) -> &[u8] {
        &self.0[1..self.0.len() - 1]
    }
}

/// Serializes an event.
pub(crate) fn encode_event(event: &Event) -> Result<EncodedEvent, AuditError> {
    let json = serde_json::to_vec(event).map_err(|err| AuditError::Encode(err.to_string()))?;
    // An `Event` always serializes to a non-empty object (`time` is mandatory): `{...}`.
    // Checked here because `fields` relies on it.
    match json.as_slice() {
        [b'{', fields @ .., b'}'] if !fields.is_empty() => Ok(EncodedEvent(json)),
        _ => Err(AuditError::Encode(
            "event did not serialize to a non-empty JSON object".to_string(),
        )),
    }
}

/// Lowercase hex of a SHA-256 digest.
fn hex_digest(digest: &[u8]) -> [u8; HASH_HEX_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; HASH_HEX_LEN];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    hex
}

/// Appends the complete line (with `'\n'`) for record `seq` to `out` and returns its hash.
pub(crate) fn append_line(seq: u64, prev: &str, event: &EncodedEvent, out: &mut Vec<u8>) -> String {
    let start = out.len();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b',');
    out.extend_from_slice(event.fields());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\"}");
    let hash = hex_digest(&Sha256::digest(&out[start..]));
    out.pop(); // the body's closing brace; the suffix brings its own
    out.extend_from_slice(HASH_KEY);
    out.extend_from_slice(&hash);
    out.extend_from_slice(HASH_END);
    out.push(b'\n');
    // Hex digits are ASCII, so nothing is replaced.
    String::from_utf8_lossy(&hash).into_owned()
}

/// Splits a line (without `'\n'`) into its body minus the closing brace, and the stored hash.
fn split(line: &[u8]) -> Result<(&[u8], &str), String> {
    let Some(body_len) = line.len().checked_sub(SUFFIX_LEN).filter(|len| *len > 0) else {
        return Err("line is too short to hold a record".to_string());
    };
    let (body, suffix) = line.split_at(body_len);
    let hash = &suffix[HASH_KEY.len()..HASH_KEY.len() + HASH_HEX_LEN];
    let well_formed = suffix.starts_with(HASH_KEY)
        && suffix.ends_with(HASH_END)
        && hash
            .iter()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte));
    if !well_formed {
        return Err(
            "line does not end with a \"hash\" field of 64 lowercase hex digits".to_string(),
        );
    }
    // All bytes of `hash` are ASCII, so this cannot fail.
    let hash = std::str::from_utf8(hash).map_err(|err| err.to_string())?;
    Ok((body, hash))
}

/// Parses a line (without `'\n'`) into a record. Does not check its hash.
pub(crate) fn parse_line(line: &[u8]) -> Result<Record, String> {
    let (_, stored_hash) = split(line)?;
    let record: Record = serde_json::from_slice(line).map_err(|err| err.to_string())?;
    if record.hash != stored_hash {
        return Err("the \"hash\" field is not the last field of the line".to_string());
    }
    Ok(record)
}

/// Recomputes the hash of a line (without `'\n'`) from its body bytes.
pub(crate) fn content_hash(line: &[u8]) -> Result<String, String> {
    let (body, _) = split(line)?;
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    Ok(String::from_utf8_lossy(&hex_digest(&hasher.finalize())).into_owned())
}

/// The seq of a line, if it parses at all. Used to tell reordering from loss.
pub(crate) fn peek_seq(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    serde_json::from_slice::<SeqOnly>(line)
        .ok()
        .map(|only| only.seq)
}
