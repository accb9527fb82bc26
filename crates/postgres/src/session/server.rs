//! Server to client: forward the target's bytes as they arrive, settle the answer queue
//! frame by frame, write the gateway's own answers at the right place, record outcomes.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use sluice_core::{Pipeline, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::mask::{Masker, MAX_MASKED_ROW};
use super::{io_reason, lock, SessionEnd, Shared, READ_BUFFER};
use crate::codec;
use crate::stream::BoxStream;

/// Server messages whose body the gateway reads are buffered whole up to this size.
const MAX_INSPECTED_SERVER_MESSAGE: usize = 16 << 20;

pub(super) struct ServerToClient<P> {
    pub pipeline: Arc<P>,
    pub info: Arc<SessionInfo>,
    pub shared: Arc<Shared>,
    pub upstream: ReadHalf<BoxStream>,
    pub client: WriteHalf<BoxStream>,
    /// The client stopped reading: answers are still read and recorded, not written.
    pub client_gone: bool,
    /// The pipeline ends the session through this.
    pub end: Arc<SessionEnd>,
    /// Rewrites results for a session that masking rules cover.
    pub masker: Option<Masker>,
    /// Output assembled from the read buffer once a frame in it was replaced or dropped:
    /// written with one call per read, not one per rewritten row.
    pub out: BytesMut,
}

/// Rows at least this large are masked with `block_in_place`: scanning them takes long
/// enough that the other sessions on this worker thread should move elsewhere meanwhile.
const LARGE_ROW: usize = 256 << 10;

fn scan_off_runtime<T>(len: usize, scan: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len >= LARGE_ROW && multi_thread {
        tokio::task::block_in_place(scan)
    } else {
        scan()
    }
}

/// Server messages the gateway must read whole.
fn needs_body(tag: u8) -> bool {
    matches!(tag, b'C' | b'E' | b'Z' | b't' | b'S')
}

impl<P: Pipeline> ServerToClient<P> {
    /// Runs until the server closes the connection.
    pub async fn run(mut self) -> Result<(), String> {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        // Bytes of the current pass-through frame not yet received.
        let mut passthrough: usize = 0;
        // The pipeline asked to end the session; done at the next frame boundary.
        let mut end_due = false;
        loop {
            tokio::select! {
                read = self.upstream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => {
                            let reason = io_reason(e);
                            // Between frames the client can still be told why (a lost
                            // remote agent, a reset connection); mid-frame it cannot.
                            if passthrough == 0 && buf.is_empty() {
                                self.target_lost(&reason).await;
                            }
                            return Err(reason);
                        }
                    }
                }
                () = self.shared.wake.notified() => {
                    if passthrough == 0 {
                        self.write_due_injections().await?;
                        self.write_notices().await;
                    }
                    continue;
                }
                () = self.end.due.notified(), if !end_due => {
                    end_due = true;
                }
            }
            if end_due && passthrough == 0 {
                return Err(self.end_session().await);
            }
            self.process(&mut buf, &mut passthrough).await?;
            if end_due && passthrough == 0 {
                return Err(self.end_session().await);
            }
            self.shared.progress.notify_one();
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
        }
    }

    /// Writes to the client; once the client is gone, answers are dropped so that the
    /// server's remaining answers can still be read and recorded.
    async fn send(&mut self, bytes: &[u8]) {
        if self.client_gone || bytes.is_empty() {
            return;
        }
        if self.client.write_all(bytes).await.is_err() {
            self.client_gone = true;
        }
    }

    /// Sends `bytes` now when nothing rewritten is waiting; otherwise queues them behind it.
    async fn emit(&mut self, bytes: &[u8]) {
        if self.out.is_empty() {
            self.send(bytes).await;
        } else {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Writes the assembled output, keeping its buffer for the next read.
    async fn flush_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.out);
        self.send(&out).await;
        self.out = out;
        self.out.clear();
    }

    /// Forwards everything complete in `buf`, settling the queue frame by frame.
    async fn process(&mut self, buf: &mut BytesMut, passthrough: &mut usize) -> Result<(), String> {
        let mut pos = 0; // next unexamined byte
        let mut written = 0; // bytes of buf already sent to the client
        if *passthrough > 0 {
            let n = (*passthrough).min(buf.len());
            pos = n;
            *passthrough -= n;
        }
        // Injections are written at frame boundaries only, before the next frame is
        // observed, so they land exactly where the client expects them.
        let mut inject_due = *passthrough == 0 && lock(&self.shared.state).front_is_inject();
        loop {
            if inject_due && *passthrough == 0 {
                self.emit(&buf[written..pos]).await;
                self.flush_out().await;
                written = pos;
                self.write_due_injections().await?;
            }
            if *passthrough > 0 {
                break;
            }
            let Some(h) = codec::parse_header(&buf[pos..]).map_err(|e| e.to_string())? else {
                break;
            };
            let total = 5 + h.body_len;
            let available = buf.len() - pos;
            if available < total {
                let masked_row = matches!(h.tag, b'D' | b'd')
                    && self.masker.as_ref().is_some_and(Masker::inspecting);
                let masked_message =
                    self.masker.is_some() && matches!(h.tag, b'T' | b'H' | b'N' | b'A' | b'V');
                if needs_body(h.tag) || masked_message || masked_row {
                    let limit = if masked_row {
                        MAX_MASKED_ROW
                    } else {
                        MAX_INSPECTED_SERVER_MESSAGE
                    };
                    if h.body_len > limit {
                        let reason = format!(
                            "server message of {} bytes is too large{}",
                            h.body_len,
                            if masked_row { " to mask" } else { "" }
                        );
                        self.emit(&buf[written..pos]).await;
                        self.flush_out().await;
                        let mut frames = BytesMut::new();
                        codec::error_response(
                            &mut frames,
                            "FATAL",
                            "54000",
                            &format!("sluice: {reason}"),
                        );
                        self.send(&frames).await;
                        let _ = self.client.flush().await;
                        return Err(reason);
                    }
                    break; // wait for the rest of this frame
                }
                // Large DataRow/CopyData: account for it now, stream its bytes as they
                // come. An injection this makes due waits for the frame's end.
                let _ = self.observe(h.tag, &[]);
                *passthrough = total - available;
                pos = buf.len();
                break;
            }
            let body = &buf[pos + 5..pos + total];
            let masked = match self.masker.as_mut() {
                Some(m) => match h.tag {
                    b'T' | b'H' => {
                        let (sql, unsafe_encoding) = {
                            let state = lock(&self.shared.state);
                            (state.current_sql(), state.unsafe_encoding.is_some())
                        };
                        m.note_statement(sql.clone());
                        if h.tag == b'T' {
                            m.row_description(body, sql.as_deref()).await;
                        } else {
                            m.copy_out(body, sql.as_deref(), unsafe_encoding).await;
                        }
                        None
                    }
                    b'D' => scan_off_runtime(body.len(), || m.data_row(body)),
                    b'd' => scan_off_runtime(body.len(), || m.copy_data(body)),
                    b'E' | b'N' => {
                        let sql = lock(&self.shared.state).current_sql();
                        m.note_statement(sql.clone());
                        m.scrub_message(h.tag, body, sql.as_deref())
                    }
                    b'A' => m.scrub_notification(body),
                    b'V' => m.function_result(body),
                    _ => None,
                },
                None => None,
            };
            let (replacement, suppressed);
            // The record of an error gets its masked text too.
            let observed = match (&masked, h.tag) {
                (Some(frame), b'E') => &frame[5..],
                _ => body,
            };
            (inject_due, replacement, suppressed) = self.observe(h.tag, observed);
            if suppressed {
                // The answer to the gateway's own Describe: not the client's.
                self.emit(&buf[written..pos]).await;
                written = pos + total;
            } else if let Some(frames) = replacement {
                // The server's error answered a message the gateway refused: the client
                // sees the refusal in its place.
                self.emit(&buf[written..pos]).await;
                self.out.extend_from_slice(&frames);
                written = pos + total;
            } else if let Some(frame) = masked {
                self.emit(&buf[written..pos]).await;
                self.out.extend_from_slice(&frame);
                written = pos + total;
                if let Some(m) = self.masker.as_mut() {
                    m.recycle(frame);
                }
            }
            pos += total;
        }
        self.emit(&buf[written..pos]).await;
        self.flush_out().await;
        if *passthrough == 0 {
            self.write_notices().await;
        }
        if !self.client_gone && self.client.flush().await.is_err() {
            self.client_gone = true;
        }
        buf.advance(pos);
        Ok(())
    }

    /// Tells the client why the gateway ends the session (FATAL 57P01) and returns the reason.
    async fn end_session(&mut self) -> String {
        let message = self
            .end
            .message()
            .unwrap_or_else(|| "terminating connection: ended by sluice".to_owned());
        let mut frames = BytesMut::new();
        codec::error_response(&mut frames, "FATAL", "57P01", &message);
        self.send(&frames).await;
        if !self.client_gone {
            let _ = self.client.flush().await;
        }
        message
    }

    /// Tells the client the target connection broke (FATAL 08006).
    async fn target_lost(&mut self, reason: &str) {
        let mut frames = BytesMut::new();
        let message =
            format!("terminating connection: the connection to the target was lost ({reason})");
        codec::error_response(&mut frames, "FATAL", "08006", &message);
        self.send(&frames).await;
        if !self.client_gone {
            let _ = self.client.flush().await;
        }
    }

    /// Writes pending notices; call only at a frame boundary of the client stream.
    async fn write_notices(&mut self) {
        let notices = std::mem::take(&mut *lock(&self.shared.notices));
        if notices.is_empty() {
            return;
        }
        self.send(&notices).await;
        if !self.client_gone && self.client.flush().await.is_err() {
            self.client_gone = true;
        }
    }

    /// Settles one frame; records outcomes. Returns whether an injection is now due, the
    /// frames to send in this frame's place when it answered a refusal, and whether the
    /// frame answered the gateway's own message (read under the same lock: this runs for
    /// every server frame).
    fn observe(&mut self, tag: u8, body: &[u8]) -> (bool, Option<BytesMut>, bool) {
        let (mut outcomes, inject_due, replacement, suppressed) = {
            let mut state = lock(&self.shared.state);
            let outcomes = state.observe(tag, body);
            (
                outcomes,
                state.front_is_inject(),
                state.take_replacement(),
                state.take_suppressed(),
            )
        };
        if let Some(m) = self.masker.as_mut() {
            if matches!(tag, b'C' | b'I' | b's' | b'E' | b'V') {
                let masked = m.finish();
                if let Some(o) = outcomes.first_mut() {
                    o.masked = masked;
                }
            }
        }
        for o in outcomes {
            self.pipeline.outcome(&self.info, o);
        }
        (inject_due, replacement, suppressed)
    }

    /// Writes every injection now at the front of the queue. An injection that closes the
    /// session (a FATAL error) ends this direction with its reason.
    async fn write_due_injections(&mut self) -> Result<(), String> {
        loop {
            let Some((frames, close_after)) = lock(&self.shared.state).pop_inject() else {
                return Ok(());
            };
            self.send(&frames).await;
            if !self.client_gone && self.client.flush().await.is_err() {
                self.client_gone = true;
            }
            if close_after {
                return Err("closed by the gateway after a protocol error".into());
            }
        }
    }
}
