//! What the server owes the client, in order, and how each server message settles it.
//!
//! Pure bookkeeping, no I/O: the client side pushes an [`Expect`] for every message the
//! server will answer (before the message leaves), the server side calls
//! [`State::observe`] for every server message. It mirrors the server's rules exactly:
//! an error in the extended protocol discards everything up to the next Sync (including a
//! simple Query sent in between); Syncs are ignored during COPY FROM STDIN; a simple Query
//! or FunctionCall is answered by its own ReadyForQuery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_core::{Outcome, OutcomeStatus};

use super::names::{Names, Undo};
use crate::client_text::ClientText;
use crate::codec;

/// One answer the server owes.
#[derive(Debug)]
pub(super) enum Expect {
    /// ParseComplete; `exec` when the Parse is recorded (named statements), `undo` when it
    /// changed the gateway's view of the statements.
    ParseComplete {
        exec: Option<Exec>,
        undo: Option<Undo>,
    },
    BindComplete {
        undo: Option<Undo>,
    },
    /// CloseComplete for statement (`S`) or portal (`P`) `name`.
    CloseComplete {
        kind: u8,
        name: String,
    },
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement {
        name: String,
    },
    /// RowDescription or NoData.
    DescribePortal,
    /// RowDescription or NoData answering a Describe the gateway added before an Execute
    /// (masking must know the columns of every result); not forwarded to the client.
    GatewayDescribe,
    /// One Execute of the extended protocol.
    Exec(Exec),
    /// One statement of a simple Query.
    QueryExec(Exec),
    FunctionCall(Exec),
    /// ReadyForQuery ending a simple Query or a FunctionCall.
    Ready,
    /// ReadyForQuery answering a Sync.
    SyncReady,
    /// The client ended a COPY FROM STDIN before the server was seen entering copy-in mode.
    ClientCopyEnded,
    /// An extended-protocol message the gateway refused. In its place the server was sent
    /// an Execute of a portal that cannot exist, so that the server fails the batch (and
    /// its implicit transaction) exactly as if the message had failed there; the server's
    /// ErrorResponse is replaced by `frames`, the gateway's refusal.
    Refused {
        frames: BytesMut,
        /// A simple Query (or FunctionCall) refused the same way: the server was sent a
        /// Query that fails to parse; its ReadyForQuery follows as usual.
        query: bool,
    },
    /// Gateway-built frames, written when everything before them has been answered;
    /// `then_ready` appends a ReadyForQuery with the current status; `close_after` ends
    /// the session (FATAL errors).
    Inject {
        frames: BytesMut,
        then_ready: bool,
        close_after: bool,
    },
}

impl Expect {
    /// The entry's kind, for logs (its contents can hold statement text and bind values).
    fn kind(&self) -> &'static str {
        match self {
            Expect::ParseComplete { .. } => "ParseComplete",
            Expect::BindComplete { .. } => "BindComplete",
            Expect::CloseComplete { .. } => "CloseComplete",
            Expect::DescribeStatement { .. } => "DescribeStatement",
            Expect::DescribePortal => "DescribePortal",
            Expect::GatewayDescribe => "GatewayDescribe",
            Expect::Exec(_) => "Exec",
            Expect::QueryExec(_) => "QueryExec",
            Expect::FunctionCall(_) => "FunctionCall",
            Expect::Ready => "Ready",
            Expect::SyncReady => "SyncReady",
            Expect::ClientCopyEnded => "ClientCopyEnded",
            Expect::Inject { .. } => "Inject",
            Expect::Refused { .. } => "Refused",
        }
    }

    /// A ReadyForQuery will settle it.
    fn is_ready(&self) -> bool {
        matches!(self, Expect::Ready | Expect::SyncReady)
    }
}

#[derive(Debug)]
pub(super) struct Exec {
    pub request_id: u64,
    started: Instant,
    rows: u64,
    /// The statement text, kept only when the session's results are masked.
    pub sql: Option<Arc<str>>,
}

impl Exec {
    pub fn new(request_id: u64, sql: Option<Arc<str>>) -> Exec {
        Exec {
            request_id,
            started: Instant::now(),
            rows: 0,
            sql,
        }
    }

    fn finish(self, status: OutcomeStatus) -> Outcome {
        Outcome {
            transfer: None,
            request_id: self.request_id,
            status,
            duration: self.started.elapsed(),
            masked: Vec::new(),
        }
    }

    fn error(self, code: &str, message: &str) -> Outcome {
        let rows = self.rows;
        self.finish(OutcomeStatus::Error {
            code: code.to_owned(),
            message: message.to_owned(),
            rows,
        })
    }
}

pub(super) fn not_executed(request_id: u64, reason: &str) -> Outcome {
    Outcome {
        transfer: None,
        request_id,
        status: OutcomeStatus::NotExecuted {
            reason: reason.to_owned(),
        },
        duration: Duration::ZERO,
        masked: Vec::new(),
    }
}

/// COPY FROM STDIN as the server sees it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Copy {
    #[default]
    Idle,
    /// CopyInResponse seen; the client has not ended the copy yet.
    In,
    /// The server failed the copy; the client's CopyData/CopyDone still in flight are
    /// ignored by the server and get no answer.
    Failed,
}

/// Everything both directions of a session share; guarded by one lock.
#[derive(Default)]
pub(super) struct State {
    queue: VecDeque<Expect>,
    copy: Copy,
    /// The server is discarding messages until the next Sync (after an extended-protocol
    /// error), so nothing it will discard may be queued.
    discarding: bool,
    pub names: Names,
    /// ReadyForQuery-producing messages queued, and ReadyForQuery messages seen.
    readies_queued: u64,
    readies_seen: u64,
    /// Transaction status of the latest ReadyForQuery.
    pub txn_status: u8,
    /// Undos collected while settling a batch; applied newest first.
    undos: Vec<(Undo, bool)>,
    /// The session's client_encoding when it is one whose multibyte characters can
    /// contain `\` or `;` (see `codec::encoding_hides_delimiters`).
    pub unsafe_encoding: Option<String>,
    /// How the client's text reads in its client_encoding.
    pub client_text: ClientText,
    /// Frames to send instead of the server's ErrorResponse just observed (a refusal).
    replacement: Option<BytesMut>,
    /// The frame just observed answered the gateway's own Describe: not for the client.
    suppressed: bool,
}

impl State {
    pub fn new(txn_status: u8, client_encoding: Option<&str>) -> State {
        let mut state = State {
            txn_status,
            ..State::default()
        };
        if let Some(e) = client_encoding {
            state.set_client_encoding(e);
        }
        state
    }

    pub fn set_client_encoding(&mut self, encoding: &str) {
        self.unsafe_encoding =
            codec::encoding_hides_delimiters(encoding).then(|| encoding.to_owned());
        self.client_text = ClientText::named(encoding);
    }

    /// ReadyForQuery-producing messages queued so far (the epoch of a Bind).
    pub fn epoch(&self) -> u64 {
        self.readies_queued
    }

    /// Answers the server owes now (bounds what a client that does not read may queue).
    pub fn owed(&self) -> usize {
        self.queue.len()
    }

    /// Remembers that a definition did not happen (`failed`: it failed itself, rather
    /// than being skipped); see [`State::apply_undos`].
    pub fn defer_undo(&mut self, undo: Undo, failed: bool) {
        self.undos.push((undo, failed));
    }

    /// Applies collected undos newest first, so each restores what the one before it had
    /// replaced.
    pub fn apply_undos(&mut self) {
        while let Some((undo, failed)) = self.undos.pop() {
            self.names.undo(undo, failed);
        }
    }

    /// Queues what the server owes for a message about to be forwarded. When the server
    /// will discard the message (after an error, until Sync), nothing is queued and the
    /// outcomes of what will not run are returned.
    pub fn push(&mut self, e: Expect) -> Vec<Outcome> {
        let fatal = matches!(
            e,
            Expect::Inject {
                close_after: true,
                ..
            }
        );
        if !self.discarding || fatal {
            if e.is_ready() {
                self.readies_queued += 1;
            }
            self.queue.push_back(e);
            return Vec::new();
        }
        let skipped = |e: Exec| {
            vec![not_executed(
                e.request_id,
                "an earlier message in the batch failed",
            )]
        };
        match e {
            Expect::Exec(e) | Expect::QueryExec(e) | Expect::FunctionCall(e) => skipped(e),
            Expect::ParseComplete { exec, undo, .. } => {
                if let Some(undo) = undo {
                    self.defer_undo(undo, false);
                }
                exec.map(skipped).unwrap_or_default()
            }
            Expect::BindComplete { undo: Some(undo) } => {
                self.defer_undo(undo, false);
                Vec::new()
            }
            Expect::CloseComplete { kind, name } => {
                self.names.finish_close(kind, &name, false);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The client sent Sync: answered unless the server is in copy-in mode.
    pub fn push_sync(&mut self) {
        self.discarding = false;
        if self.copy != Copy::In {
            self.readies_queued += 1;
            self.queue.push_back(Expect::SyncReady);
        }
    }

    /// The client sent something other than copy data or the end of a copy: a copy the
    /// server failed is over for it too, even if it never sent CopyDone or CopyFail (the
    /// server drops those whenever they come). Without this, the end of the client's next
    /// COPY would be taken for the end of the failed one.
    pub fn client_moved_on(&mut self) {
        if self.copy == Copy::Failed {
            self.copy = Copy::Idle;
        }
    }

    /// The client sent CopyDone or CopyFail.
    pub fn client_copy_ended(&mut self) {
        match self.copy {
            Copy::In | Copy::Failed => self.copy = Copy::Idle,
            Copy::Idle => self.queue.push_back(Expect::ClientCopyEnded),
        }
    }

    pub fn front_is_inject(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Inject { .. }))
    }

    /// Takes the injection at the front, if any: its frames and whether it closes the session.
    pub fn pop_inject(&mut self) -> Option<(BytesMut, bool)> {
        if !self.front_is_inject() {
            return None;
        }
        match self.queue.pop_front() {
            Some(Expect::Inject {
                mut frames,
                then_ready,
                close_after,
            }) => {
                if then_ready {
                    codec::ready_for_query(&mut frames, self.txn_status);
                }
                Some((frames, close_after))
            }
            _ => None,
        }
    }

    /// Settles the queue for one server message (`body` may be empty for a large
    /// pass-through DataRow/CopyData). Returns the outcomes of statements it completed.
    pub fn observe(&mut self, tag: u8, body: &[u8]) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        // A CopyDone the client sent before a COPY that then failed to start is owed
        // nothing: drop it once any other answer arrives.
        if tag != b'G' && matches!(self.queue.front(), Some(Expect::ClientCopyEnded)) {
            self.queue.pop_front();
        }
        match tag {
            b'G' => self.copy_in_started(),
            b'D' => {
                if let Some(Expect::Exec(e) | Expect::QueryExec(e)) = self.queue.front_mut() {
                    e.rows += 1;
                }
            }
            b'1' => {
                if let Some(Expect::ParseComplete { .. }) = self.queue.front() {
                    if let Some(Expect::ParseComplete { exec, undo }) = self.queue.pop_front() {
                        if let Some(undo) = &undo {
                            self.names.confirm(undo);
                        }
                        if let Some(e) = exec {
                            outcomes.push(e.finish(OutcomeStatus::Ok {
                                tag: "PARSE".into(),
                                rows: 0,
                            }));
                        }
                    }
                }
            }
            b'2' => {
                if let Some(Expect::BindComplete { .. }) = self.queue.front() {
                    if let Some(Expect::BindComplete { undo: Some(undo) }) = self.queue.pop_front()
                    {
                        self.names.confirm(&undo);
                    }
                }
            }
            b'3' => {
                if let Some(Expect::CloseComplete { .. }) = self.queue.front() {
                    if let Some(Expect::CloseComplete { kind, name }) = self.queue.pop_front() {
                        self.names.finish_close(kind, &name, true);
                    }
                }
            }
            b't' => {
                if let Some(Expect::DescribeStatement { name }) = self.queue.front() {
                    let name = name.clone();
                    self.names
                        .set_reported(&name, parse_param_description(body));
                }
            }
            b'T' | b'n' => {
                if let Some(Expect::GatewayDescribe) = self.queue.front() {
                    self.queue.pop_front();
                    self.suppressed = true;
                } else {
                    self.pop_if(|e| {
                        matches!(e, Expect::DescribeStatement { .. } | Expect::DescribePortal)
                    })
                }
            }
            b'C' | b'I' | b's' => {
                if matches!(
                    self.queue.front(),
                    Some(Expect::Exec(_) | Expect::QueryExec(_))
                ) {
                    if let Some(Expect::Exec(e) | Expect::QueryExec(e)) = self.queue.pop_front() {
                        let tag = match tag {
                            b'C' => {
                                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body))
                                    .into_owned()
                            }
                            b'I' => "EMPTY".to_owned(),
                            _ => "SUSPENDED".to_owned(),
                        };
                        let rows = codec::rows_from_tag(&tag).unwrap_or(e.rows);
                        outcomes.push(e.finish(OutcomeStatus::Ok { tag, rows }));
                    }
                } else {
                    // Only the kind of entry: its contents can hold bind values.
                    tracing::warn!(
                        front = self.queue.front().map(Expect::kind),
                        "completion without a pending execution"
                    );
                }
            }
            b'V' => {
                if let Some(Expect::FunctionCall(_)) = self.queue.front() {
                    if let Some(Expect::FunctionCall(e)) = self.queue.pop_front() {
                        outcomes.push(e.finish(OutcomeStatus::Ok {
                            tag: "FUNCTION CALL".into(),
                            rows: 1,
                        }));
                    }
                }
            }
            b'S' => {
                if let Some(("client_encoding", value)) = codec::parse_parameter_status(body) {
                    self.set_client_encoding(value);
                }
            }
            b'E' => self.error(body, &mut outcomes),
            b'Z' => self.ready(body, &mut outcomes),
            _ => {}
        }
        outcomes
    }

    fn pop_if(&mut self, want: impl Fn(&Expect) -> bool) {
        if self.queue.front().is_some_and(want) {
            self.queue.pop_front();
        }
    }

    /// CopyInResponse for the command at the front: Syncs the client sent after it, up to
    /// its end of the copy, are ignored by the server.
    fn copy_in_started(&mut self) {
        let mut ended = false;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for (i, e) in self.queue.drain(..).enumerate() {
            if i > 0 && !ended {
                match e {
                    Expect::SyncReady => {
                        self.readies_queued -= 1;
                        continue;
                    }
                    Expect::ClientCopyEnded => {
                        ended = true;
                        continue;
                    }
                    _ => {}
                }
            }
            kept.push_back(e);
        }
        self.queue = kept;
        self.copy = if ended { Copy::Idle } else { Copy::In };
    }

    /// Whether the server is skipping messages until the next Sync.
    pub fn discarding(&self) -> bool {
        self.discarding
    }

    /// Whether the frame just observed answered the gateway's own message (not forwarded).
    pub fn take_suppressed(&mut self) -> bool {
        std::mem::take(&mut self.suppressed)
    }

    /// The text of the next statement execution the server owes an answer for (what a
    /// RowDescription or CopyOutResponse arriving now belongs to), when it was kept.
    pub fn current_sql(&self) -> Option<Arc<str>> {
        self.queue.iter().find_map(|e| match e {
            Expect::Exec(e) | Expect::QueryExec(e) | Expect::FunctionCall(e) => Some(e.sql.clone()),
            _ => None,
        })?
    }

    /// The frames that replace the ErrorResponse just observed, if it answered a refusal.
    pub fn take_replacement(&mut self) -> Option<BytesMut> {
        self.replacement.take()
    }

    fn error(&mut self, body: &[u8], outcomes: &mut Vec<Outcome>) {
        if self.copy == Copy::In {
            self.copy = Copy::Failed;
        }
        let fields = codec::parse_error_fields(body);
        if let Some(Expect::Refused { .. }) = self.queue.front() {
            if let Some(Expect::Refused { frames, query }) = self.queue.pop_front() {
                self.replacement = Some(frames);
                if query {
                    return;
                }
            }
            self.discard_to_sync(&fields, outcomes);
            return;
        }
        match self.queue.front() {
            // A simple Query or FunctionCall: its statement failed, the rest of the string
            // does not run; its own ReadyForQuery follows.
            Some(Expect::QueryExec(_) | Expect::FunctionCall(_)) => {
                if let Some(Expect::QueryExec(e) | Expect::FunctionCall(e)) = self.queue.pop_front()
                {
                    outcomes.push(e.error(&fields.code, &fields.message));
                }
                while let Some(Expect::QueryExec(_)) = self.queue.front() {
                    if let Some(Expect::QueryExec(e)) = self.queue.pop_front() {
                        outcomes.push(not_executed(
                            e.request_id,
                            "an earlier statement in the query string failed",
                        ));
                    }
                }
            }
            // The extended protocol: everything up to the next Sync is discarded.
            Some(
                Expect::Exec(_)
                | Expect::ParseComplete { .. }
                | Expect::BindComplete { .. }
                | Expect::CloseComplete { .. }
                | Expect::DescribeStatement { .. }
                | Expect::DescribePortal
                | Expect::GatewayDescribe,
            ) => self.discard_to_sync(&fields, outcomes),
            // Not an answer to anything pending (e.g. a FATAL shutdown): just forwarded.
            _ => {}
        }
    }

    fn discard_to_sync(&mut self, fields: &codec::ErrorFields, outcomes: &mut Vec<Outcome>) {
        // The message that failed is the one at the front; the first execution in the
        // batch carries the error in the record, the rest never ran.
        let mut failing_message = true;
        let mut error_recorded = false;
        let mut discarded_readies = 0;
        let mut fatal = Vec::new();
        loop {
            match self.queue.front() {
                None => {
                    // The Sync has not been sent yet: discard what comes until it is.
                    self.discarding = true;
                    break;
                }
                Some(Expect::SyncReady) => break,
                Some(_) => {}
            }
            let failed = std::mem::take(&mut failing_message);
            let mut record = |e: Exec, outcomes: &mut Vec<Outcome>| {
                if std::mem::replace(&mut error_recorded, true) {
                    outcomes.push(not_executed(
                        e.request_id,
                        "an earlier message in the batch failed",
                    ));
                } else {
                    outcomes.push(e.error(&fields.code, &fields.message));
                }
            };
            match self.queue.pop_front() {
                Some(Expect::ParseComplete { exec, undo, .. }) => {
                    if let Some(e) = exec {
                        record(e, outcomes);
                    }
                    if let Some(undo) = undo {
                        self.undos.push((undo, failed));
                    }
                }
                Some(Expect::BindComplete { undo: Some(undo) }) => self.undos.push((undo, failed)),
                Some(Expect::Exec(e)) => record(e, outcomes),
                Some(Expect::QueryExec(e) | Expect::FunctionCall(e)) => {
                    outcomes.push(not_executed(
                        e.request_id,
                        "an earlier message in the batch failed",
                    ));
                }
                Some(Expect::CloseComplete { kind, name }) => {
                    self.names.finish_close(kind, &name, false)
                }
                Some(Expect::Ready) => discarded_readies += 1,
                Some(
                    e @ Expect::Inject {
                        close_after: true, ..
                    },
                ) => fatal.push(e),
                _ => {}
            }
        }
        // Discarded Queries get no ReadyForQuery.
        self.readies_queued -= discarded_readies;
        for e in fatal.into_iter().rev() {
            self.queue.push_front(e);
        }
        self.apply_undos();
    }

    fn ready(&mut self, body: &[u8], outcomes: &mut Vec<Outcome>) {
        self.txn_status = body.first().copied().unwrap_or(b'I');
        // A failed copy stays `Failed` until the client's own CopyDone/CopyFail arrives.
        if self.copy == Copy::In {
            self.copy = Copy::Idle;
        }
        let mut kept = Vec::new();
        while let Some(e) = self.queue.pop_front() {
            match e {
                Expect::Ready | Expect::SyncReady => break,
                Expect::Exec(e) | Expect::QueryExec(e) | Expect::FunctionCall(e) => {
                    outcomes.push(not_executed(e.request_id, "the server did not run it"))
                }
                Expect::CloseComplete { kind, name } => self.names.finish_close(kind, &name, false),
                e @ Expect::Inject { .. } => kept.push(e),
                _ => {}
            }
        }
        for e in kept.into_iter().rev() {
            self.queue.push_front(e);
        }
        self.readies_seen += 1;
        if self.txn_status == b'I' {
            self.names.transaction_ended(self.readies_seen);
        }
    }

    /// The session ended: statements still owed an answer end with it.
    pub fn drain(&mut self) -> Vec<Outcome> {
        self.queue
            .drain(..)
            .filter_map(|e| match e {
                Expect::Exec(e) | Expect::QueryExec(e) | Expect::FunctionCall(e) => {
                    Some(e.error("08006", "the session ended before the statement completed; whether it ran to the end on the target is not known"))
                }
                _ => None,
            })
            .collect()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn error(code: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        codec::error_response(&mut b, "ERROR", code, "boom");
        b[5..].to_vec()
    }

    fn status(o: &Outcome) -> &'static str {
        match o.status {
            OutcomeStatus::Ok { .. } => "ok",
            OutcomeStatus::Error { .. } => "error",
            OutcomeStatus::NotExecuted { .. } => "not_executed",
        }
    }

    #[test]
    fn extended_error_discards_to_sync_including_a_query_in_between() {
        let mut s = State::new(b'I', None);
        s.push(Expect::ParseComplete {
            exec: None,
            undo: None,
        });
        s.push(Expect::BindComplete { undo: None });
        s.push(Expect::Exec(Exec::new(1, None)));
        s.push(Expect::QueryExec(Exec::new(2, None)));
        s.push(Expect::Ready);
        s.push_sync();
        s.push(Expect::QueryExec(Exec::new(3, None)));
        s.push(Expect::Ready);
        s.observe(b'1', &[]);
        s.observe(b'2', &[]);
        let out = s.observe(b'E', &error("22012"));
        assert_eq!(
            out.iter().map(status).collect::<Vec<_>>(),
            ["error", "not_executed"]
        );
        assert!(s.observe(b'Z', b"I").is_empty());
        // The next Query is matched to its own answers, not shifted by one.
        let out = s.observe(b'C', b"SELECT 1\0");
        assert_eq!(out[0].request_id, 3);
        assert_eq!(status(&out[0]), "ok");
        s.observe(b'Z', b"I");
        assert!(s.queue.is_empty());
    }

    #[test]
    fn messages_after_an_error_and_before_sync_are_not_queued() {
        let mut s = State::new(b'I', None);
        s.push(Expect::Exec(Exec::new(1, None)));
        s.observe(b'E', &error("22012"));
        assert_eq!(
            s.push(Expect::Exec(Exec::new(2, None))).len(),
            1,
            "discarded by the server"
        );
        s.push_sync();
        s.observe(b'Z', b"I");
        assert!(s.queue.is_empty());
    }

    #[test]
    fn syncs_during_copy_in_are_ignored_and_a_failed_copy_leaves_nothing_behind() {
        let mut s = State::new(b'I', None);
        // Extended-protocol COPY: Execute, Sync, then the data and CopyDone, then Sync.
        s.push(Expect::Exec(Exec::new(1, None)));
        s.push_sync();
        s.observe(b'G', &[]);
        s.client_copy_ended();
        s.push_sync();
        assert_eq!(status(&s.observe(b'C', b"COPY 3\0")[0]), "ok");
        s.observe(b'Z', b"I");
        assert!(s.queue.is_empty());

        // Simple-protocol COPY that the server fails while the client is still sending.
        s.push(Expect::QueryExec(Exec::new(2, None)));
        s.push(Expect::Ready);
        s.observe(b'G', &[]);
        assert_eq!(status(&s.observe(b'E', &error("22P02"))[0]), "error");
        s.observe(b'Z', b"I");
        s.client_copy_ended(); // the client's late CopyDone: ignored by the server
        assert!(s.queue.is_empty());
        // The next Query is matched to its own answers.
        s.push(Expect::QueryExec(Exec::new(3, None)));
        s.push(Expect::Ready);
        assert_eq!(status(&s.observe(b'C', b"SELECT 1\0")[0]), "ok");
    }

    #[test]
    fn function_call_has_its_own_ready_for_query() {
        let mut s = State::new(b'I', None);
        s.push(Expect::FunctionCall(Exec::new(1, None)));
        s.push(Expect::Ready);
        s.push(Expect::QueryExec(Exec::new(2, None)));
        s.push(Expect::Ready);
        assert_eq!(status(&s.observe(b'V', &[])[0]), "ok");
        s.observe(b'Z', b"I");
        assert_eq!(s.observe(b'C', b"SELECT 1\0")[0].request_id, 2);
    }

    #[test]
    fn injections_wait_for_earlier_answers() {
        let mut s = State::new(b'T', None);
        s.push(Expect::QueryExec(Exec::new(1, None)));
        s.push(Expect::Ready);
        s.push(Expect::Inject {
            frames: BytesMut::new(),
            then_ready: true,
            close_after: false,
        });
        assert!(!s.front_is_inject());
        s.observe(b'C', b"SELECT 1\0");
        s.observe(b'Z', b"T");
        let (frames, close) = s.pop_inject().unwrap();
        assert!(!close);
        assert_eq!(&frames[..], b"Z\0\0\0\x05T");
    }
}
