//! What `sessions list|show` (and the API) return: sessions from the index, and a
//! session's audit records with each statement joined to its result.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use sluice_audit::{EventBody, Position, Record};
use sluice_core::AgentContext;
use sluice_store::SessionRow;

pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `t` in unix milliseconds (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `revoked`, `expired` or `active`: a token's or a key's state at `now_ms`.
pub fn credential_state(revoked_ms: Option<i64>, expires_ms: i64, now_ms: i64) -> &'static str {
    if revoked_ms.is_some() {
        "revoked"
    } else if expires_ms <= now_ms {
        "expired"
    } else {
        "active"
    }
}

/// Where session `row`'s records start in the audit log.
pub fn session_start(row: &SessionRow) -> Position {
    Position {
        segment: row.audit_segment,
        offset: row.audit_offset,
        seq: row.audit_seq,
    }
}

fn rfc3339_micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[derive(Debug, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub user: String,
    pub actor: String,
    pub connection: String,
    pub protocol: String,
    pub client_addr: String,
    pub start: String,
    pub end: Option<String>,
    pub end_reason: Option<String>,
    pub statements: u64,
    /// Statements denied, held for review, and with masked results (from the statement
    /// index, which follows the audit log within about a second).
    pub denied: u64,
    pub held: u64,
    pub masked: u64,
}

impl From<&SessionRow> for SessionSummary {
    fn from(r: &SessionRow) -> Self {
        SessionSummary {
            id: r.id.clone(),
            user: r.user.clone(),
            actor: r.actor.clone(),
            connection: r.connection.clone(),
            protocol: r.protocol.clone(),
            client_addr: r.client_addr.clone(),
            start: rfc3339_ms(r.started_ms),
            end: r.ended_ms.map(rfc3339_ms),
            end_reason: r.end_reason.clone(),
            statements: r.statements,
            denied: r.denied,
            held: r.held,
            masked: r.masked,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub summary: SessionSummary,
    /// In log order. Statement events carry their result (rows, duration_ms, error).
    pub events: Vec<Value>,
}

/// Reads the session's records from the audit log, starting where the index says the
/// session began and stopping at its close record.
pub fn session_detail(audit_dir: &Path, row: &SessionRow) -> Result<SessionDetail> {
    let records = sluice_audit::read_from(audit_dir, session_start(row))
        .with_context(|| format!("cannot read the audit log in {}", audit_dir.display()))?;
    let mut events: Vec<Value> = Vec::new();
    let mut by_statement: HashMap<u64, usize> = HashMap::new();
    for record in records {
        let record = record.context("reading the audit log")?;
        if record.event.session.as_deref() != Some(row.id.as_str()) {
            continue;
        }
        let closed = matches!(record.event.body, EventBody::SessionClose { .. });
        add_event(&mut events, &mut by_statement, record);
        if closed {
            break;
        }
    }
    Ok(SessionDetail {
        summary: SessionSummary::from(row),
        events,
    })
}

/// Where a timeline read starts: at a record, or just after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub at: Position,
    /// The record at `at` was shown already and is skipped.
    pub after: bool,
}

/// A timeline was asked to start where the audit log holds no record.
#[derive(Debug, thiserror::Error)]
#[error("no record at this position of the audit log")]
pub struct NoSuchPosition;

/// A stretch of one session's timeline, for the console: at most `max_events` entries
/// from a [`Resume`] point, and where to read again for what comes next.
pub struct Timeline {
    pub events: Vec<Value>,
    /// Where a later read starts: at the earliest statement still waiting for its result
    /// (so the result can be joined to it), else just after the last record read.
    pub resume: Resume,
    /// `max_events` was reached before the session's end.
    pub truncated: bool,
}

/// Reads session `id`'s records from `from` (its first record, or a point a previous read
/// returned), joining each statement to its result, until its close record, the log's end
/// or `max_events`.
pub fn timeline(audit_dir: &Path, id: &str, from: Resume, max_events: usize) -> Result<Timeline> {
    // `from` must name a record: it may come from a client.
    let mut records = sluice_audit::read_from(audit_dir, from.at).map_err(|_| NoSuchPosition)?;
    let mut first = match records.next() {
        Some(Ok(record)) => (!from.after).then_some(record),
        _ => return Err(NoSuchPosition.into()),
    };
    let mut events: Vec<Value> = Vec::new();
    let mut by_statement: HashMap<u64, usize> = HashMap::new();
    // Statements without a result yet, by statement id: where their record starts.
    let mut waiting: HashMap<u64, Position> = HashMap::new();
    let mut last = from;
    let mut truncated = false;
    loop {
        let record = match first.take() {
            Some(record) => record,
            None => match records.next() {
                Some(record) => record.context("reading the audit log")?,
                None => break,
            },
        };
        let position = records.last_position().unwrap_or(last.at);
        last = Resume {
            at: position,
            after: true,
        };
        if record.event.session.as_deref() != Some(id) {
            continue;
        }
        match &record.event.body {
            EventBody::Statement { statement_id, .. } => {
                waiting.insert(*statement_id, position);
            }
            EventBody::Result { statement_id, .. } => {
                waiting.remove(statement_id);
            }
            _ => {}
        }
        let closed = matches!(record.event.body, EventBody::SessionClose { .. });
        add_event(&mut events, &mut by_statement, record);
        if closed {
            break;
        }
        if events.len() >= max_events {
            truncated = true;
            break;
        }
    }
    let resume = waiting
        .into_values()
        .min_by_key(|p| p.seq)
        .map_or(last, |at| Resume { at, after: false });
    Ok(Timeline {
        events,
        resume,
        truncated,
    })
}

/// What `sessions search` looks for; every given criterion must hold.
#[derive(Debug, Default)]
pub struct SearchFilter {
    /// Words in the prompt or intent (case-insensitive substring).
    pub prompt: Option<String>,
    pub tool_call: Option<String>,
    /// A trace id, or a whole `traceparent`.
    pub trace: Option<String>,
    /// Text in the statement (case-insensitive substring).
    pub statement: Option<String>,
    pub conversation: Option<String>,
    pub user: Option<String>,
    pub connection: Option<String>,
    /// Most statements to return: the newest this many.
    pub limit: usize,
}

impl SearchFilter {
    fn matches(
        &self,
        user: &str,
        connection: &str,
        statement: &str,
        ctx: Option<&AgentContext>,
    ) -> bool {
        let contains =
            |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        let field = |f: fn(&AgentContext) -> Option<&str>| ctx.and_then(f);
        self.user.as_deref().is_none_or(|u| u == user)
            && self.connection.as_deref().is_none_or(|c| c == connection)
            && self
                .statement
                .as_deref()
                .is_none_or(|t| contains(statement, t))
            && self.prompt.as_deref().is_none_or(|p| {
                [
                    field(|c| c.prompt.as_deref()),
                    field(|c| c.intent.as_deref()),
                ]
                .into_iter()
                .flatten()
                .any(|text| contains(text, p))
            })
            && self
                .tool_call
                .as_deref()
                .is_none_or(|t| field(|c| c.tool_call.as_deref()) == Some(t))
            && self
                .conversation
                .as_deref()
                .is_none_or(|t| field(|c| c.conversation.as_deref()) == Some(t))
            && self.trace.as_deref().is_none_or(|t| {
                let wanted =
                    sluice_core::context::trace_id(t).unwrap_or_else(|| t.to_ascii_lowercase());
                field(|c| c.trace_id.as_deref()) == Some(wanted.as_str())
            })
    }
}

/// Statements across all sessions that match `filter`, oldest first, each joined to its
/// result: one pass over the whole audit log.
pub fn search(audit_dir: &Path, filter: &SearchFilter) -> Result<Vec<Value>> {
    let records = sluice_audit::read_all(audit_dir)
        .with_context(|| format!("cannot read the audit log in {}", audit_dir.display()))?;
    let mut order: VecDeque<(String, u64)> = VecDeque::new();
    let mut found: HashMap<(String, u64), Value> = HashMap::new();
    for record in records {
        let record = record.context("reading the audit log")?;
        let Some(session) = record.event.session.clone() else {
            continue;
        };
        let time = rfc3339_micros(record.event.time);
        match record.event.body {
            EventBody::Statement {
                statement_id,
                user,
                actor,
                connection,
                statement,
                params,
                decision,
                rule,
                reason,
                review,
                context,
                ..
            } => {
                if !filter.matches(&user, &connection, &statement, context.as_deref()) {
                    continue;
                }
                let key = (session.clone(), statement_id);
                found.insert(key.clone(), json!({
                    "session": session, "statement_id": statement_id, "seq": record.seq, "time": time,
                    "user": user, "actor": actor, "connection": connection,
                    "statement": statement, "params": params, "decision": decision, "rule": rule,
                    "reason": reason, "review": review, "context": context,
                    "status": null, "rows": null, "duration_ms": null, "error": null,
                }));
                order.push_back(key);
                if order.len() > filter.limit.max(1) {
                    if let Some(oldest) = order.pop_front() {
                        found.remove(&oldest);
                    }
                }
            }
            EventBody::Result {
                statement_id,
                status,
                rows,
                duration_ms,
                error,
                ..
            } => {
                if let Some(Value::Object(hit)) = found.get_mut(&(session, statement_id)) {
                    hit.insert("status".into(), json!(status));
                    hit.insert("rows".into(), json!(rows));
                    hit.insert("duration_ms".into(), json!(duration_ms));
                    hit.insert(
                        "error".into(),
                        error.map_or(
                            Value::Null,
                            |e| json!({ "code": e.code, "message": e.message }),
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    Ok(order.into_iter().filter_map(|k| found.remove(&k)).collect())
}

fn add_event(events: &mut Vec<Value>, by_statement: &mut HashMap<u64, usize>, r: Record) {
    let time = rfc3339_micros(r.event.time);
    match r.event.body {
        EventBody::SessionOpen {
            tls,
            application_name,
            client_addr,
            settings,
            context,
            served_by,
            ..
        } => events.push(with_statement_keys(json!({
            "seq": r.seq, "time": time, "kind": "session_open",
            "client_addr": client_addr, "tls": tls, "application_name": application_name,
            "context": context, "served_by": served_by,
            "settings": settings.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<String, Value>>(),
        }))),
        EventBody::Statement {
            statement_id,
            actor,
            statement,
            params,
            decision,
            rule,
            reason,
            prepare,
            statement_name,
            review,
            access_request,
            context,
            call,
            ..
        } => {
            by_statement.insert(statement_id, events.len());
            let mut entry = json!({
                "seq": r.seq, "time": time, "kind": if prepare { "prepare" } else { "statement" },
                "statement_id": statement_id, "actor": actor, "statement": statement, "params": params,
                "statement_name": statement_name,
                "decision": decision, "rule": rule, "reason": reason, "review": review,
                "access_request": access_request, "context": context,
                "status": null, "tag": null, "rows": null, "duration_ms": null, "error": null,
                "masked": [],
            });
            if let (Some(call), Value::Object(fields)) = (call, &mut entry) {
                fields.insert("call".into(), json!(call));
            }
            events.push(entry);
        }
        EventBody::Result {
            statement_id,
            status,
            tag,
            rows,
            duration_ms,
            error,
            masked,
            transfer,
        } => {
            let error = error.map(|e| json!({ "code": e.code, "message": e.message }));
            let masked: Vec<Value> = masked
                .iter()
                .map(|m| json!({ "column": m.column, "detector": m.detector, "style": m.style, "values": m.values }))
                .collect();
            match by_statement.get(&statement_id).and_then(|i| events.get_mut(*i)) {
                Some(Value::Object(stmt)) => {
                    stmt.insert("status".into(), json!(status));
                    stmt.insert("tag".into(), json!(tag));
                    stmt.insert("rows".into(), json!(rows));
                    stmt.insert("duration_ms".into(), json!(duration_ms));
                    stmt.insert("error".into(), error.unwrap_or(Value::Null));
                    stmt.insert("masked".into(), json!(masked));
                    stmt.insert("result_seq".into(), json!(r.seq));
                    if let Some(transfer) = transfer {
                        stmt.insert("transfer".into(), json!(transfer));
                    }
                }
                _ => events.push(with_statement_keys(json!({
                    "seq": r.seq, "time": time, "kind": "result", "statement_id": statement_id,
                    "status": status, "tag": tag, "rows": rows, "duration_ms": duration_ms, "error": error,
                    "masked": masked, "transfer": transfer,
                }))),
            }
        }
        EventBody::SessionClose { reason, statements } => events.push(with_statement_keys(json!({
            "seq": r.seq, "time": time, "kind": "session_close",
            "reason": reason, "statements": statements,
        }))),
        EventBody::ReviewCreated {
            review_id,
            statement_id,
            rule,
            mode,
            reviewers,
            ..
        } => events.push(with_statement_keys(json!({
            "seq": r.seq, "time": time, "kind": "review_created", "review_id": review_id,
            "statement_id": statement_id, "rule": rule, "mode": mode, "reviewers": reviewers,
        }))),
        EventBody::ReviewDecided {
            review_id,
            status,
            by,
            reason,
        } => events.push(with_statement_keys(json!({
            "seq": r.seq, "time": time, "kind": "review_decided", "review_id": review_id,
            "status": status, "by": by, "reason": reason,
        }))),
        EventBody::AuthFailure { .. }
        | EventBody::AccessRequested { .. }
        | EventBody::AccessDecided { .. }
        | EventBody::SignIn { .. }
        | EventBody::SignInFailure { .. }
        | EventBody::AgentConnected { .. }
        | EventBody::AgentDisconnected { .. }
        | EventBody::AgentRefused { .. }
        | EventBody::Denied { .. } => {}
    }
}

/// Every event in a session view has the same core keys (`null` where they do not apply),
/// so scripts can read any event the same way.
fn with_statement_keys(mut event: Value) -> Value {
    if let Value::Object(map) = &mut event {
        for key in ["statement", "params", "rows", "duration_ms", "error"] {
            map.entry(key).or_insert(Value::Null);
        }
    }
    event
}

/// A review as the API and `sluice reviews` show it.
pub fn review_json(r: &sluice_store::ReviewRow) -> Value {
    let time = |ms: i64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    };
    json!({
        "id": r.id,
        "status": r.status,
        "requester": r.requester,
        "actor": r.actor,
        "connection": r.connection,
        "session": r.session_id,
        "rule": r.rule,
        "mode": r.mode,
        "statement": r.statement,
        "params": serde_json::from_str::<Value>(&r.params).unwrap_or(Value::Null),
        "statement_hash": r.statement_hash,
        "reviewers": serde_json::from_str::<Value>(&r.reviewers).unwrap_or(Value::Null),
        "min_approvals": r.min_approvals,
        "approvals": r.approvals.iter().map(|a| json!({
            "approver": a.approver, "at": time(a.at_ms), "reason": a.reason,
        })).collect::<Vec<_>>(),
        "created": time(r.created_ms),
        "expires": time(r.expires_ms),
        "decided": r.decided_ms.map(time),
        "decided_by": r.decided_by,
        "reason": r.reason,
        "use_by": r.use_by_ms.map(time),
        "used": r.used_ms.map(time),
        "context": r.context.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()),
    })
}

/// An access request as the API and `sluice access` show it.
pub fn access_json(r: &sluice_store::AccessRow) -> Value {
    json!({
        "id": r.id,
        "status": r.status,
        "requester": r.requester,
        "connection": r.connection,
        "lift_rule": r.lift_rule,
        "reason": r.reason,
        "duration_s": r.duration_ms / 1000,
        "created": rfc3339_ms(r.created_ms),
        "decided": r.decided_ms.map(rfc3339_ms),
        "decided_by": r.decided_by,
        "decision_reason": r.decision_reason,
        "starts": r.starts_ms.map(rfc3339_ms),
        "ends": r.ends_ms.map(rfc3339_ms),
    })
}
