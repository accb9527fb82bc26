//! The `aws-chunked` body of a streamed upload: decoded as it arrives, each chunk's signature
//! checked (signed modes) before any of its bytes are passed on, trailing headers read.

use hmac::Mac;
use sha2::{Digest, Sha256};

use crate::sigv4::{hmac, Verified, EMPTY_SHA256};

/// The largest chunk accepted: a signed chunk is held whole until its signature is checked.
pub const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// The longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Trailing headers accepted.
const MAX_TRAILERS: usize = 16;

/// Why an `aws-chunked` body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed aws-chunked body: {0}")]
    Malformed(String),
    #[error("chunk {0} does not carry a valid signature")]
    BadSignature(u64),
    #[error("the trailing headers do not carry a valid signature")]
    BadTrailerSignature,
    #[error("the body ended before its final chunk")]
    Truncated,
}

enum State {
    /// Reading a chunk header line.
    Header,
    /// Reading `remaining` data bytes of chunk `size` (signed: held until complete).
    Data {
        size: usize,
        remaining: usize,
        signature: Option<String>,
    },
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// After the final chunk: trailing header lines up to an empty one.
    Trailers,
    Done,
}

/// Decodes one `aws-chunked` body.
pub struct ChunkDecoder {
    signing: Option<Verified>,
    previous: String,
    state: State,
    /// Received bytes not consumed yet.
    pending: Vec<u8>,
    /// A signed chunk's data so far.
    chunk: Vec<u8>,
    chunks: u64,
    decoded: u64,
    trailers: Vec<(String, String)>,
    trailer_signature: Option<String>,
    /// The trailers the request announced (`x-amz-trailer`), lower-cased.
    announced: Vec<String>,
}

impl ChunkDecoder {
    /// For `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: chunk signatures chain from the
    /// request's own.
    pub fn signed(verified: Verified) -> ChunkDecoder {
        let previous = verified.seed.clone();
        ChunkDecoder::new(Some(verified), previous)
    }

    /// For `STREAMING-UNSIGNED-PAYLOAD-TRAILER`.
    pub fn unsigned() -> ChunkDecoder {
        ChunkDecoder::new(None, String::new())
    }

    fn new(signing: Option<Verified>, previous: String) -> ChunkDecoder {
        ChunkDecoder {
            signing,
            previous,
            state: State::Header,
            pending: Vec::new(),
            chunk: Vec::new(),
            chunks: 0,
            decoded: 0,
            trailers: Vec::new(),
            trailer_signature: None,
            announced: Vec::new(),
        }
    }

    /// The request's `x-amz-trailer` header: exactly these trailers must follow the final
    /// chunk (and only checksums, `x-amz-checksum-*`, are accepted there).
    pub fn announcing(mut self, header: Option<&str>) -> ChunkDecoder {
        self.announced = header
            .unwrap_or_default()
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        self
    }

    /// Payload bytes decoded so far.
    pub fn decoded_len(&self) -> u64 {
        self.decoded
    }

    /// The trailing headers (checksums), once the body is complete.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Whether the final chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds received bytes; appends the payload they complete to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        self.pending.extend_from_slice(input);
        let mut at = 0;
        let result = self.decode(&mut at, out);
        self.pending.drain(..at);
        result
    }

    /// Call at the end of the body: fails unless it was complete.
    pub fn finish(&self) -> Result<(), ChunkError> {
        if self.is_done() {
            Ok(())
        } else {
            Err(ChunkError::Truncated)
        }
    }

    fn decode(&mut self, at: &mut usize, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        loop {
            let input = &self.pending[*at..];
            match &mut self.state {
                State::Header => {
                    let Some(line) = take_line(input)? else {
                        return Ok(());
                    };
                    *at += line.len() + 2;
                    let line = std::str::from_utf8(line)
                        .map_err(|_| ChunkError::Malformed("chunk header is not text".into()))?;
                    let (size, signature) = match line.split_once(';') {
                        Some((size, ext)) => {
                            let signature =
                                ext.strip_prefix("chunk-signature=").ok_or_else(|| {
                                    ChunkError::Malformed(format!(
                                        "unknown chunk extension {ext:?}"
                                    ))
                                })?;
                            (size, Some(signature.to_owned()))
                        }
                        None => (line, None),
                    };
                    // Hex digits only: no sign, no spaces, that another parser could read
                    // differently.
                    if size.is_empty()
                        || size.len() > 16
                        || !size.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(ChunkError::Malformed(format!("bad chunk size {size:?}")));
                    }
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| ChunkError::Malformed(format!("bad chunk size {size:?}")))?;
                    if size > MAX_CHUNK {
                        return Err(ChunkError::Malformed(format!(
                            "a chunk of {size} bytes is over the {MAX_CHUNK}-byte limit"
                        )));
                    }
                    if self.signing.is_some() != signature.is_some() {
                        return Err(ChunkError::Malformed(
                            "chunk signatures must be present exactly when the payload is signed"
                                .into(),
                        ));
                    }
                    self.chunks += 1;
                    if size == 0 {
                        self.check_chunk(signature.as_deref(), &[])?;
                        self.state = State::Trailers;
                    } else {
                        self.state = State::Data {
                            size,
                            remaining: size,
                            signature,
                        };
                    }
                }
                State::Data {
                    size,
                    remaining,
                    signature,
                } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let take = input.len().min(*remaining);
                    *remaining -= take;
                    *at += take;
                    if signature.is_none() {
                        out.extend_from_slice(&input[..take]);
                        self.decoded += take as u64;
                    } else {
                        self.chunk.extend_from_slice(&input[..take]);
                    }
                    if *remaining == 0 {
                        let (size, signature) = (*size, signature.take());
                        if signature.is_some() {
                            let chunk = std::mem::take(&mut self.chunk);
                            self.check_chunk(signature.as_deref(), &chunk)?;
                            out.extend_from_slice(&chunk);
                            self.decoded += size as u64;
                        }
                        self.state = State::DataEnd;
                    }
                }
                State::DataEnd => {
                    if input.len() < 2 {
                        return Ok(());
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed(
                            "chunk data is not followed by CRLF".into(),
                        ));
                    }
                    *at += 2;
                    self.state = State::Header;
                }
                State::Trailers => {
                    let Some(line) = take_line(input)? else {
                        return Ok(());
                    };
                    *at += line.len() + 2;
                    if line.is_empty() {
                        self.check_trailers()?;
                        self.state = State::Done;
                        continue;
                    }
                    let line = std::str::from_utf8(line)
                        .map_err(|_| ChunkError::Malformed("trailer is not text".into()))?;
                    let (name, value) = line
                        .split_once(':')
                        .ok_or_else(|| ChunkError::Malformed("trailer without ':'".into()))?;
                    let (name, value) = (
                        name.to_ascii_lowercase(),
                        value.trim_matches([' ', '\t']).to_owned(),
                    );
                    if name == "x-amz-trailer-signature" && self.signing.is_some() {
                        self.trailer_signature = Some(value);
                    } else if !is_checksum_name(&name) || !is_base64(&value) {
                        // A target reads what follows the final chunk as it likes: only
                        // checksums, in their plain form, go there.
                        return Err(ChunkError::Malformed(format!(
                            "trailer {name:?} is not a checksum"
                        )));
                    } else if self.trailers.len() == MAX_TRAILERS
                        || self.trailers.iter().any(|(n, _)| *n == name)
                    {
                        return Err(ChunkError::Malformed(
                            "repeated or too many trailers".into(),
                        ));
                    } else {
                        self.trailers.push((name, value));
                    }
                }
                State::Done => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    return Err(ChunkError::Malformed("bytes after the final chunk".into()));
                }
            }
        }
    }

    fn check_chunk(&mut self, signature: Option<&str>, data: &[u8]) -> Result<(), ChunkError> {
        let (Some(signing), Some(signature)) = (&self.signing, signature) else {
            return Ok(());
        };
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            signing.amz_date,
            signing.scope,
            self.previous,
            hex::encode(Sha256::digest(data))
        );
        let presented =
            hex::decode(signature).map_err(|_| ChunkError::BadSignature(self.chunks))?;
        let mut mac = hmac(&signing.key);
        mac.update(to_sign.as_bytes());
        mac.verify_slice(&presented)
            .map_err(|_| ChunkError::BadSignature(self.chunks))?;
        self.previous = signature.to_ascii_lowercase();
        Ok(())
    }

    fn check_trailers(&self) -> Result<(), ChunkError> {
        let mut received: Vec<&str> = self.trailers.iter().map(|(n, _)| n.as_str()).collect();
        let mut announced: Vec<&str> = self.announced.iter().map(String::as_str).collect();
        received.sort_unstable();
        announced.sort_unstable();
        if received != announced {
            return Err(ChunkError::Malformed(format!(
                "the trailers sent ({}) are not the ones x-amz-trailer announced ({})",
                received.join(", "),
                announced.join(", ")
            )));
        }
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        let Some(signature) = &self.trailer_signature else {
            // Signed without trailers: nothing may follow the final chunk.
            return if self.trailers.is_empty() {
                Ok(())
            } else {
                Err(ChunkError::BadTrailerSignature)
            };
        };
        let mut canonical = String::new();
        for (name, value) in &self.trailers {
            canonical.push_str(&format!("{name}:{value}\n"));
        }
        let to_sign = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            signing.amz_date,
            signing.scope,
            self.previous,
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let presented = hex::decode(signature).map_err(|_| ChunkError::BadTrailerSignature)?;
        let mut mac = hmac(&signing.key);
        mac.update(to_sign.as_bytes());
        mac.verify_slice(&presented)
            .map_err(|_| ChunkError::BadTrailerSignature)
    }
}

/// `x-amz-checksum-` and a lower-case algorithm name.
fn is_checksum_name(name: &str) -> bool {
    name.strip_prefix("x-amz-checksum-").is_some_and(|alg| {
        !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

fn is_base64(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// The next CRLF-terminated line of `input` (without the CRLF), if complete. A line with a
/// bare CR, LF or NUL is refused: another parser could split it elsewhere.
fn take_line(input: &[u8]) -> Result<Option<&[u8]>, ChunkError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(end) if input[..end].iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) => Err(
            ChunkError::Malformed("a bare CR, LF or NUL in a chunk header or trailer".into()),
        ),
        Some(end) => Ok(Some(&input[..end])),
        None if input.len() > MAX_LINE => Err(ChunkError::Malformed(
            "chunk header or trailer line too long".into(),
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn verified() -> Verified {
        Verified {
            key: [7; 32],
            seed: "aa".repeat(32),
            amz_date: "20261127T000000Z".into(),
            scope: "20261127/us-east-1/s3/aws4_request".into(),
        }
    }

    /// Builds a signed aws-chunked body the way an SDK does.
    fn signed_body(v: &Verified, chunks: &[&[u8]]) -> Vec<u8> {
        let mut previous = v.seed.clone();
        let mut body = Vec::new();
        for data in chunks.iter().copied().chain([&[][..]]) {
            let to_sign = format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{EMPTY_SHA256}\n{}",
                v.amz_date,
                v.scope,
                hex::encode(Sha256::digest(data))
            );
            let mut mac = hmac(&v.key);
            mac.update(to_sign.as_bytes());
            previous = hex::encode(mac.finalize().into_bytes());
            body.extend_from_slice(
                format!("{:x};chunk-signature={previous}\r\n", data.len()).as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        // The final, empty chunk's CRLF ends the body (there are no trailers).
        body
    }

    #[test]
    fn signed_chunks_decode_in_any_split_and_a_changed_byte_is_caught() {
        let v = verified();
        let body = signed_body(&v, &[b"hello ", b"world"]);
        for step in [1, 3, 7, body.len()] {
            let mut decoder = ChunkDecoder::signed(v.clone());
            let mut out = Vec::new();
            for piece in body.chunks(step) {
                decoder.push(piece, &mut out).unwrap();
            }
            decoder.finish().unwrap();
            assert_eq!(out, b"hello world");
        }
        let mut tampered = body.clone();
        let at = body.windows(5).position(|w| w == b"world").unwrap();
        tampered[at] = b'W';
        let mut decoder = ChunkDecoder::signed(v.clone());
        let mut out = Vec::new();
        assert_eq!(
            decoder.push(&tampered, &mut out),
            Err(ChunkError::BadSignature(2))
        );
        // The first chunk was passed on; the bad one was not.
        assert_eq!(out, b"hello ");

        let mut decoder = ChunkDecoder::signed(v);
        decoder
            .push(&body[..body.len() - 4], &mut Vec::new())
            .unwrap();
        assert_eq!(decoder.finish(), Err(ChunkError::Truncated));
    }

    #[test]
    fn unsigned_chunks_with_a_checksum_trailer() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:abc=\r\n\r\n";
        let announced = Some("x-amz-checksum-crc32");
        let mut decoder = ChunkDecoder::unsigned().announcing(announced);
        let mut out = Vec::new();
        decoder.push(body, &mut out).unwrap();
        decoder.finish().unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(
            decoder.trailers(),
            [("x-amz-checksum-crc32".to_string(), "abc=".to_string())]
        );
        let mut decoder = ChunkDecoder::unsigned();
        assert!(decoder.push(b"5;chunk-signature=00\r\n", &mut out).is_err());
        let mut decoder = ChunkDecoder::unsigned();
        assert!(decoder.push(b"ffffffff\r\n", &mut out).is_err());
    }

    /// The body goes on to the target as it came, so nothing in it may read two ways.
    #[test]
    fn unsigned_chunks_are_held_to_one_reading() {
        let refused = |body: &[u8], announced: Option<&str>| {
            let mut decoder = ChunkDecoder::unsigned().announcing(announced);
            let mut out = Vec::new();
            decoder
                .push(body, &mut out)
                .and_then(|()| decoder.finish())
                .is_err()
        };
        let crc = Some("x-amz-checksum-crc32");
        assert!(!refused(
            b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAA==\r\n\r\n",
            crc
        ));
        // Not announced, or announced and missing.
        assert!(refused(
            b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAA==\r\n\r\n",
            None
        ));
        assert!(refused(b"1\r\na\r\n0\r\n\r\n", crc));
        // Only checksums, once, in base64.
        let copy = b"1\r\na\r\n0\r\nx-amz-copy-source:secret/pw.csv\r\n\r\n";
        assert!(refused(copy, Some("x-amz-copy-source")));
        let twice =
            b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAA==\r\nx-amz-checksum-crc32:AAAA==\r\n\r\n";
        assert!(refused(twice, crc));
        assert!(refused(
            b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AA AA\r\n\r\n",
            crc
        ));
        // A bare LF that another parser would take for a line end.
        let smuggled = b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAA==\nx-amz-copy-source:x/y\r\n\r\n";
        assert!(refused(smuggled, crc));
        assert!(refused(b"a\n \r\n0123456789\r\n0\r\n\r\n", None));
        // Sizes in plain hex only.
        assert!(refused(b"+1\r\na\r\n0\r\n\r\n", None));
        assert!(refused(b" 1\r\na\r\n0\r\n\r\n", None));
        // No trailer signature without a signed payload.
        let signature = b"1\r\na\r\n0\r\nx-amz-trailer-signature:00\r\n\r\n";
        assert!(refused(signature, None));
    }
}
