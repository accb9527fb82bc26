//! A PostgreSQL client for callers inside the gateway (the MCP endpoint's tools): it talks
//! the ordinary wire protocol over an in-memory pipe to [`Frontend::serve_in_process`], so
//! its statements take the very path a psql statement takes — token check, policy, review,
//! masking, audit. Written here rather than taken from tokio-postgres, which cannot ask for
//! results in text format (every type rendered by the server, as psql shows it) nor stop a
//! large result after a row limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::codec;
use crate::frontend::{CancelSession, Connector, Frontend, InProcess};
use sluice_core::Pipeline;

/// Memory per direction of the in-memory pipe.
const PIPE_BYTES: usize = 256 * 1024;
/// Largest message accepted from the gateway (one row of a result); read one at a time.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// What a result keeps, whatever the target sends: cells are cut at `MAX_CELL_BYTES` (and
/// marked), rows stop at `MAX_RESULT_BYTES` of kept text (the result is then truncated),
/// and at most `MAX_NOTICES` notices are kept.
pub const MAX_CELL_BYTES: usize = 16 * 1024;
const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
const MAX_NOTICES: usize = 100;

/// An error as PostgreSQL (or the gateway, in its name) reported it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SqlError {
    pub code: String,
    pub message: String,
    /// The gateway said it (a policy refusal, a review hold), not the database.
    pub from_gateway: bool,
}

impl SqlError {
    fn protocol(message: impl Into<String>) -> SqlError {
        SqlError {
            code: "08P01".into(),
            message: message.into(),
            from_gateway: false,
        }
    }

    pub fn new(code: &str, message: String) -> SqlError {
        SqlError {
            code: code.into(),
            message,
            from_gateway: false,
        }
    }
}

/// A result column: its name and the type's OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// What one statement returned, rows as the server rendered them in text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
    /// More rows were there than asked for.
    pub truncated: bool,
    /// The command tag (`SELECT 3`, `INSERT 0 1`); `None` when the result was cut short.
    pub tag: Option<String>,
    /// Notices sent while it ran (a held statement's notice among them).
    pub notices: Vec<String>,
    /// The statement was a COPY TO STDOUT, whose data this client does not keep.
    pub copy_out: bool,
}

/// One session through the gateway.
pub struct InProcessClient {
    pipe: DuplexStream,
    buf: BytesMut,
    frontend: Arc<dyn CancelSession>,
    /// The session's BackendKeyData, for cancelling.
    cancel_key: Option<(i32, [u8; 4])>,
}

/// How long a cancelled statement has to answer before the session is given up.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How often the cancel is sent again while the statement has not answered.
const CANCEL_RETRY: Duration = Duration::from_millis(500);

impl InProcessClient {
    /// Opens a session on `connection` as `user` with `token`, served by `frontend` in this
    /// process.
    pub async fn connect<P: Pipeline, C: Connector>(
        frontend: Arc<Frontend<P, C>>,
        origin: InProcess,
        user: &str,
        token: &str,
        connection: &str,
        application_name: &str,
    ) -> Result<InProcessClient, SqlError> {
        let (pipe, gateway_side) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(
            frontend
                .clone()
                .serve_in_process(Box::new(gateway_side), origin),
        );
        let mut client = InProcessClient {
            pipe,
            buf: BytesMut::new(),
            frontend,
            cancel_key: None,
        };
        let mut out = BytesMut::new();
        codec::startup_message(
            &mut out,
            &[
                ("user", user),
                ("database", connection),
                ("application_name", application_name),
                ("client_encoding", "UTF8"),
            ],
        );
        if let Err(e) = client.send(&out).await {
            // Refused before reading a word (too many clients): the refusal may be waiting.
            return Err(match client.message().await {
                Ok((b'E', body)) => error(&body),
                _ => e,
            });
        }
        loop {
            let (tag, body) = client.message().await?;
            match tag {
                b'R' => match body.get(..4) {
                    Some([0, 0, 0, 3]) => {
                        let mut out = BytesMut::new();
                        codec::password_message(&mut out, token.as_bytes());
                        client.send(&out).await?;
                    }
                    Some([0, 0, 0, 0]) => {}
                    _ => return Err(SqlError::protocol("unexpected authentication request")),
                },
                b'E' => return Err(error(&body)),
                b'K' => {
                    if let (Some(pid), Some(key)) = (body.get(..4), body.get(4..8)) {
                        let pid = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
                        client.cancel_key = Some((pid, [key[0], key[1], key[2], key[3]]));
                    }
                }
                b'Z' => return Ok(client),
                // ParameterStatus, BackendKeyData, notices: nothing to keep.
                _ => {}
            }
        }
    }

    /// Runs one statement with text parameters through the extended protocol, keeping at
    /// most `max_rows` rows (the rest are not fetched). A statement still running after
    /// `timeout`, or when `stop` completes (the caller gave up), is cancelled in the target
    /// with a CancelRequest (SQLSTATE 57014).
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        max_rows: usize,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<QueryResult, SqlError> {
        let (frontend, cancel_key) = (self.frontend.clone(), self.cancel_key);
        let exchange = self.exchange(sql, params, max_rows);
        tokio::pin!(exchange);
        let why = tokio::select! {
            result = &mut exchange => return result,
            () = tokio::time::sleep(timeout) => {
                format!("the statement ran longer than {} s", timeout.as_secs())
            }
            () = stop => "the call was cancelled by its client".to_owned(),
        };
        // A cancel that arrives while the statement is still in the gateway (policy, the
        // audit write) finds the backend idle and is ignored: ask again until it answers.
        let deadline = tokio::time::Instant::now() + CANCEL_GRACE;
        let answer = loop {
            if let Some((pid, key)) = cancel_key {
                frontend.cancel_session(pid, key).await;
            }
            match tokio::time::timeout(CANCEL_RETRY, &mut exchange).await {
                Ok(answer) => break Some(answer),
                Err(_) if tokio::time::Instant::now() >= deadline => break None,
                Err(_) => {}
            }
        };
        match answer {
            Some(Err(e)) if e.code == "57014" => {
                Err(SqlError::new("57014", format!("{why} and was cancelled")))
            }
            Some(result) => result,
            // No answer even to the cancel: it may still finish in the target. Only the
            // audit log can tell.
            None => Err(SqlError::new(
                "57014",
                format!(
                    "{why}; it was asked to stop but did not answer within {} s and may still complete: check before running it again",
                    CANCEL_GRACE.as_secs()
                ),
            )),
        }
    }

    async fn exchange(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        max_rows: usize,
    ) -> Result<QueryResult, SqlError> {
        if sql.contains('\0') || params.iter().flatten().any(|p| p.contains('\0')) {
            return Err(SqlError::new(
                "22021",
                "statement or parameter contains a NUL character".into(),
            ));
        }
        i16::try_from(params.len())
            .map_err(|_| SqlError::new("54000", "too many parameters".into()))?;
        let fetch = i32::try_from(max_rows.saturating_add(1)).unwrap_or(i32::MAX);
        let mut out = BytesMut::new();
        codec::put_parse(&mut out, sql);
        codec::put_bind_texts(&mut out, params);
        codec::put_describe(&mut out, b'P', "");
        codec::put_execute_limited(&mut out, "", fetch);
        codec::sync(&mut out);
        self.send(&out).await?;

        let mut result = QueryResult::default();
        let mut failure = None;
        let mut kept = 0usize;
        loop {
            let (tag, body) = match self.message().await {
                Ok(m) => m,
                // A FATAL error and then the end of the session: the error tells why.
                Err(e) => return Err(failure.unwrap_or(e)),
            };
            match tag {
                b'T' => result.columns = row_description(&body)?,
                b'D' => {
                    let row = (result.rows.len() < max_rows)
                        .then(|| data_row(&body))
                        .transpose()?;
                    // Every cell costs something, even NULL: wide rows of nothing are bounded too.
                    let size = row.as_ref().map_or(0, |r| {
                        r.iter()
                            .map(|c| c.as_ref().map_or(0, String::len) + 8)
                            .sum()
                    });
                    match row {
                        Some(row) if kept + size <= MAX_RESULT_BYTES => {
                            kept += size;
                            result.rows.push(row);
                        }
                        _ => result.truncated = true,
                    }
                }
                b'H' => result.copy_out = true,
                b's' => result.truncated = true,
                b'C' => {
                    let mut pos = 0;
                    let tag = codec::read_cstr_lossy(&body, &mut pos, "CommandComplete")
                        .map_err(|e| SqlError::protocol(e.to_string()))?;
                    result.tag = Some(tag.into_owned());
                }
                b'N' if result.notices.len() < MAX_NOTICES => result.notices.push(bounded_cell(
                    codec::parse_error_fields(&body).message.as_bytes(),
                )),
                // COPY FROM STDIN waits for data this client has none of: abort it. The
                // server ignored the Sync sent during copy-in, so another one follows.
                b'G' => {
                    let mut out = BytesMut::new();
                    codec::copy_fail(&mut out, "COPY FROM STDIN needs a client that sends data");
                    codec::sync(&mut out);
                    self.send(&out).await?;
                }
                b'E' => failure = Some(error(&body)),
                b'Z' => break,
                // ParseComplete, BindComplete, NoData, EmptyQueryResponse, ParameterStatus.
                _ => {}
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let _ = self.pipe.write_all(b"X\0\0\0\x04").await;
        let _ = self.pipe.shutdown().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SqlError> {
        self.pipe
            .write_all(bytes)
            .await
            .map_err(|_| SqlError::protocol("the gateway closed the session"))
    }

    /// The next whole message: its tag and body.
    async fn message(&mut self) -> Result<(u8, BytesMut), SqlError> {
        loop {
            if let Some(h) =
                codec::parse_header(&self.buf).map_err(|e| SqlError::protocol(e.to_string()))?
            {
                if h.body_len > MAX_MESSAGE {
                    return Err(SqlError::protocol("message too large"));
                }
                if self.buf.len() >= 5 + h.body_len {
                    self.buf.advance(5);
                    return Ok((h.tag, self.buf.split_to(h.body_len)));
                }
            }
            let n = self
                .pipe
                .read_buf(&mut self.buf)
                .await
                .map_err(|_| SqlError::protocol("the gateway closed the session"))?;
            if n == 0 {
                return Err(SqlError::protocol("the gateway closed the session"));
            }
        }
    }
}

fn error(body: &[u8]) -> SqlError {
    let fields = codec::parse_error_fields(body);
    SqlError {
        code: fields.code,
        message: bounded_cell(fields.message.as_bytes()),
        from_gateway: fields.routine == codec::GATEWAY_ROUTINE,
    }
}

fn row_description(body: &[u8]) -> Result<Vec<Column>, SqlError> {
    let bad = |e: codec::CodecError| SqlError::protocol(e.to_string());
    let mut pos = 0;
    let n = codec::read_i16(body, &mut pos, "RowDescription").map_err(bad)?;
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = codec::read_cstr_lossy(body, &mut pos, "RowDescription")
            .map_err(bad)?
            .into_owned();
        // table OID, column number, then the type OID.
        pos += 4 + 2;
        let type_oid = codec::read_i32(body, &mut pos, "RowDescription").map_err(bad)? as u32;
        // type size, modifier, format.
        pos += 2 + 4 + 2;
        columns.push(Column { name, type_oid });
    }
    Ok(columns)
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, SqlError> {
    let bad = |e: codec::CodecError| SqlError::protocol(e.to_string());
    let mut pos = 0;
    let n = codec::read_i16(body, &mut pos, "DataRow").map_err(bad)?;
    let mut cells = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = codec::read_i32(body, &mut pos, "DataRow").map_err(bad)?;
        if len < 0 {
            cells.push(None);
            continue;
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|&end| end <= body.len())
            .ok_or_else(|| SqlError::protocol("truncated DataRow"))?;
        cells.push(Some(bounded_cell(&body[pos..end])));
        pos = end;
    }
    Ok(cells)
}

/// A cell's text, cut at [`MAX_CELL_BYTES`] on a character boundary and marked.
fn bounded_cell(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_CELL_BYTES {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    // A few bytes past the cut, so the character the cut falls in is decoded whole and
    // then left out whole.
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_CELL_BYTES + 3)]);
    let kept = sluice_core::text::clip(&head, MAX_CELL_BYTES);
    format!("{kept}…[{} bytes cut]", bytes.len() - kept.len())
}

#[cfg(test)]
mod tests {
    use super::{bounded_cell, MAX_CELL_BYTES};

    #[test]
    fn long_cells_are_cut_whole_characters_and_marked() {
        assert_eq!(bounded_cell(b"short"), "short");
        // The cut falls inside a two-byte character.
        let long = format!("x{}", "é".repeat(MAX_CELL_BYTES));
        let cut = bounded_cell(long.as_bytes());
        assert!(cut.starts_with("xé"));
        assert!(!cut.contains('\u{fffd}'), "no half character");
        let kept = MAX_CELL_BYTES - 1;
        assert!(
            cut.ends_with(&format!("…[{} bytes cut]", long.len() - kept)),
            "{}",
            &cut[cut.len() - 30..]
        );
        let exactly_one_more = "x".repeat(MAX_CELL_BYTES + 1);
        assert!(bounded_cell(exactly_one_more.as_bytes()).ends_with("…[1 bytes cut]"));
    }
}
