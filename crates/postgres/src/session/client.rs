//! Client to server: frame what the client sends, turn every execution into a
//! [`Request`], and forward only once the pipeline has decided and recorded it.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use sluice_core::{Decision, Outcome, Pipeline, Request, RequestKind, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::names::{may_change_names, Define, Statement, Undo};
use super::queue::{not_executed, Exec, Expect, State};
use super::{
    io_reason, lock, mentions_any, refusal_portal, ClientHold, LargeMessages, Shared, READ_BUFFER,
};

use crate::client_text::ClientText;
use crate::codec::{self, FrontendMessage};
use crate::params::render_params;
use crate::stream::BoxStream;

/// Sent in place of a refused Query: it fails to parse, so it has no effect but the error.
const REFUSAL_QUERY: &str = "SLUICE REFUSED THIS STATEMENT";

/// How much client input is read ahead while a statement is held for review.
const HOLD_READ_AHEAD: usize = 1 << 20;

/// Answers a session may owe before the gateway stops reading from its client.
const MAX_OWED: usize = 100_000;

/// A message longer than this takes its size from [`LargeMessages`] while it is read.
const LARGE_MESSAGE: usize = 1 << 20;

/// Longest wait for the server to settle a definition a message depends on.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Why the client-to-server direction stopped with an error.
pub(super) enum C2sEnd {
    Io(String),
    /// A protocol violation; a FATAL ErrorResponse is queued for the client.
    Fatal(String),
}

pub(super) struct ClientToServer<P> {
    pub pipeline: Arc<P>,
    pub info: Arc<SessionInfo>,
    pub shared: Arc<Shared>,
    /// How the pipeline reaches the client while it holds a statement for review.
    pub hold: ClientHold,
    pub client: ReadHalf<BoxStream>,
    /// The session's results are masked (every Execute is preceded by a Describe).
    pub masked: bool,
    pub upstream: WriteHalf<BoxStream>,
    pub next_request: u64,
    pub max_message: usize,
    /// After the gateway refused an extended-protocol message, everything up to Sync is
    /// discarded, exactly as the server does after an error.
    pub skip_until_sync: bool,
    /// Since when a message has been waiting for the server to settle a definition.
    pub waiting_since: Option<Instant>,
    /// Batch ends (Sync, Query, FunctionCall) read so far, counted as they are read.
    pub batches: u64,
    /// Reads scanned so far.
    pub scans: u64,
    /// The scan in which a statement that may change client_encoding was read; later
    /// statements wait until the server has answered it.
    pub encoding_barrier: Option<u64>,
    /// What all sessions may hold at once of large messages being read.
    pub large_messages: Arc<LargeMessages>,
}

/// One frontend message of a read, and what to do with it once decided.
enum Action {
    /// Forward, queueing what the server will answer.
    Forward {
        range: Range<usize>,
        expect: Option<Expect>,
    },
    /// Parse: `request` when the definition is recorded.
    Parse {
        range: Range<usize>,
        request: Option<usize>,
        undo: Option<Undo>,
        /// The text of an unnamed statement, recorded unless this read also executes it.
        unnamed_text: Option<String>,
    },
    Bind {
        range: Range<usize>,
        undo: Option<Undo>,
        /// The portal, when bound from the unnamed statement.
        from_unnamed: Option<String>,
    },
    Close {
        range: Range<usize>,
        kind: u8,
        name: String,
    },
    /// A simple Query whose statements are `requests[first..first + count]`.
    Query {
        range: Range<usize>,
        first: usize,
        count: usize,
    },
    /// An Execute or FunctionCall: `requests[index]`.
    Execute {
        range: Range<usize>,
        index: usize,
        function_call: bool,
        portal: String,
    },
    Sync {
        range: Range<usize>,
    },
    /// Flush and CopyData: answered by nothing, forwarded even while skipping.
    Pass {
        range: Range<usize>,
    },
    /// CopyDone or CopyFail.
    CopyEnd {
        range: Range<usize>,
    },
    /// The message depends on a definition the server has not settled yet: stop here and
    /// read it again once the server has answered.
    Wait,
    /// Refused by the gateway before any decision (the text cannot be recorded
    /// faithfully). A Query gets an error and ReadyForQuery; an extended-protocol message
    /// an error, and the rest of its batch is discarded.
    Refuse {
        message: String,
        query: bool,
        /// The request that records the refused text, when it can be recorded.
        recorded: Option<u64>,
    },
    Terminate,
}

/// Where a refusal's frames and outcomes go.
struct Refusal<'a> {
    outcomes: &'a mut Vec<Outcome>,
    out: &'a mut BytesMut,
}

/// Why a text whose reading depends on `standard_conforming_strings` is refused.
const AMBIGUOUS_BACKSLASH: &str = "sluice cannot be sure how the server reads this text: a backslash in a quoted string makes it depend on standard_conforming_strings; use E'' strings, or write the backslash another way";

/// An unnamed Parse seen in the current read, and the portal bound from it.
struct UnnamedParse {
    action: usize,
    text: String,
    portal: Option<String>,
}

/// What one read held: actions, the requests they carry, bytes consumed, and the total
/// length of a large CopyData to stream (when the read ends inside one).
struct Scan {
    actions: Vec<Action>,
    requests: Vec<Request>,
    consumed: usize,
    /// The length of the message the read ends inside of (other than CopyData), which
    /// must be whole before it is read.
    incomplete: Option<usize>,
    streaming: Option<usize>,
    /// Stopped before a message that must wait for the server's answers.
    waiting: bool,
}

impl<P: Pipeline> ClientToServer<P> {
    pub async fn run(mut self) -> Result<(), C2sEnd> {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        // Bytes of a large pass-through message (CopyData) still to forward as they come.
        let mut passthrough: usize = 0;
        // A message at the front of `buf` waits for the server's answers.
        let mut waiting = false;
        // The share of the sessions' budget for large messages held while one is read.
        let mut large: Option<(usize, tokio::sync::OwnedSemaphorePermit)> = None;
        // `buf` got more input while the pipeline held a statement.
        let mut read_ahead = false;
        loop {
            if waiting {
                // Messages already sent answer it; a Sync ended their batch, so they come
                // without further input. Re-read `buf` after each settled read.
                let _ = tokio::time::timeout(SETTLE_WAIT, self.shared.progress.notified()).await;
            } else if read_ahead {
                // Input read while a statement was held: scan it before reading more.
                read_ahead = false;
            } else {
                // A client that sends without reading the answers would make the queue of
                // owed answers (and refusals) grow without end: stop reading until it drains.
                while lock(&self.shared.state).owed() > MAX_OWED {
                    self.shared.progress.notified().await;
                }
                match self.client.read_buf(&mut buf).await {
                    Ok(0) => {
                        self.end_upstream().await;
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.end_upstream().await;
                        return Err(C2sEnd::Io(io_reason(e)));
                    }
                }
            }
            let mut out = BytesMut::new();
            if passthrough > 0 {
                let n = passthrough.min(buf.len());
                out.extend_from_slice(&buf.split_to(n));
                passthrough -= n;
            }
            let scan = match self.scan(&buf) {
                Ok(scan) => scan,
                Err(message) => {
                    let mut frames = BytesMut::new();
                    codec::error_response(&mut frames, "FATAL", "08P01", &message);
                    self.inject(frames, false, true);
                    return Err(C2sEnd::Fatal(message));
                }
            };
            // A large message is read only with its size taken from the budget all sessions
            // share, so that many of them at once cannot exhaust memory: the client waits
            // (its socket is not read) until there is room.
            match scan.incomplete.filter(|n| *n > LARGE_MESSAGE) {
                Some(n) if large.as_ref().is_none_or(|(held, _)| *held != n) => {
                    // The share for an earlier message goes back before more is taken.
                    drop(large.take());
                    let want = n.min(self.large_messages.budget) as u32;
                    let budget = self.large_messages.available.clone();
                    large = budget.acquire_many_owned(want).await.ok().map(|p| (n, p));
                }
                Some(_) => {}
                None => large = None,
            }
            waiting = scan.waiting;
            if !waiting {
                self.waiting_since = None;
            }
            let ids: Vec<u64> = scan.requests.iter().map(|r| r.id).collect();
            // Masking plans use the statement text (COPY's source, names a computed column
            // may derive from); kept only for sessions whose results are masked.
            let texts: Vec<Arc<str>> = if self.masked {
                scan.requests
                    .iter()
                    .map(|r| Arc::from(r.text.as_str()))
                    .collect()
            } else {
                Vec::new()
            };
            let decisions = if scan.requests.is_empty() {
                Vec::new()
            } else {
                let decisions = {
                    let decided = self
                        .pipeline
                        .requests(&self.info, scan.requests, &self.hold);
                    tokio::pin!(decided);
                    // While the pipeline decides (a review hold can take minutes), keep reading
                    // the client, up to a bound, so that a client that hangs up withdraws what
                    // is held instead of having it run later for nobody.
                    let mut client_open = true;
                    loop {
                        tokio::select! {
                            decisions = &mut decided => break decisions,
                            read = self.client.read_buf(&mut buf), if client_open => {
                                match read {
                                    Ok(n) if n > 0 => {
                                        read_ahead = true;
                                        // Past the bound a hang-up could no longer be seen: a
                                        // client that queues that much behind a held statement
                                        // has it withdrawn (and is read no further until the
                                        // decision).
                                        if buf.len() >= HOLD_READ_AHEAD {
                                            client_open = false;
                                            self.hold.withdraw_held();
                                        }
                                    }
                                    _ => {
                                        client_open = false;
                                        self.hold.client_left();
                                    }
                                }
                            }
                        }
                    }
                };
                self.hold.decided();
                let withdrawn = decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Withdrawn { .. }));
                if self.hold.is_client_gone() && withdrawn {
                    // The client left while a statement of this read was held: nothing of
                    // the read runs for nobody, whatever else the pipeline allowed.
                    for id in &ids {
                        self.pipeline.outcome(
                            &self.info,
                            not_executed(*id, "the client left while a statement was held"),
                        );
                    }
                    self.end_upstream().await;
                    return Ok(());
                }
                decisions
            };
            let terminate = self.apply(&buf, scan.actions, (&ids, &texts), &decisions, &mut out);
            buf.advance(scan.consumed);
            if let Some(len) = scan.streaming {
                let n = len.min(buf.len());
                out.extend_from_slice(&buf.split_to(n));
                passthrough = len - n;
            }
            if !out.is_empty() {
                let sent = async {
                    self.upstream.write_all(&out).await?;
                    self.upstream.flush().await
                };
                sent.await.map_err(|e| C2sEnd::Io(io_reason(e)))?;
            }
            if terminate {
                return Ok(());
            }
            if buf.is_empty() && buf.capacity() > 4 * READ_BUFFER {
                // What a large message took goes back, instead of staying with the session.
                buf = BytesMut::with_capacity(READ_BUFFER);
            } else if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
        }
    }

    /// The client is gone: tell the server to finish what it was sent and end the backend,
    /// so its remaining answers are still recorded.
    async fn end_upstream(&mut self) {
        let _ = self.upstream.write_all(b"X\0\0\0\x04").await;
        let _ = self.upstream.flush().await;
    }

    /// Walks the complete messages at the start of `buf`.
    fn scan(&mut self, buf: &[u8]) -> Result<Scan, String> {
        let mut scan = Scan {
            actions: Vec::new(),
            requests: Vec::new(),
            consumed: 0,
            incomplete: None,
            streaming: None,
            waiting: false,
        };
        self.scans += 1;
        let mut skipping = self.skip_until_sync;
        // An unnamed statement defined in this read and not (yet) executed in it: its
        // text is recorded on its own, since it could run in a later batch.
        let mut unnamed: Option<UnnamedParse> = None;
        let mut pos = 0;
        while let Some(h) = codec::parse_header(&buf[pos..]).map_err(|e| e.to_string())? {
            let total = 5 + h.body_len;
            if buf.len() - pos < total {
                if h.tag == b'd' {
                    // CopyData can be any size: forward it as it arrives.
                    scan.streaming = Some(total);
                    break;
                }
                if h.body_len > self.max_message {
                    return Err(format!(
                        "message of {} bytes exceeds the gateway's limit of {} bytes",
                        h.body_len, self.max_message
                    ));
                }
                scan.incomplete = Some(total);
                break;
            }
            let range = pos..pos + total;
            let body = &buf[pos + 5..pos + total];
            let start = pos;
            pos += total;
            match h.tag {
                b'S' => skipping = false,
                b'H' | b'd' => {}
                _ if skipping => continue,
                _ => {}
            }
            let action = self.classify(h.tag, body, range, &mut scan.requests)?;
            if matches!(action, Action::Wait) {
                pos = start;
                scan.waiting = true;
                break;
            }
            if matches!(action, Action::Sync { .. } | Action::Query { .. })
                || matches!(
                    action,
                    Action::Execute {
                        function_call: true,
                        ..
                    }
                )
            {
                self.batches += 1;
            }
            match &action {
                Action::Refuse { query: false, .. } => skipping = true,
                Action::Parse {
                    unnamed_text: Some(text),
                    ..
                } => {
                    if let Some(u) = unnamed.take() {
                        self.record_unnamed(u, &mut scan);
                    }
                    unnamed = Some(UnnamedParse {
                        action: scan.actions.len(),
                        text: text.clone(),
                        portal: None,
                    });
                }
                Action::Bind {
                    from_unnamed: Some(portal),
                    ..
                } => {
                    if let Some(u) = unnamed.as_mut() {
                        u.portal = Some(portal.clone());
                    }
                }
                // Its Execute records the text.
                Action::Execute { portal, .. }
                    if unnamed.as_ref().and_then(|u| u.portal.as_ref()) == Some(portal) =>
                {
                    unnamed = None;
                }
                _ => {}
            }
            let terminate = matches!(action, Action::Terminate);
            scan.actions.push(action);
            // Nothing after a Terminate reaches the server: nothing after it is read (and
            // recorded as if it would run).
            if terminate {
                break;
            }
        }
        if let Some(u) = unnamed {
            self.record_unnamed(u, &mut scan);
        }
        scan.consumed = pos;
        Ok(scan)
    }

    /// Statement text is split as the server reads it only when no multibyte character
    /// can contain `\` or `;`. Stops a Query or Parse (returns its action) while a
    /// statement that may change client_encoding is unanswered, and refuses non-ASCII
    /// text in an encoding where the split could differ from the server's.
    fn encoding_gate(
        &mut self,
        requests: &mut Vec<Request>,
        body: &[u8],
        refused: Refused<'_>,
    ) -> Option<Action> {
        let sql = refused.text;
        let (unsafe_encoding, owed) = {
            let state = lock(&self.shared.state);
            (state.unsafe_encoding.clone(), state.owed())
        };
        match self.encoding_barrier {
            Some(scan) if scan == self.scans || owed > 0 => {
                return Some(self.wait_or_refuse(
                    requests,
                    refused,
                    "client encoding",
                    "client_encoding",
                ));
            }
            Some(_) => self.encoding_barrier = None,
            None => {}
        }
        if let Some(encoding) = unsafe_encoding {
            if body.iter().any(|b| *b >= 0x80) {
                let message = format!("sluice cannot record statements in client_encoding {encoding} faithfully when they hold non-ASCII characters; use client_encoding UTF8 (the server converts)");
                return Some(self.refuse_recorded(requests, refused, message));
            }
        }
        if mentions_any(sql, &[b"client_encoding", b"names", b"reset", b"discard"]) {
            self.encoding_barrier = Some(self.scans);
        }
        None
    }

    /// Waits for the server to settle a definition from an earlier batch; refuses instead
    /// once it has waited [`SETTLE_WAIT`] (a server that never answers must not hang the
    /// session).
    fn wait_or_refuse(
        &mut self,
        requests: &mut Vec<Request>,
        refused: Refused<'_>,
        what: &str,
        name: &str,
    ) -> Action {
        let started = *self.waiting_since.get_or_insert_with(Instant::now);
        if started.elapsed() < SETTLE_WAIT {
            Action::Wait
        } else {
            self.waiting_since = None;
            self.refuse_recorded(requests, refused, ambiguous(what, name))
        }
    }

    /// Records an unnamed statement's text as a prepare request of its own.
    fn record_unnamed(&mut self, u: UnnamedParse, scan: &mut Scan) {
        let index = self.push_prepare(&mut scan.requests, u.text, None);
        if let Some(Action::Parse { request, .. }) = scan.actions.get_mut(u.action) {
            *request = Some(index);
        }
    }
    /// Refuses a message, recording what it would have run (as a denied statement) so the
    /// attempt is on the record: `refused.text`; `refused.parsed` is the name of the
    /// prepared statement a refused Parse defines (`""` for the unnamed one).
    fn refuse_recorded(
        &mut self,
        requests: &mut Vec<Request>,
        refused: Refused<'_>,
        message: String,
    ) -> Action {
        let id = self.next_id();
        requests.push(Request {
            call: None,
            id,
            kind: match refused.parsed {
                Some(_) => RequestKind::Prepare,
                None => RequestKind::Execute,
            },
            text: sluice_sql::redact_secrets(refused.text).into_owned(),
            params: Vec::new(),
            statement_name: refused.parsed.filter(|n| !n.is_empty()).map(str::to_owned),
            refusal: Some(message.clone()),
        });
        Action::Refuse {
            message,
            query: refused.query,
            recorded: Some(id),
        }
    }

    /// Queues the record of a statement definition; returns its index in `requests`.
    fn push_prepare(
        &mut self,
        requests: &mut Vec<Request>,
        text: String,
        name: Option<&str>,
    ) -> usize {
        let id = self.next_id();
        requests.push(Request {
            call: None,
            id,
            kind: RequestKind::Prepare,
            text,
            params: Vec::new(),
            statement_name: name.map(str::to_owned),
            refusal: None,
        });
        requests.len() - 1
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn classify(
        &mut self,
        tag: u8,
        body: &[u8],
        range: Range<usize>,
        requests: &mut Vec<Request>,
    ) -> Result<Action, String> {
        // Only a Query's and a Parse's text is read here (a Bind's parameters, with the
        // state locked anyway).
        let client_text = match tag {
            b'Q' | b'P' => lock(&self.shared.state).client_text,
            _ => ClientText::Utf8,
        };
        let msg = codec::parse_frontend(tag, body, client_text).map_err(|e| e.to_string())?;
        let action = match (tag, msg) {
            (_, Some(FrontendMessage::Query { sql })) => {
                let refused = Refused::query(&sql);
                if let Some(stop) = self.encoding_gate(requests, body, refused) {
                    return Ok(stop);
                }
                let Some(statements) = sluice_sql::split_statements_strict(&sql) else {
                    return Ok(self.refuse_recorded(requests, refused, AMBIGUOUS_BACKSLASH.into()));
                };
                let first = requests.len();
                for stmt in statements {
                    if may_change_names(stmt.text) {
                        lock(&self.shared.state).names.forget_named();
                    }
                    let id = self.next_id();
                    requests.push(Request {
                        call: None,
                        id,
                        kind: RequestKind::Execute,
                        text: sluice_sql::redact_secrets(stmt.text).into_owned(),
                        params: Vec::new(),
                        statement_name: None,
                        refusal: None,
                    });
                }
                Action::Query {
                    range,
                    first,
                    count: requests.len() - first,
                }
            }
            (
                _,
                Some(FrontendMessage::Parse {
                    name,
                    sql,
                    param_types,
                }),
            ) => {
                let refused = Refused::parse(&sql, name);
                if let Some(stop) = self.encoding_gate(requests, body, refused) {
                    return Ok(stop);
                }
                if !sluice_sql::reads_the_same_either_way(&sql) {
                    return Ok(self.refuse_recorded(requests, refused, AMBIGUOUS_BACKSLASH.into()));
                }
                let text = sluice_sql::redact_secrets(&sql).into_owned();
                let statement = Statement {
                    sql: Arc::from(text.as_str()),
                    declared: param_types,
                    reported: None,
                };
                let define = {
                    let mut state = lock(&self.shared.state);
                    state.names.parse(name, statement, self.batches)
                };
                match define {
                    None => {
                        let message = ambiguous("prepared statement", name);
                        return Ok(self.refuse_recorded(requests, refused, message));
                    }
                    // Named statements live on and run later by name: their text is
                    // recorded now, before the server ever sees it.
                    Some(undo) if !name.is_empty() => {
                        let index = self.push_prepare(requests, text, Some(name));
                        Action::Parse {
                            range,
                            request: Some(index),
                            undo: Some(undo),
                            unnamed_text: None,
                        }
                    }
                    Some(undo) => Action::Parse {
                        range,
                        request: None,
                        undo: Some(undo),
                        unnamed_text: Some(text),
                    },
                }
            }
            (
                _,
                Some(FrontendMessage::Bind {
                    portal,
                    statement,
                    params,
                }),
            ) => {
                let shared = self.shared.clone();
                let mut state = lock(&shared.state);
                if state.names.statement_unsettled(statement, self.batches) {
                    let text = state.names.statement(statement).map(|s| s.sql.clone());
                    drop(state);
                    let text = text.as_deref().unwrap_or("<unknown prepared statement>");
                    return Ok(self.wait_or_refuse(
                        requests,
                        Refused::message(text),
                        "prepared statement",
                        statement,
                    ));
                }
                let (sql, types) = match state.names.statement(statement) {
                    Some(s) => (s.sql.clone(), state.names.param_types(s)),
                    None => (
                        Arc::from(format!("<unknown prepared statement \"{statement}\">")),
                        Vec::new(),
                    ),
                };
                let params = render_params(&params, &types, state.client_text);
                let epoch = state.epoch();
                let from_unnamed = statement.is_empty().then(|| portal.to_owned());
                match state
                    .names
                    .bind(portal, statement, sql.clone(), params, epoch, self.batches)
                {
                    Define::Ambiguous => {
                        drop(state);
                        let message = ambiguous("portal", portal);
                        return Ok(self.refuse_recorded(requests, Refused::message(&sql), message));
                    }
                    Define::Duplicate => Action::Bind {
                        range,
                        undo: None,
                        from_unnamed,
                    },
                    Define::Defined(undo) => Action::Bind {
                        range,
                        undo: Some(undo),
                        from_unnamed,
                    },
                }
            }
            (_, Some(FrontendMessage::Execute { portal })) => {
                let shared = self.shared.clone();
                let (text, params, statement_name) = {
                    let mut state = lock(&shared.state);
                    if state.names.portal_unsettled(portal, self.batches) {
                        let text = state.names.portal(portal).map(|p| p.sql.clone());
                        drop(state);
                        let text = text.as_deref().unwrap_or("<unknown portal>");
                        return Ok(self.wait_or_refuse(
                            requests,
                            Refused::message(text),
                            "portal",
                            portal,
                        ));
                    }
                    let (text, params, statement_name) = match state.names.portal(portal) {
                        Some(p) => (
                            p.sql.to_string(),
                            p.params.clone(),
                            Some(p.statement.clone()).filter(|s| !s.is_empty()),
                        ),
                        // A cursor opened with DECLARE is a portal the client may Execute.
                        None => (format!("FETCH ALL FROM \"{portal}\""), Vec::new(), None),
                    };
                    if may_change_names(&text) {
                        state.names.forget_named();
                    }
                    (text, params, statement_name)
                };
                let id = self.next_id();
                requests.push(Request {
                    call: None,
                    id,
                    kind: RequestKind::Execute,
                    text,
                    params,
                    statement_name,
                    refusal: None,
                });
                Action::Execute {
                    range,
                    index: requests.len() - 1,
                    function_call: false,
                    portal: portal.to_owned(),
                }
            }
            (_, Some(FrontendMessage::FunctionCall { oid, args })) => {
                let id = self.next_id();
                requests.push(Request {
                    call: None,
                    id,
                    kind: RequestKind::Execute,
                    text: format!("<fast-path function call, oid {oid}>"),
                    params: render_params(&args, &[], lock(&self.shared.state).client_text),
                    statement_name: None,
                    refusal: None,
                });
                Action::Execute {
                    range,
                    index: requests.len() - 1,
                    function_call: true,
                    portal: String::new(),
                }
            }
            (_, Some(FrontendMessage::Close { kind, name })) => {
                lock(&self.shared.state).names.start_close(kind, name);
                Action::Close {
                    range,
                    kind,
                    name: name.to_owned(),
                }
            }
            (b'D', None) => {
                let mut pos = 1;
                let name =
                    codec::read_cstr(body, &mut pos, "Describe").map_err(|e| e.to_string())?;
                let expect = match body.first() {
                    Some(b'S') => Expect::DescribeStatement {
                        name: name.to_owned(),
                    },
                    Some(b'P') => Expect::DescribePortal,
                    _ => return Err("malformed Describe message".into()),
                };
                Action::Forward {
                    range,
                    expect: Some(expect),
                }
            }
            (b'S', None) => Action::Sync { range },
            (b'c' | b'f', None) => Action::CopyEnd { range },
            (b'H' | b'd', None) => Action::Pass { range },
            (b'X', None) => Action::Terminate,
            (other, _) => {
                return Err(format!(
                    "invalid frontend message type {}",
                    other.escape_ascii()
                ))
            }
        };
        Ok(action)
    }

    /// Applies decisions: forwards what may pass into `out`, queues what the server owes
    /// and the gateway's own answers. Returns true when the client asked to terminate.
    fn apply(
        &mut self,
        buf: &[u8],
        actions: Vec<Action>,
        (ids, texts): (&[u64], &[Arc<str>]),
        decisions: &[Decision],
        out: &mut BytesMut,
    ) -> bool {
        let exec = |i: usize| Exec::new(ids[i], texts.get(i).cloned());
        // Fail closed: a request without a decision is not run.
        let missing = Decision::Deny {
            reason: "sluice made no decision for this statement".into(),
        };
        let decision = |i: usize| decisions.get(i).unwrap_or(&missing);
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut terminate = false;
        let shared = self.shared.clone();
        let mut state = lock(&shared.state);
        for action in actions {
            if !matches!(action, Action::CopyEnd { .. } | Action::Pass { .. }) {
                state.client_moved_on();
            }
            let skipping = self.skip_until_sync;
            match action {
                Action::Forward { range, expect } => {
                    if skipping {
                        continue;
                    }
                    if let Some(e) = expect {
                        outcomes.extend(state.push(e));
                    }
                    out.extend_from_slice(&buf[range]);
                }
                Action::Pass { range } => out.extend_from_slice(&buf[range]),
                Action::Parse {
                    range,
                    request,
                    undo,
                    unnamed_text: _,
                } => {
                    let denied = request.and_then(|i| deny_reason(decision(i)));
                    if skipping || denied.is_some() {
                        if let Some(undo) = undo {
                            state.defer_undo(undo, false);
                        }
                        if let Some(i) = request {
                            outcomes.push(not_executed(ids[i], "refused by the gateway"));
                        }
                        if let Some((code, reason)) = denied.filter(|_| !skipping) {
                            let refusal = Refusal {
                                outcomes: &mut outcomes,
                                out,
                            };
                            self.refuse(&mut state, code, &reason, false, refusal);
                        }
                        continue;
                    }
                    outcomes.extend(state.push(Expect::ParseComplete {
                        exec: request.map(exec),
                        undo,
                    }));
                    out.extend_from_slice(&buf[range]);
                }
                Action::Bind { range, undo, .. } => {
                    if skipping {
                        if let Some(undo) = undo {
                            state.defer_undo(undo, false);
                        }
                        continue;
                    }
                    outcomes.extend(state.push(Expect::BindComplete { undo }));
                    out.extend_from_slice(&buf[range]);
                }
                Action::Close { range, kind, name } => {
                    if skipping {
                        state.names.finish_close(kind, &name, false);
                        continue;
                    }
                    outcomes.extend(state.push(Expect::CloseComplete { kind, name }));
                    out.extend_from_slice(&buf[range]);
                }
                Action::Query {
                    range,
                    first,
                    count,
                } => {
                    let batch = &ids[first..first + count];
                    if skipping {
                        outcomes.extend(batch.iter().map(|id| {
                            not_executed(*id, "an earlier message in the batch was refused")
                        }));
                        continue;
                    }
                    match (first..first + count).find_map(|i| deny_reason(decision(i))) {
                        None => {
                            for i in first..first + count {
                                outcomes.extend(state.push(Expect::QueryExec(exec(i))));
                            }
                            outcomes.extend(state.push(Expect::Ready));
                            out.extend_from_slice(&buf[range]);
                        }
                        // A multi-statement string runs all or nothing through the gateway.
                        Some((code, reason)) => {
                            outcomes.extend(
                                batch
                                    .iter()
                                    .map(|id| not_executed(*id, "refused by the gateway")),
                            );
                            let refusal = Refusal {
                                outcomes: &mut outcomes,
                                out,
                            };
                            self.refuse(&mut state, code, &reason, true, refusal);
                        }
                    }
                }
                Action::Execute {
                    range,
                    index,
                    function_call,
                    portal,
                } => {
                    let id = ids[index];
                    if skipping {
                        outcomes.push(not_executed(
                            id,
                            "an earlier message in the batch was refused",
                        ));
                        continue;
                    }
                    match deny_reason(decision(index)) {
                        None if function_call => {
                            outcomes.extend(state.push(Expect::FunctionCall(exec(index))));
                            outcomes.extend(state.push(Expect::Ready));
                            out.extend_from_slice(&buf[range]);
                        }
                        None => {
                            if self.masked {
                                // The gateway asks for the portal's columns itself: a
                                // client that described the statement earlier gets no
                                // RowDescription before these rows.
                                outcomes.extend(state.push(Expect::GatewayDescribe));
                                codec::put_describe(out, b'P', &portal);
                            }
                            outcomes.extend(state.push(Expect::Exec(exec(index))));
                            out.extend_from_slice(&buf[range]);
                        }
                        Some((code, reason)) => {
                            outcomes.push(not_executed(id, "refused by the gateway"));
                            let refusal = Refusal {
                                outcomes: &mut outcomes,
                                out,
                            };
                            self.refuse(&mut state, code, &reason, function_call, refusal);
                        }
                    }
                }
                Action::Sync { range } => {
                    self.skip_until_sync = false;
                    state.push_sync();
                    out.extend_from_slice(&buf[range]);
                }
                Action::CopyEnd { range } => {
                    state.client_copy_ended();
                    out.extend_from_slice(&buf[range]);
                }
                Action::Refuse {
                    message,
                    query,
                    recorded,
                } => {
                    if let Some(id) = recorded {
                        outcomes.push(not_executed(id, "refused by the gateway"));
                    }
                    if !skipping {
                        let refusal = Refusal {
                            outcomes: &mut outcomes,
                            out,
                        };
                        self.refuse(&mut state, "42501", &message, query, refusal);
                    }
                }
                // `scan` stops before a waiting message; it never reaches here.
                Action::Wait => {}
                Action::Terminate => {
                    // Forward Terminate so the target ends the backend cleanly.
                    out.extend_from_slice(b"X\0\0\0\x04");
                    terminate = true;
                    break;
                }
            }
        }
        state.apply_undos();
        let inject_due = state.front_is_inject();
        drop(state);
        // The server direction writes injections; wake it only when one is waiting at
        // the front (otherwise it will reach them as answers arrive).
        if inject_due {
            self.shared.wake.notify_one();
        }
        for o in outcomes {
            self.pipeline.outcome(&self.info, o);
        }
        terminate
    }

    /// Queues the gateway's refusal. A Query or FunctionCall gets its ReadyForQuery; an
    /// extended-protocol message discards the rest of its batch, as a server error would.
    fn refuse(
        &mut self,
        state: &mut State,
        code: &str,
        reason: &str,
        with_ready: bool,
        refusal: Refusal<'_>,
    ) {
        let Refusal { outcomes, out } = refusal;
        let mut frames = BytesMut::new();
        codec::error_response(&mut frames, "ERROR", code, reason);
        // The server must fail in the refused message's place as it would have itself —
        // aborting an open transaction block, rolling back an extended batch's implicit
        // one — so it gets a message that fails without effect, and its error becomes the
        // refusal on the way back.
        if with_ready {
            if state.discarding() {
                // The server skips a Query until the Sync it waits for: answer it here.
                outcomes.extend(state.push(Expect::Inject {
                    frames,
                    then_ready: true,
                    close_after: false,
                }));
                return;
            }
            // A whole Query or FunctionCall: a Query that cannot parse.
            outcomes.extend(state.push(Expect::Refused {
                frames,
                query: true,
            }));
            outcomes.extend(state.push(Expect::Ready));
            codec::put_query(out, REFUSAL_QUERY);
            return;
        }
        // An extended-protocol message: an Execute of a portal that cannot exist.
        outcomes.extend(state.push(Expect::Refused {
            frames,
            query: false,
        }));
        codec::put_execute(out, &refusal_portal());
        self.skip_until_sync = true;
    }

    fn inject(&self, frames: BytesMut, then_ready: bool, close_after: bool) {
        let _ = lock(&self.shared.state).push(Expect::Inject {
            frames,
            then_ready,
            close_after,
        });
        self.shared.wake.notify_one();
    }
}

/// The refusal for a decision: SQLSTATE and message.
fn deny_reason(d: &Decision) -> Option<(&'static str, String)> {
    match d {
        Decision::Allow => None,
        Decision::Deny { reason } => Some(("42501", reason.clone())),
        Decision::Withdrawn { reason } => Some(("57014", reason.clone())),
    }
}

fn ambiguous(what: &str, name: &str) -> String {
    format!(
        "sluice cannot tell which definition of {what} \"{name}\" the server will use; wait for the answer to the previous Close or Sync before redefining it"
    )
}

/// What a refused message would have run, for its record.
#[derive(Clone, Copy)]
struct Refused<'a> {
    text: &'a str,
    /// A Parse: the statement it defines.
    parsed: Option<&'a str>,
    /// A Query (its refusal ends with ReadyForQuery).
    query: bool,
}

impl<'a> Refused<'a> {
    fn query(text: &'a str) -> Self {
        Refused {
            text,
            parsed: None,
            query: true,
        }
    }

    fn parse(text: &'a str, name: &'a str) -> Self {
        Refused {
            text,
            parsed: Some(name),
            query: false,
        }
    }

    /// Another extended-protocol message (Bind, Execute).
    fn message(text: &'a str) -> Self {
        Refused {
            text,
            parsed: None,
            query: false,
        }
    }
}
