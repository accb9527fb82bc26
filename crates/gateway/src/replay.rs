//! `sluice policy replay`: what a candidate policy would have decided for the statements in
//! the audit log, compared with what happened — so a team can tighten rules without
//! breaking people.
//!
//! Sessions are replayed in log order with their own policy state (SQL prepared statements,
//! `search_path`, startup settings), so `EXECUTE` and unqualified names are judged as they
//! were live. Identities are rebuilt from the session records and today's group
//! memberships in the user store.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use sluice_audit::EventBody;
use sluice_core::{ActorKind, Identity};
use sluice_policy::{Policy, RuleSpec, SessionPolicy, Verdict};

use crate::commands::printable;
use crate::config::Config;

/// The `policies:` of a candidate file (a full config file works too: other keys are
/// ignored).
#[derive(Deserialize)]
struct Candidate {
    #[serde(default)]
    policies: Vec<RuleSpec>,
}

/// `7d`, `12h` (that long before now) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<SystemTime> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("--since: {text:?} is neither a duration (7d) nor an RFC 3339 time")
    })
}

/// A session as replay knows it.
struct ReplaySession {
    identity: Identity,
    connection: String,
    state: SessionPolicy,
}

/// What was decided, in replay's terms.
fn outcome_of(decision: &str, review: bool) -> &'static str {
    match (decision, review) {
        (_, true) => "review",
        ("allow", false) => "allow",
        _ => "deny",
    }
}

fn verdict_outcome(verdict: &Verdict) -> (&'static str, Option<String>) {
    match verdict {
        Verdict::Allow => ("allow", None),
        Verdict::Deny { rule, .. } => ("deny", Some(rule.clone())),
        Verdict::Review { rule, .. } => ("review", Some(rule.clone())),
        Verdict::NotUnderstood { .. } => ("deny", None),
    }
}

pub fn replay(
    config: &Config,
    candidate_path: &Path,
    since: SystemTime,
    json_out: bool,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(candidate_path)
        .with_context(|| format!("cannot read {}", candidate_path.display()))?;
    let candidate: Candidate = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("invalid policies in {}", candidate_path.display()))?;
    let connections: Vec<(String, sluice_policy::Unparsed)> = config
        .connections
        .iter()
        .map(|c| (c.name.clone(), c.unparsed()))
        .collect();
    let policy = Policy::new(&candidate.policies, &connections)
        .with_context(|| format!("invalid policies in {}", candidate_path.display()))?;
    let dir = config.audit_dir();
    if !dir.exists() {
        bail!(
            "no audit log at {} (has the gateway run with this config?)",
            dir.display()
        );
    }
    // Today's groups of each user (the log records who, not their groups).
    let groups: HashMap<String, Vec<String>> = if config.store_path().exists() {
        crate::commands::open_store(config)?
            .list_users()?
            .into_iter()
            .map(|u| (u.name, u.groups))
            .collect()
    } else {
        HashMap::new()
    };

    let mut sessions: HashMap<String, ReplaySession> = HashMap::new();
    let mut judged = 0u64;
    let mut transitions: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut changed = Vec::new();
    for record in sluice_audit::read_all(&dir)? {
        let record = record.context("reading the audit log")?;
        let Some(session_id) = record.event.session.clone() else {
            continue;
        };
        match record.event.body {
            EventBody::SessionOpen {
                user,
                actor,
                connection,
                settings,
                ..
            } => {
                let identity = Identity {
                    groups: groups.get(&user).cloned().unwrap_or_default(),
                    user,
                    credential: None,
                    actor: if actor == "agent" {
                        ActorKind::Agent
                    } else {
                        ActorKind::Human
                    },
                };
                sessions.insert(
                    session_id,
                    ReplaySession {
                        identity,
                        connection,
                        state: SessionPolicy::with_startup_settings(&settings),
                    },
                );
            }
            EventBody::SessionClose { .. } => {
                sessions.remove(&session_id);
            }
            EventBody::Statement {
                statement_id,
                statement,
                decision,
                rule,
                review,
                ..
            } => {
                let Some(session) = sessions.get_mut(&session_id) else {
                    continue;
                };
                // Judged even before `since`, so that session state (PREPARE, search_path)
                // is what it was; only statements in the window are reported.
                let verdict = policy.judge(
                    &session.identity,
                    &session.connection,
                    &statement,
                    &mut session.state,
                );
                if record.event.time < since {
                    continue;
                }
                judged += 1;
                let before = outcome_of(&decision, review.is_some());
                let (after, candidate_rule) = verdict_outcome(&verdict);
                *transitions
                    .entry((before.to_owned(), after.to_owned()))
                    .or_default() += 1;
                if before != after {
                    changed.push(json!({
                        "time": humantime::format_rfc3339_micros(record.event.time).to_string(),
                        "session": session_id,
                        "statement_id": statement_id,
                        "user": session.identity.user,
                        "connection": session.connection,
                        "statement": statement,
                        "recorded": before,
                        "recorded_rule": rule,
                        "candidate": after,
                        "candidate_rule": candidate_rule,
                        "candidate_reason": verdict.refusal(),
                    }));
                }
            }
            _ => {}
        }
    }
    let summary: Vec<_> = transitions
        .iter()
        .map(|((before, after), n)| json!({ "recorded": before, "candidate": after, "statements": n }))
        .collect();
    if json_out {
        crate::commands::print_json(&json!({
            "since": humantime::format_rfc3339_seconds(since).to_string(),
            "statements": judged,
            "changed": changed.len(),
            "summary": summary,
            "differences": changed,
        }))?;
    } else {
        println!(
            "{judged} statements since {}; {} would be decided differently",
            humantime::format_rfc3339_seconds(since),
            changed.len()
        );
        for ((before, after), n) in &transitions {
            println!("  {before:<6} -> {after:<6} {n}");
        }
        for c in &changed {
            println!(
                "{}  {}@{}  {} -> {}{}: {}",
                c["time"].as_str().unwrap_or_default(),
                printable(c["user"].as_str().unwrap_or_default()),
                printable(c["connection"].as_str().unwrap_or_default()),
                c["recorded"].as_str().unwrap_or_default(),
                c["candidate"].as_str().unwrap_or_default(),
                c["candidate_rule"]
                    .as_str()
                    .map(|r| format!(" ({})", printable(r)))
                    .unwrap_or_default(),
                printable(c["statement"].as_str().unwrap_or_default()),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
