//! Bodies that stream between the client and the target without being held whole: the
//! client's upload checked on the way (its declared SHA-256, or its chunk signatures), and
//! both directions counted for the record.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use sha2::{Digest, Sha256};
use sluice_aws::{ChunkDecoder, ChunkError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Why an upload was cut off on its way to the target.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body does not match its declared x-amz-content-sha256")]
    HashMismatch,
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("the client's upload failed: {0}")]
    Client(#[from] hyper::Error),
}

/// Reads `body` whole, up to `max` bytes.
pub async fn read_whole(mut body: BoxBody, max: usize) -> Result<Bytes, String> {
    use http_body_util::BodyExt;
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > max {
                return Err("length limit exceeded".into());
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(whole))
}

/// What an upload must pass on its way: fed every frame, asked once at the end.
pub trait UploadCheck {
    fn update(&mut self, data: &[u8]) -> Result<(), UploadError>;
    fn finish(&mut self) -> Result<(), UploadError>;
}

/// Passes a body on while `C` checks it. Each frame is held until the next one arrives,
/// and the last only once the check passed: a body that fails it never reaches the target
/// whole, whatever the target checks itself.
pub struct Checked<C> {
    inner: Incoming,
    check: C,
    held: Option<Bytes>,
    done: bool,
}

impl<C: UploadCheck> Checked<C> {
    pub fn new(inner: Incoming, check: C) -> Checked<C> {
        Checked {
            inner,
            check,
            held: None,
            done: false,
        }
    }
}

impl<C: UploadCheck + Unpin> Body for Checked<C> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.held.take().map(|b| Ok(Frame::data(b))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(UploadError::Client(e).into())))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = this.check.update(&data) {
                        this.held = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if let Some(previous) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(previous))));
                    }
                }
                Poll::Ready(None) => {
                    if let Err(e) = this.check.finish() {
                        this.held = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    this.done = true;
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body's SHA-256 against the one the client signed.
pub struct Sha256Matches {
    expected: String,
    hasher: Sha256,
}

impl Sha256Matches {
    pub fn new(expected_hex: &str) -> Sha256Matches {
        Sha256Matches {
            expected: expected_hex.to_ascii_lowercase(),
            hasher: Sha256::new(),
        }
    }
}

impl UploadCheck for Sha256Matches {
    fn update(&mut self, data: &[u8]) -> Result<(), UploadError> {
        self.hasher.update(data);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UploadError> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual == self.expected {
            Ok(())
        } else {
            Err(UploadError::HashMismatch)
        }
    }
}

/// An unsigned `aws-chunked` upload that goes on as it came, for the target to decode and
/// to check against its trailing checksum: decoded here only to hold it to its framing and
/// its declared length.
pub struct ChunkFraming {
    decoder: ChunkDecoder,
    declared: Option<u64>,
}

impl ChunkFraming {
    pub fn new(decoder: ChunkDecoder, declared: Option<u64>) -> ChunkFraming {
        ChunkFraming { decoder, declared }
    }
}

impl UploadCheck for ChunkFraming {
    fn update(&mut self, data: &[u8]) -> Result<(), UploadError> {
        // The payload itself is not needed here; only whether it decodes.
        let mut scratch = Vec::new();
        self.decoder.push(data, &mut scratch)?;
        if self
            .declared
            .is_some_and(|n| self.decoder.decoded_len() > n)
        {
            return Err(UploadError::Chunk(ChunkError::Malformed(
                "more data than x-amz-decoded-content-length".into(),
            )));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UploadError> {
        self.decoder.finish()?;
        if self
            .declared
            .is_some_and(|n| self.decoder.decoded_len() != n)
        {
            return Err(UploadError::Chunk(ChunkError::Truncated));
        }
        Ok(())
    }
}

/// Decodes an `aws-chunked` upload (checking each chunk's signature before passing its
/// bytes on) into the plain payload the target gets.
pub struct Dechunked {
    inner: Incoming,
    decoder: ChunkDecoder,
    /// The payload length the client declared (`x-amz-decoded-content-length`).
    declared: Option<u64>,
    finished: bool,
}

impl Dechunked {
    pub fn new(inner: Incoming, decoder: ChunkDecoder, declared: Option<u64>) -> Dechunked {
        Dechunked {
            inner,
            decoder,
            declared,
            finished: false,
        }
    }
}

impl Body for Dechunked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(UploadError::Client(e).into())))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let mut out = Vec::new();
                    if let Err(e) = this.decoder.push(&data, &mut out) {
                        return Poll::Ready(Some(Err(UploadError::Chunk(e).into())));
                    }
                    if this
                        .declared
                        .is_some_and(|n| this.decoder.decoded_len() > n)
                    {
                        return Poll::Ready(Some(Err(UploadError::Chunk(ChunkError::Malformed(
                            "more data than x-amz-decoded-content-length".into(),
                        ))
                        .into())));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    if let Err(e) = this.decoder.finish() {
                        return Poll::Ready(Some(Err(UploadError::Chunk(e).into())));
                    }
                    if this
                        .declared
                        .is_some_and(|n| this.decoder.decoded_len() != n)
                    {
                        return Poll::Ready(Some(Err(
                            UploadError::Chunk(ChunkError::Truncated).into()
                        )));
                    }
                }
            }
        }
    }
}

/// What a body reports when it ends or is dropped: bytes passed and whether it ended
/// cleanly.
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send + Sync>;

/// Counts the bytes of a body as they pass; calls `on_end` once.
pub struct Counted<B: Body> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl<B: Body> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>, on_end: Option<OnEnd>) -> Counted<B> {
        Counted {
            inner,
            bytes,
            on_end,
        }
    }

    fn end(&mut self, clean: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes.load(Ordering::Relaxed), clean);
        }
    }
}

impl<B: Body> Drop for Counted<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away mid-transfer (unless there was
        // nothing left to send, which the HTTP server does not poll for).
        let clean = self.inner.is_end_stream();
        self.end(clean);
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.end(true);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
