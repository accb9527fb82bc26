//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sluice_audit::{ErrorInfo, Event, EventBody};

/// 2026-11-18T11:06:40.123456Z: microsecond precision, so it reads back equal.
pub fn time() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456)
}

/// One event of every kind, with optional fields both set and unset.
pub fn every_kind() -> Vec<Event> {
    let session = Some("s-1".to_string());
    let bodies = vec![
        EventBody::SessionOpen {
            user: "alice".into(),
            actor: "human".into(),
            connection: "prod".into(),
            protocol: "postgres".into(),
            client_addr: "10.0.0.1:5555".into(),
            tls: true,
            application_name: Some("psql".into()),
            settings: vec![("options".into(), "-c search_path=app".into())],
            context: None,
            served_by: Some("edge (10.0.0.9:40000)".into()),
        },
        EventBody::SessionOpen {
            user: "bot".into(),
            actor: "agent".into(),
            connection: "prod".into(),
            protocol: "postgres".into(),
            client_addr: "10.0.0.2:5555".into(),
            tls: false,
            application_name: None,
            settings: Vec::new(),
            served_by: None,
            context: Some(Box::new(sluice_audit::AgentContext::from_pairs(&[
                ("client", "cursor"),
                ("conversation", "c-1"),
            ]))),
        },
        EventBody::AgentConnected {
            agent: "edge".into(),
            address: "10.0.0.9:40000".into(),
            version: "0.1.0".into(),
        },
        EventBody::AgentDisconnected {
            agent: "edge".into(),
            address: "10.0.0.9:40000".into(),
            reason: "the agent's key was revoked".into(),
        },
        EventBody::AgentRefused {
            agent: "edge".into(),
            address: "10.0.0.9:40001".into(),
            reason: "the key of agent edge has been revoked".into(),
        },
        EventBody::AuthFailure {
            user: "mallory".into(),
            connection: "prod".into(),
            protocol: "postgres".into(),
            client_addr: "10.0.0.3:1".into(),
            reason: "bad password".into(),
        },
        EventBody::Statement {
            call: None,
            statement_id: 7,
            user: "alice".into(),
            actor: "human".into(),
            connection: "prod".into(),
            statement: "SELECT $1, $2 -- \"quoted\"\nnext line ü".into(),
            params: vec![Some("1".into()), None],
            decision: "allow".into(),
            rule: None,
            prepare: true,
            statement_name: Some("s1".into()),
            reason: None,
            review: Some(sluice_audit::ReviewRef {
                id: "r-1".into(),
                status: "approved".into(),
                by: Some("bob".into()),
                at: Some("2026-01-01T00:00:00.000000Z".into()),
            }),
            access_request: None,
            context: Some(Box::new(sluice_audit::AgentContext::from_pairs(&[
                ("prompt", "why \"this\"\nü"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("framework", "django"),
            ]))),
        },
        EventBody::Statement {
            call: None,
            statement_id: 8,
            user: "alice".into(),
            actor: "human".into(),
            connection: "prod".into(),
            statement: "DROP TABLE t".into(),
            params: vec![],
            decision: "deny".into(),
            rule: Some("no-drop".into()),
            prepare: false,
            statement_name: None,
            reason: Some("rule no-drop".into()),
            review: None,
            access_request: Some("a-1".into()),
            context: None,
        },
        EventBody::AccessRequested {
            request_id: "a-1".into(),
            requester: "eve".into(),
            connection: "prod".into(),
            lift_rule: Some("writes".into()),
            duration_s: 1800,
            reason: "incident 7".into(),
        },
        EventBody::AccessDecided {
            request_id: "a-1".into(),
            status: "approved".into(),
            by: "bob".into(),
            reason: None,
            ends: Some("2026-01-01T00:30:00.000Z".into()),
        },
        EventBody::ReviewCreated {
            review_id: "r-1".into(),
            statement_id: 9,
            rule: "writes".into(),
            mode: "hold".into(),
            requester: "alice".into(),
            connection: "prod".into(),
            statement: "DELETE FROM t WHERE id = $1".into(),
            params: vec![Some("3".into())],
            statement_hash: "ab".repeat(32),
            reviewers: vec!["group:dba".into()],
            min_approvals: 1,
            timeout_s: 900,
            context: None,
        },
        EventBody::ReviewDecided {
            review_id: "r-1".into(),
            status: "approved".into(),
            by: Some("bob".into()),
            reason: Some("looks fine".into()),
        },
        EventBody::Result {
            transfer: None,
            statement_id: 7,
            status: "ok".into(),
            tag: Some("SELECT 1".into()),
            rows: 1,
            duration_ms: 0.25,
            error: None,
            masked: Vec::new(),
        },
        EventBody::Result {
            transfer: None,
            statement_id: 9,
            status: "error".into(),
            tag: None,
            rows: 0,
            duration_ms: 3.0,
            error: Some(ErrorInfo {
                code: "42P01".into(),
                message: "relation \"t\" does not exist".into(),
            }),
            masked: vec![sluice_audit::MaskedInfo {
                column: Some("public.users.email".into()),
                detector: None,
                style: "redact".into(),
                values: 2,
            }],
        },
        EventBody::SessionClose {
            reason: Some("idle timeout".into()),
            statements: 2,
        },
        EventBody::SessionClose {
            reason: None,
            statements: 0,
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Event {
            time: time(),
            session: (i != 2).then(|| session.clone()).flatten(),
            body,
        })
        .collect()
}

/// A statement event with a recognisable text.
pub fn statement(id: u64) -> Event {
    Event {
        time: time(),
        session: Some("s-1".into()),
        body: EventBody::Statement {
            call: None,
            statement_id: id,
            user: "alice".into(),
            actor: "human".into(),
            connection: "prod".into(),
            statement: format!("SELECT {id}"),
            params: vec![],
            decision: "allow".into(),
            rule: None,
            prepare: false,
            statement_name: None,
            reason: None,
            review: None,
            access_request: None,
            context: None,
        },
    }
}

pub fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("audit-{number:06}.jsonl"))
}

/// Lines of a segment, without their '\n'.
pub fn read_lines(dir: &Path, number: u32) -> Vec<String> {
    fs::read_to_string(segment_path(dir, number))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Replaces a segment's content with `lines`, each terminated by '\n'.
pub fn write_lines(dir: &Path, number: u32, lines: &[String]) {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    fs::write(segment_path(dir, number), text).unwrap();
}
