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

/// An event serialized to its JSON fields, without the enclosing braces, ready to be framed.
///
/// Serializing happens before the log lock is taken, so the lock covers only framing,
/// hashing and the write.
#[derive(Debug)]
pub(crate) struct EncodedEvent(Vec<u8>);

/// Serializes an event's fields.
pub(crate) fn encode_event(event: &Event) -> Result<EncodedEvent, AuditError> {
    let json = serde_json::to_vec(event).map_err(|err| AuditError::Encode(err.to_string()))?;
    // An `Event` always serializes to a non-empty object (`time` is mandatory): `{...}`.
    match json.as_slice() {
        [b'{', fields @ .., b'}'] if !fields.is_empty() => Ok(EncodedEvent(fields.to_vec())),
        _ => Err(AuditError::Encode(
            "event did not serialize to a non-empty JSON object".to_string(),
        )),
    }
}

/// Appends the complete line (with `'\n'`) for record `seq` to `out` and returns its hash.
pub(crate) fn append_line(seq: u64, prev: &str, event: &EncodedEvent, out: &mut Vec<u8>) -> String {
    let start = out.len();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(&event.0);
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\"}");
    let hash = hex::encode(Sha256::digest(&out[start..]));
    out.pop(); // the body's closing brace; the suffix brings its own
    out.extend_from_slice(HASH_KEY);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(HASH_END);
    out.push(b'\n');
    hash
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
    Ok(hex::encode(hasher.finalize()))
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
