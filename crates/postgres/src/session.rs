//! The proxy loop of one authenticated session.
//!
//! Two tasks, one per direction, so that neither direction can stall the other (a proxy
//! that writes both ways from one task can deadlock when both sockets' buffers fill):
//!
//! * [`ClientToServer`] reads frontend messages, turns each statement execution into a
//!   [`Request`], waits until the pipeline has decided and durably recorded the batch,
//!   then forwards it. For every message that the server will answer it first pushes an
//!   [`Expect`] entry on the shared queue.
//! * [`ServerToClient`] forwards the target's bytes as they arrive (whole read buffers,
//!   untouched), walking only frame headers, and pops the queue as answers complete —
//!   which yields each statement's outcome. Gateway-built answers (a refusal) sit in the
//!   queue as [`Expect::Inject`] and are written exactly when everything before them has
//!   been answered, so the client sees responses in protocol order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use sluice_core::{Decision, Outcome, OutcomeStatus, Pipeline, Request, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use crate::codec::{self, FrontendMessage};
use crate::params::render_params;
use crate::stream::BoxStream;

/// Server messages whose body the gateway reads are buffered whole up to this size.
const MAX_INSPECTED_SERVER_MESSAGE: usize = 16 << 20;
const READ_BUFFER: usize = 64 << 10;

/// What the server will send next, in order.
#[derive(Debug)]
enum Expect {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement {
        name: String,
    },
    /// RowDescription or NoData.
    DescribePortal,
    /// One statement execution (an Execute, or one statement of a simple Query).
    Exec(Exec),
    FunctionCall(Exec),
    /// ReadyForQuery ending a simple Query.
    Ready,
    /// ReadyForQuery answering a Sync. During COPY FROM STDIN the server ignores Syncs,
    /// so these are dropped when copy-in mode starts.
    SyncReady,
    /// The client ended a COPY FROM STDIN (CopyDone/CopyFail) before the gateway saw the
    /// server enter copy-in mode.
    ClientCopyEnded,
    /// Gateway-built frames; `then_ready` appends a ReadyForQuery with the current status;
    /// `close_after` ends the session once they are written (FATAL errors).
    Inject {
        frames: BytesMut,
        then_ready: bool,
        close_after: bool,
    },
}

#[derive(Debug)]
struct Exec {
    request_id: u64,
    started: Instant,
    rows: u64,
}

/// The answers owed by the server, and whether it is in copy-in mode.
#[derive(Default)]
struct Queue {
    items: VecDeque<Expect>,
    /// The server sent CopyInResponse and the client has not ended the copy yet.
    copy_in: bool,
}

/// State both directions share.
struct Shared {
    expect: Mutex<Queue>,
    /// Wakes the server-to-client task when an injection may be due.
    wake: Notify,
    /// Parameter types the server reported for named statements (ParameterDescription),
    /// used to render binary bind values for the audit record.
    statement_types: Mutex<HashMap<String, Vec<u32>>>,
}

impl Shared {
    fn push(&self, e: Expect) {
        lock(&self.expect).items.push_back(e);
    }

    /// The client sent Sync: the server answers it unless it is in copy-in mode.
    fn push_sync(&self) {
        let mut q = lock(&self.expect);
        if !q.copy_in {
            q.items.push_back(Expect::SyncReady);
        }
    }

    /// The client sent CopyDone or CopyFail.
    fn client_copy_ended(&self) {
        let mut q = lock(&self.expect);
        if q.copy_in {
            q.copy_in = false;
        } else {
            q.items.push_back(Expect::ClientCopyEnded);
        }
    }

    /// The server sent CopyInResponse for the command at the front of the queue: Syncs
    /// the client sent after it, up to the client's end of the copy, are ignored by the
    /// server and will get no ReadyForQuery.
    fn server_copy_in(&self) {
        let mut q = lock(&self.expect);
        let mut ended = false;
        let mut kept = VecDeque::with_capacity(q.items.len());
        for (i, e) in q.items.drain(..).enumerate() {
            if i > 0 && !ended {
                match e {
                    Expect::SyncReady => continue,
                    Expect::ClientCopyEnded => {
                        ended = true;
                        continue;
                    }
                    _ => {}
                }
            }
            kept.push_back(e);
        }
        q.items = kept;
        q.copy_in = !ended;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent in a way that
    // matters more than dropping the session, so recover the guard.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the session until either side closes. Returns why it ended.
pub(crate) async fn run<P: Pipeline>(
    pipeline: Arc<P>,
    info: Arc<SessionInfo>,
    client: BoxStream,
    upstream: BoxStream,
    txn_status: u8,
    max_message: usize,
) -> Option<String> {
    let (client_r, client_w) = tokio::io::split(client);
    let (up_r, up_w) = tokio::io::split(upstream);
    let shared = Arc::new(Shared {
        expect: Mutex::new(Queue::default()),
        wake: Notify::new(),
        statement_types: Mutex::new(HashMap::new()),
    });

    let c2s = ClientToServer {
        pipeline: pipeline.clone(),
        info: info.clone(),
        shared: shared.clone(),
        client: client_r,
        upstream: up_w,
        statements: HashMap::new(),
        portals: HashMap::new(),
        next_request: 1,
        max_message,
        skip_until_sync: false,
    };
    let s2c = ServerToClient {
        pipeline: pipeline.clone(),
        info: info.clone(),
        shared: shared.clone(),
        upstream: up_r,
        client: client_w,
        txn_status,
    };
    // Both directions are futures of this one task rather than two spawned tasks: a
    // round trip then wakes one task instead of two (measured: most of the proxy's cost
    // was scheduler wakeups). `select!` polls both, so a direction blocked on a full
    // socket never stops the other one from draining.
    let c2s = c2s.run();
    let s2c = s2c.run();
    tokio::pin!(c2s, s2c);
    let reason = tokio::select! {
        r = &mut c2s => match r {
            // A FATAL error is queued for the client: let the other direction deliver it
            // (after any answers still owed), but not forever.
            Err(C2sEnd::Fatal(reason)) => {
                let _ = tokio::time::timeout(FATAL_DELIVERY, &mut s2c).await;
                Some(reason)
            }
            Err(C2sEnd::Io(e)) => Some(e),
            Ok(()) => None,
        },
        r = &mut s2c => r.err(),
    };
    // Whatever was still owed an answer ended with the session; record that. Both
    // directions are stopped (they are not polled again), so nothing else records it.
    fail_pending(&shared, pipeline.as_ref(), &info);
    reason
}

fn fail_pending<P: Pipeline>(shared: &Shared, pipeline: &P, info: &SessionInfo) {
    let mut q = lock(&shared.expect);
    for e in q.items.drain(..) {
        if let Expect::Exec(e) | Expect::FunctionCall(e) = e {
            let outcome = e.finish(OutcomeStatus::Error {
                code: "08006".into(),
                message: "the session ended before the statement completed".into(),
                rows: 0,
            });
            pipeline.outcome(info, outcome);
        }
    }
}

/// How long a queued FATAL error may wait for earlier answers before the session is cut.
const FATAL_DELIVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the client-to-server direction stopped with an error.
enum C2sEnd {
    Io(String),
    /// A protocol violation; a FATAL ErrorResponse is queued for the client.
    Fatal(String),
}

/// A prepared statement as the gateway knows it.
struct Statement {
    sql: Arc<str>,
    param_types: Vec<u32>,
}

/// A bound portal: its statement and rendered parameter values.
struct Portal {
    sql: Arc<str>,
    params: Vec<Option<String>>,
}

struct ClientToServer<P> {
    pipeline: Arc<P>,
    info: Arc<SessionInfo>,
    shared: Arc<Shared>,
    client: ReadHalf<BoxStream>,
    upstream: WriteHalf<BoxStream>,
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
    next_request: u64,
    max_message: usize,
    /// After the gateway refused an extended-protocol message, everything up to Sync is
    /// discarded, exactly as the server does after an error.
    skip_until_sync: bool,
}

/// One frontend message of a read chunk, and what to do with it once decided.
enum Action {
    /// Forward `buf[range]` and then push the expectation, if any.
    Forward {
        range: std::ops::Range<usize>,
        expect: Option<Expect>,
    },
    /// A simple Query whose statements are `requests[first..first + count]`.
    Query {
        range: std::ops::Range<usize>,
        first: usize,
        count: usize,
    },
    /// An Execute or FunctionCall: `requests[index]`.
    Execute {
        range: std::ops::Range<usize>,
        index: usize,
        function_call: bool,
    },
    Sync {
        range: std::ops::Range<usize>,
    },
    /// CopyDone or CopyFail.
    CopyEnd {
        range: std::ops::Range<usize>,
    },
    Terminate,
}

impl<P: Pipeline> ClientToServer<P> {
    async fn run(mut self) -> Result<(), C2sEnd> {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        // Bytes of a large pass-through message (CopyData) still to forward as they come.
        let mut passthrough: usize = 0;
        loop {
            let read = self.client.read_buf(&mut buf).await;
            if read.map_err(|e| C2sEnd::Io(io_reason(e)))? == 0 {
                return Ok(()); // client went away
            }
            let mut out = BytesMut::new();
            if passthrough > 0 {
                let n = passthrough.min(buf.len());
                out.extend_from_slice(&buf.split_to(n));
                passthrough -= n;
            }
            let (actions, requests, consumed, streaming) = match self.scan(&buf) {
                Ok(scan) => scan,
                Err(message) => {
                    let mut frames = BytesMut::new();
                    codec::error_response(&mut frames, "FATAL", "08P01", &message);
                    self.shared.push(Expect::Inject {
                        frames,
                        then_ready: false,
                        close_after: true,
                    });
                    self.shared.wake.notify_one();
                    return Err(C2sEnd::Fatal(message));
                }
            };
            let ids: Vec<u64> = requests.iter().map(|r| r.id).collect();
            let decisions = if requests.is_empty() {
                Vec::new()
            } else {
                self.pipeline.requests(&self.info, requests).await
            };
            let terminate = self.apply(&buf, actions, &ids, &decisions, &mut out);
            buf.advance(consumed);
            if let Some(len) = streaming {
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
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
        }
    }

    /// Walks the complete messages at the start of `buf`. Returns the actions, the
    /// requests they carry, how many bytes they span, and — when the next message is a
    /// large pass-through one — its total length (header included) so it can stream.
    #[allow(clippy::type_complexity)]
    fn scan(
        &mut self,
        buf: &[u8],
    ) -> Result<(Vec<Action>, Vec<Request>, usize, Option<usize>), String> {
        let mut actions = Vec::new();
        let mut requests = Vec::new();
        let mut pos = 0;
        while let Some(h) = codec::parse_header(&buf[pos..]).map_err(|e| e.to_string())? {
            let total = 5 + h.body_len;
            if buf.len() - pos < total {
                if matches!(h.tag, b'd') {
                    // CopyData can be any size: forward it as it arrives.
                    return Ok((actions, requests, pos, Some(total)));
                }
                if h.body_len > self.max_message {
                    return Err(format!(
                        "message of {} bytes exceeds the gateway's limit of {} bytes",
                        h.body_len, self.max_message
                    ));
                }
                break;
            }
            let range = pos..pos + total;
            let body = &buf[pos + 5..pos + total];
            pos += total;
            if self.skip_until_sync && h.tag != b'S' {
                continue;
            }
            let action = self.classify(h.tag, body, range, &mut requests)?;
            actions.push(action);
        }
        Ok((actions, requests, pos, None))
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
        range: std::ops::Range<usize>,
        requests: &mut Vec<Request>,
    ) -> Result<Action, String> {
        let fwd = |expect| {
            Ok(Action::Forward {
                range: range.clone(),
                expect,
            })
        };
        let msg = codec::parse_frontend(tag, body).map_err(|e| e.to_string())?;
        match (tag, msg) {
            (_, Some(FrontendMessage::Query { sql })) => {
                let first = requests.len();
                for stmt in sluice_sql::split_statements(sql) {
                    let id = self.next_id();
                    requests.push(Request {
                        id,
                        text: sluice_sql::redact_secrets(stmt.text).into_owned(),
                        params: Vec::new(),
                    });
                }
                Ok(Action::Query {
                    range,
                    first,
                    count: requests.len() - first,
                })
            }
            (
                _,
                Some(FrontendMessage::Parse {
                    name,
                    sql,
                    param_types,
                }),
            ) => {
                self.statements.insert(
                    name.to_owned(),
                    Statement {
                        sql: Arc::from(sluice_sql::redact_secrets(sql).as_ref()),
                        param_types,
                    },
                );
                fwd(Some(Expect::ParseComplete))
            }
            (
                _,
                Some(FrontendMessage::Bind {
                    portal,
                    statement,
                    params,
                }),
            ) => {
                let (sql, types) = match self.statements.get(statement) {
                    Some(s) => (s.sql.clone(), self.param_types(statement, &s.param_types)),
                    None => (
                        Arc::from(format!("<unknown prepared statement \"{statement}\">")),
                        Vec::new(),
                    ),
                };
                let params = render_params(&params, &types);
                self.portals
                    .insert(portal.to_owned(), Portal { sql, params });
                fwd(Some(Expect::BindComplete))
            }
            (_, Some(FrontendMessage::Execute { portal })) => {
                let (text, params) = match self.portals.get(portal) {
                    Some(p) => (p.sql.to_string(), p.params.clone()),
                    // A cursor opened with DECLARE is a portal the client may Execute.
                    None => (format!("FETCH ALL FROM \"{portal}\""), Vec::new()),
                };
                let id = self.next_id();
                requests.push(Request { id, text, params });
                Ok(Action::Execute {
                    range,
                    index: requests.len() - 1,
                    function_call: false,
                })
            }
            (_, Some(FrontendMessage::FunctionCall { oid, args })) => {
                let id = self.next_id();
                requests.push(Request {
                    id,
                    text: format!("<fast-path function call, oid {oid}>"),
                    params: render_params(&args, &[]),
                });
                Ok(Action::Execute {
                    range,
                    index: requests.len() - 1,
                    function_call: true,
                })
            }
            (_, Some(FrontendMessage::Close { kind, name })) => {
                match kind {
                    b'S' => {
                        self.statements.remove(name);
                        lock(&self.shared.statement_types).remove(name);
                    }
                    _ => {
                        self.portals.remove(name);
                    }
                }
                fwd(Some(Expect::CloseComplete))
            }
            (b'D', None) => {
                let kind = body.first().copied();
                let mut pos = 1;
                let name =
                    codec::read_cstr(body, &mut pos, "Describe").map_err(|e| e.to_string())?;
                match kind {
                    Some(b'S') => fwd(Some(Expect::DescribeStatement {
                        name: name.to_owned(),
                    })),
                    Some(b'P') => fwd(Some(Expect::DescribePortal)),
                    _ => Err("malformed Describe message".into()),
                }
            }
            (b'S', None) => Ok(Action::Sync { range }),
            (b'c' | b'f', None) => Ok(Action::CopyEnd { range }),
            (b'H' | b'd', None) => fwd(None),
            (b'X', None) => Ok(Action::Terminate),
            (other, _) => Err(format!(
                "invalid frontend message type {}",
                other.escape_ascii()
            )),
        }
    }

    /// Parameter types for rendering: those given in Parse, completed by what the server
    /// reported in ParameterDescription.
    fn param_types(&self, statement: &str, declared: &[u32]) -> Vec<u32> {
        let reported = lock(&self.shared.statement_types);
        match reported.get(statement) {
            Some(types) => types
                .iter()
                .enumerate()
                .map(|(i, t)| declared.get(i).copied().filter(|d| *d != 0).unwrap_or(*t))
                .collect(),
            None => declared.to_vec(),
        }
    }

    /// Applies decisions: forwards what may pass into `out`, queues expectations and
    /// injections. Returns true when the client asked to terminate.
    fn apply(
        &mut self,
        buf: &[u8],
        actions: Vec<Action>,
        ids: &[u64],
        decisions: &[Decision],
        out: &mut BytesMut,
    ) -> bool {
        let decision = |i: usize| decisions.get(i).unwrap_or(&Decision::Allow);
        for action in actions {
            match action {
                Action::Forward { range, expect } => {
                    if self.skip_until_sync {
                        continue;
                    }
                    if let Some(e) = expect {
                        self.shared.push(e);
                    }
                    out.extend_from_slice(&buf[range]);
                }
                Action::Query {
                    range,
                    first,
                    count,
                } => {
                    if self.skip_until_sync {
                        self.skipped(&ids[first..first + count]);
                        continue;
                    }
                    let denied = (first..first + count).find_map(|i| match decision(i) {
                        Decision::Deny { reason } => Some(reason.clone()),
                        Decision::Allow => None,
                    });
                    match denied {
                        None => {
                            let mut q = lock(&self.shared.expect);
                            for id in &ids[first..first + count] {
                                q.items.push_back(Expect::Exec(Exec::new(*id)));
                            }
                            q.items.push_back(Expect::Ready);
                            drop(q);
                            out.extend_from_slice(&buf[range]);
                        }
                        // A multi-statement string runs all or nothing through the gateway:
                        // refuse the whole string rather than run a prefix of it.
                        Some(reason) => {
                            for id in &ids[first..first + count] {
                                self.pipeline.outcome(
                                    &self.info,
                                    not_executed(*id, "refused by the gateway"),
                                );
                            }
                            let mut frames = BytesMut::new();
                            codec::error_response(&mut frames, "ERROR", "42501", &reason);
                            self.inject(frames, true);
                        }
                    }
                }
                Action::Execute {
                    range,
                    index,
                    function_call,
                } => {
                    if self.skip_until_sync {
                        self.skipped(&ids[index..=index]);
                        continue;
                    }
                    let id = ids[index];
                    match decision(index) {
                        Decision::Allow => {
                            let exec = Exec::new(id);
                            self.shared.push(if function_call {
                                Expect::FunctionCall(exec)
                            } else {
                                Expect::Exec(exec)
                            });
                            out.extend_from_slice(&buf[range]);
                        }
                        Decision::Deny { reason } => {
                            self.pipeline
                                .outcome(&self.info, not_executed(id, "refused by the gateway"));
                            let mut frames = BytesMut::new();
                            codec::error_response(&mut frames, "ERROR", "42501", reason);
                            self.inject(frames, false);
                            self.skip_until_sync = true;
                        }
                    }
                }
                Action::Sync { range } => {
                    self.skip_until_sync = false;
                    self.shared.push_sync();
                    out.extend_from_slice(&buf[range]);
                }
                Action::CopyEnd { range } => {
                    self.shared.client_copy_ended();
                    out.extend_from_slice(&buf[range]);
                }
                Action::Terminate => {
                    // Forward Terminate so the target ends the backend cleanly.
                    out.extend_from_slice(b"X\0\0\0\x04");
                    return true;
                }
            }
        }
        false
    }

    fn inject(&self, frames: BytesMut, then_ready: bool) {
        self.shared.push(Expect::Inject {
            frames,
            then_ready,
            close_after: false,
        });
        self.shared.wake.notify_one();
    }

    /// Records requests discarded after an earlier refusal in the same batch.
    fn skipped(&self, ids: &[u64]) {
        for id in ids {
            self.pipeline.outcome(
                &self.info,
                not_executed(*id, "an earlier statement in the batch was refused"),
            );
        }
    }
}

impl Exec {
    fn new(request_id: u64) -> Exec {
        Exec {
            request_id,
            started: Instant::now(),
            rows: 0,
        }
    }

    fn finish(self, status: OutcomeStatus) -> Outcome {
        Outcome {
            request_id: self.request_id,
            status,
            duration: self.started.elapsed(),
        }
    }
}

fn not_executed(request_id: u64, reason: &str) -> Outcome {
    Outcome {
        request_id,
        status: OutcomeStatus::NotExecuted {
            reason: reason.to_owned(),
        },
        duration: std::time::Duration::ZERO,
    }
}

fn io_reason(e: std::io::Error) -> String {
    format!("connection error: {e}")
}

struct ServerToClient<P> {
    pipeline: Arc<P>,
    info: Arc<SessionInfo>,
    shared: Arc<Shared>,
    upstream: ReadHalf<BoxStream>,
    client: WriteHalf<BoxStream>,
    /// Transaction status from the latest ReadyForQuery, for injected ones.
    txn_status: u8,
}

impl<P: Pipeline> ServerToClient<P> {
    async fn run(mut self) -> Result<(), String> {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        // Bytes of the current pass-through frame not yet received.
        let mut passthrough: usize = 0;
        let result = loop {
            tokio::select! {
                read = self.upstream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => break Ok(()),
                        Ok(_) => {}
                        Err(e) => break Err(io_reason(e)),
                    }
                }
                () = self.shared.wake.notified() => {
                    if passthrough == 0 {
                        if let Err(e) = self.write_due_injections().await {
                            break Err(e);
                        }
                    }
                    continue;
                }
            }
            if let Err(e) = self.process(&mut buf, &mut passthrough).await {
                break Err(e);
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
        };
        result
    }

    /// Forwards everything complete in `buf`, updating the queue frame by frame.
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
        let mut inject_due = *passthrough == 0 && self.front_is_inject();
        loop {
            if inject_due && *passthrough == 0 {
                self.client
                    .write_all(&buf[written..pos])
                    .await
                    .map_err(io_reason)?;
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
                if needs_body(h.tag) {
                    if h.body_len > MAX_INSPECTED_SERVER_MESSAGE {
                        return Err(format!(
                            "server message of {} bytes is too large",
                            h.body_len
                        ));
                    }
                    break; // wait for the rest of this frame
                }
                // Large DataRow/CopyData: account for it now, stream its bytes as they come.
                // An injection this makes due waits for the frame's end (next chunk).
                self.observe(h.tag, &[]);
                *passthrough = total - available;
                pos = buf.len();
                break;
            }
            let body = &buf[pos + 5..pos + total];
            inject_due = self.observe(h.tag, body);
            pos += total;
        }
        if pos > written {
            self.client
                .write_all(&buf[written..pos])
                .await
                .map_err(io_reason)?;
        }
        self.client.flush().await.map_err(io_reason)?;
        buf.advance(pos);
        Ok(())
    }

    /// Updates the queue for one server frame. Returns true when an injection became due.
    fn observe(&mut self, tag: u8, body: &[u8]) -> bool {
        if tag == b'G' {
            self.shared.server_copy_in();
        }
        let mut guard = lock(&self.shared.expect);
        if matches!(tag, b'C' | b'E') {
            // Any copy is over once the server completes or fails the command.
            guard.copy_in = false;
        }
        let q = &mut guard.items;
        match tag {
            b'D' => {
                if let Some(Expect::Exec(e)) = q.front_mut() {
                    e.rows += 1;
                }
            }
            b'1' => pop_if(q, |e| matches!(e, Expect::ParseComplete)),
            b'2' => pop_if(q, |e| matches!(e, Expect::BindComplete)),
            b'3' => pop_if(q, |e| matches!(e, Expect::CloseComplete)),
            b't' => {
                if let Some(Expect::DescribeStatement { name }) = q.front() {
                    let types = parse_param_description(body);
                    lock(&self.shared.statement_types).insert(name.clone(), types);
                }
            }
            b'T' | b'n' => pop_if(q, |e| {
                matches!(e, Expect::DescribeStatement { .. } | Expect::DescribePortal)
            }),
            b'C' | b'I' | b's' => {
                if !matches!(q.front(), Some(Expect::Exec(_))) {
                    tracing::warn!(session = %self.info.id, tag = %tag.escape_ascii(), front = ?q.front(), "completion without a pending execution");
                }
                if let Some(Expect::Exec(_)) = q.front() {
                    if let Some(Expect::Exec(e)) = q.pop_front() {
                        let tag_text = match tag {
                            b'C' => {
                                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body))
                                    .into_owned()
                            }
                            b'I' => "EMPTY".to_owned(),
                            _ => "SUSPENDED".to_owned(),
                        };
                        let rows = codec::rows_from_tag(&tag_text).unwrap_or(e.rows);
                        let outcome = e.finish(OutcomeStatus::Ok {
                            tag: tag_text,
                            rows,
                        });
                        self.pipeline.outcome(&self.info, outcome);
                    }
                }
            }
            b'V' => {
                if let Some(Expect::FunctionCall(_)) = q.front() {
                    if let Some(Expect::FunctionCall(e)) = q.pop_front() {
                        let outcome = e.finish(OutcomeStatus::Ok {
                            tag: "FUNCTION CALL".into(),
                            rows: 1,
                        });
                        self.pipeline.outcome(&self.info, outcome);
                    }
                }
            }
            b'E' => {
                // The server now skips everything up to the next Sync: the first pending
                // command gets the error, the rest of the batch never runs.
                let fields = codec::parse_error_fields(body);
                let mut first = true;
                while let Some(front) = q.front() {
                    if matches!(
                        front,
                        Expect::Ready | Expect::SyncReady | Expect::Inject { .. }
                    ) {
                        break;
                    }
                    if let Some(Expect::Exec(e) | Expect::FunctionCall(e)) = q.pop_front() {
                        let outcome = if first {
                            let rows = e.rows;
                            e.finish(OutcomeStatus::Error {
                                code: fields.code.clone(),
                                message: fields.message.clone(),
                                rows,
                            })
                        } else {
                            not_executed(e.request_id, "an earlier statement in the batch failed")
                        };
                        self.pipeline.outcome(&self.info, outcome);
                        first = false;
                    }
                }
            }
            b'Z' => {
                self.txn_status = body.first().copied().unwrap_or(b'I');
                while let Some(e) = q.pop_front() {
                    match e {
                        Expect::Ready | Expect::SyncReady => break,
                        Expect::Exec(e) | Expect::FunctionCall(e) => self.pipeline.outcome(
                            &self.info,
                            not_executed(e.request_id, "the server did not run it"),
                        ),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        matches!(q.front(), Some(Expect::Inject { .. }))
    }

    fn front_is_inject(&self) -> bool {
        matches!(
            lock(&self.shared.expect).items.front(),
            Some(Expect::Inject { .. })
        )
    }

    /// Writes every injection now at the front of the queue. An injection that closes
    /// the session (a FATAL error) ends this task with its reason.
    async fn write_due_injections(&mut self) -> Result<(), String> {
        loop {
            let (frames, close_after) = {
                let mut guard = lock(&self.shared.expect);
                let q = &mut guard.items;
                if !matches!(q.front(), Some(Expect::Inject { .. })) {
                    break;
                }
                let Some(Expect::Inject {
                    mut frames,
                    then_ready,
                    close_after,
                }) = q.pop_front()
                else {
                    break;
                };
                if then_ready {
                    codec::ready_for_query(&mut frames, self.txn_status);
                }
                (frames, close_after)
            };
            self.client.write_all(&frames).await.map_err(io_reason)?;
            self.client.flush().await.map_err(io_reason)?;
            if close_after {
                return Err("closed by the gateway after a protocol error".into());
            }
        }
        Ok(())
    }
}

/// Server messages the gateway must read whole.
fn needs_body(tag: u8) -> bool {
    matches!(tag, b'C' | b'E' | b'Z' | b't')
}

fn pop_if(q: &mut VecDeque<Expect>, want: impl Fn(&Expect) -> bool) {
    if q.front().is_some_and(want) {
        q.pop_front();
    }
}

fn parse_param_description(body: &[u8]) -> Vec<u32> {
    let mut pos = 0;
    let Ok(n) = codec::read_i16(body, &mut pos, "ParameterDescription") else {
        return Vec::new();
    };
    (0..n.max(0))
        .map_while(|_| codec::read_i32(body, &mut pos, "ParameterDescription").ok())
        .map(|t| t as u32)
        .collect()
}
