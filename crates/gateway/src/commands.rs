//! The administrative commands. They work on the same data directory as a running
//! gateway (SQLite in WAL mode; the audit log is only read).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sluice_auth::{hash_password, parse_ttl, Tokens};
use sluice_core::{ActorKind, Role};
use sluice_store::{NewUser, Origin, SessionFilter, Store, TokenKind, User};

use crate::config::Config;
use crate::views::{rfc3339_ms, session_detail, SessionSummary};
use crate::{
    AgentsCommand, AwsKeysCommand, ServiceAccountsCommand, SessionsCommand, TokensCommand,
    UsersCommand,
};

pub(crate) fn open_store(config: &Config) -> Result<Arc<Store>> {
    let path = config.store_path();
    Ok(Arc::new(Store::open(&path).with_context(|| {
        format!("cannot open the metadata store {}", path.display())
    })?))
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn users(config: &Config, cmd: UsersCommand) -> Result<ExitCode> {
    let store = open_store(config)?;
    match cmd {
        UsersCommand::Add {
            name,
            groups,
            role,
            password_stdin,
        } => {
            check_name(&name)?;
            let role = parse_role(&role)?;
            let password = password_stdin.then(read_password).transpose()?;
            let user = store.create_user(&NewUser {
                role,
                ..NewUser::person(&name, &groups)
            })?;
            if let Some(hash) = password {
                store.set_password_hash(&name, Some(&hash))?;
            }
            eprintln!(
                "added user {} (role {}, groups: {})",
                user.name,
                user.role.as_str(),
                user.groups.join(", ")
            );
        }
        UsersCommand::SetPassword { name, remove } => {
            let hash = if remove { None } else { Some(read_password()?) };
            store.set_password_hash(&name, hash.as_deref())?;
            eprintln!(
                "{} the password of {name}",
                if remove { "removed" } else { "set" }
            );
        }
        UsersCommand::SetRole { name, role } => {
            store.set_user_role(&name, parse_role(&role)?)?;
            eprintln!("{name} now has role {role}");
        }
        UsersCommand::List { out } => {
            let users = store.list_users()?;
            if out.json {
                let list: Vec<_> = users.iter().map(user_json).collect();
                print_json(&list)?;
            } else {
                for u in users {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        u.name,
                        u.actor.as_str(),
                        u.role.as_str(),
                        u.origin.as_str(),
                        u.groups.join(",")
                    );
                }
            }
        }
        UsersCommand::Remove { name } => {
            if !store.remove_user(&name)? {
                bail!("no user named {name:?}");
            }
            eprintln!("removed user {name} and their tokens");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control() || c == '\0') {
        bail!("user names must be 1-63 printable characters");
    }
    Ok(())
}

fn parse_role(role: &str) -> Result<Role> {
    Role::parse(role).ok_or_else(|| anyhow::anyhow!("unknown role {role:?} (admin, auditor, user)"))
}

/// A new password from stdin (one line), hashed.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(hash_password(line.trim_end_matches(['\r', '\n']))?)
}

fn user_json(u: &User) -> serde_json::Value {
    json!({
        "name": u.name, "groups": u.groups, "created": rfc3339_ms(u.created_ms),
        "actor": u.actor.as_str(), "role": u.role.as_str(), "origin": u.origin.as_str(),
        "password": u.has_password,
    })
}

pub fn agents(config: &Config, cmd: AgentsCommand) -> Result<ExitCode> {
    let store = open_store(config)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match cmd {
        AgentsCommand::Add { name, out } => {
            if !crate::config::valid_agent_name(&name) || name == "embedded" {
                bail!(
                    "agent names use letters, digits, '-', '_' and '.' (and `embedded` is taken)"
                );
            }
            // The fingerprint first: a failure must not leave the name taken.
            let fingerprint = crate::tls::fingerprint(config)?;
            let key = sluice_auth::new_agent_key();
            store.add_agent(&name, &key.id, &key.hash, now)?;
            let host = match config.listen.tunnel {
                Some(addr) if !addr.ip().is_unspecified() => addr.to_string(),
                Some(addr) => format!("GATEWAY_HOST:{}", addr.port()),
                None => "GATEWAY_HOST:PORT".to_owned(),
            };
            // The key in the environment, not on the command line (`ps`, shell history).
            let command = format!(
                "SLUICE_AGENT_KEY={} sluice agent --gateway https://{host} --fingerprint {fingerprint}",
                key.key
            );
            if out.json {
                print_json(
                    &json!({ "name": name, "key": key.key, "fingerprint": fingerprint, "command": command }),
                )?;
            } else {
                if config.listen.tunnel.is_none() {
                    eprintln!("note: listen.tunnel is not set in this configuration; agents cannot dial in until it is");
                }
                println!(
                    "agent {name} registered. Its key is shown once:\n\n  {}\n",
                    key.key
                );
                println!("gateway certificate fingerprint (sha256): {fingerprint}\n");
                println!("start it beside the targets (credentials as env:/file: are read there):\n\n  {command}");
            }
        }
        AgentsCommand::List { out } => {
            let rows: Vec<serde_json::Value> = store
                .list_agents()?
                .into_iter()
                .map(|a| {
                    let tunnels: Vec<serde_json::Value> =
                        serde_json::from_str(&a.state).unwrap_or_default();
                    let tunnels = if a.state_is_fresh(now) {
                        tunnels
                    } else {
                        Vec::new()
                    };
                    let state = if a.revoked_ms.is_some() {
                        "revoked"
                    } else if tunnels.is_empty() {
                        "disconnected"
                    } else {
                        "connected"
                    };
                    json!({
                        "name": a.name, "state": state, "key_id": a.key_id,
                        "created": rfc3339_ms(a.created_ms),
                        "since": tunnels.first().map(|t| t["since"].clone()),
                        "version": tunnels.first().map(|t| t["version"].clone()),
                        "address": tunnels.first().map(|t| t["address"].clone()),
                        "sessions": tunnels.iter().filter_map(|t| t["sessions"].as_u64()).sum::<u64>(),
                        "tunnels": tunnels,
                    })
                })
                .collect();
            if out.json {
                print_json(&rows)?;
            } else {
                for r in rows {
                    println!(
                        "{}\t{}\tsince {}\t{}\t{}\t{} sessions",
                        r["name"].as_str().unwrap_or_default(),
                        r["state"].as_str().unwrap_or_default(),
                        r["since"].as_str().unwrap_or("-"),
                        r["version"].as_str().unwrap_or("-"),
                        r["address"].as_str().unwrap_or("-"),
                        r["sessions"]
                    );
                }
            }
        }
        AgentsCommand::Revoke { name } => {
            if !store.revoke_agent(&name, now)? {
                bail!("no active agent named {name:?}");
            }
            eprintln!("revoked agent {name}; its tunnels close within seconds");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn service_accounts(config: &Config, cmd: ServiceAccountsCommand) -> Result<ExitCode> {
    let store = open_store(config)?;
    let tokens = Tokens::new(store.clone());
    let issue_key = |name: &str, ttl: &str, json_out: bool| -> Result<()> {
        let issued = tokens.issue_kind(name, parse_ttl(ttl)?, TokenKind::ApiKey)?;
        let expires = humantime::format_rfc3339_seconds(issued.expires).to_string();
        if json_out {
            print_json(
                &json!({ "account": name, "key_id": issued.id, "key": issued.token, "expires": expires }),
            )?;
        } else {
            eprintln!(
                "issued API key {} for {name} (expires {expires})",
                issued.id
            );
            println!("{}", issued.token);
        }
        Ok(())
    };
    match cmd {
        ServiceAccountsCommand::Add {
            name,
            groups,
            role,
            ttl,
            out,
        } => {
            check_name(&name)?;
            let role = parse_role(&role)?;
            if role == Role::Admin {
                bail!("service accounts cannot be admins (use role user or auditor)");
            }
            parse_ttl(&ttl)?;
            store.create_user(&NewUser {
                name: &name,
                groups: &groups,
                actor: ActorKind::Agent,
                role,
                origin: Origin::Local,
            })?;
            eprintln!(
                "added service account {name} (role {}, groups: {})",
                role.as_str(),
                groups.join(", ")
            );
            issue_key(&name, &ttl, out.json)?;
        }
        ServiceAccountsCommand::IssueKey { name, ttl, out } => {
            match store.get_user(&name)? {
                Some(u) if u.actor == ActorKind::Agent => {}
                _ => bail!("no service account named {name:?}"),
            }
            issue_key(&name, &ttl, out.json)?;
        }
        ServiceAccountsCommand::List { out } => {
            let accounts: Vec<User> = store
                .list_users()?
                .into_iter()
                .filter(|u| u.actor == ActorKind::Agent)
                .collect();
            if out.json {
                print_json(&accounts.iter().map(user_json).collect::<Vec<_>>())?;
            } else {
                for u in accounts {
                    println!("{}\t{}\t{}", u.name, u.role.as_str(), u.groups.join(","));
                }
            }
        }
        ServiceAccountsCommand::Remove { name } => {
            match store.get_user(&name)? {
                Some(u) if u.actor == ActorKind::Agent => {}
                _ => bail!("no service account named {name:?}"),
            }
            store.remove_user(&name)?;
            eprintln!("removed service account {name} and its keys");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn aws_keys(
    config: &Config,
    cmd: AwsKeysCommand,
    gateway: Option<String>,
    token: String,
) -> Result<ExitCode> {
    let endpoint = config
        .listen
        .http
        .map(|a| format!("http://{a}"))
        .unwrap_or_else(|| "http://<listen.http>".into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    match cmd {
        AwsKeysCommand::Issue {
            user: None,
            connection,
            ttl,
            out,
        } => {
            issue_aws_key_through_api(config, gateway, token, connection, ttl, out.json, &endpoint)?
        }
        AwsKeysCommand::Issue {
            user: Some(user),
            connection,
            ttl,
            out,
        } => {
            if let Some(name) = &connection {
                match config.connections.iter().find(|c| &c.name == name) {
                    Some(c) if c.kind == crate::config::Kind::Aws => {}
                    Some(_) => bail!("connection {name:?} is not a kind: aws connection"),
                    None => bail!("no connection {name:?} in the configuration"),
                }
            }
            let sealer = sluice_auth::Sealer::new(&config.sealing_key()?);
            let issued = crate::apis::keys::issue(
                &*open_store(config)?,
                &sealer,
                &user,
                connection.as_deref(),
                parse_ttl(&ttl)?,
            )?;
            let expires = humantime::format_rfc3339_seconds(issued.expires).to_string();
            if out.json {
                print_json(&json!({
                    "access_key_id": issued.access_key_id,
                    "secret_access_key": issued.secret_access_key,
                    "user": issued.user,
                    "connection": issued.connection,
                    "expires": expires,
                    "endpoint_url": endpoint,
                }))?;
            } else {
                print_key_exports(
                    &issued.access_key_id,
                    &issued.secret_access_key,
                    &issued.user,
                    &expires,
                    &endpoint,
                );
            }
        }
        AwsKeysCommand::List { user, out } => {
            let rows: Vec<_> = open_store(config)?
                .list_aws_keys(user.as_deref())?
                .iter()
                .map(|k| crate::apis::keys::key_json(k, now))
                .collect();
            print_credentials(&rows, "access_key_id", out.json)?;
        }
        AwsKeysCommand::Revoke { id } => {
            if !open_store(config)?.revoke_aws_key(&id, now)? {
                bail!("no active AWS key with id {id:?}");
            }
            eprintln!("revoked AWS key {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice aws-keys issue` without `--user`: a key pair for yourself, through the API.
fn issue_aws_key_through_api(
    config: &Config,
    gateway: Option<String>,
    token: String,
    connection: Option<String>,
    ttl: String,
    json_out: bool,
    endpoint: &str,
) -> Result<()> {
    let mut issued = call_api(
        config,
        gateway,
        token,
        hyper::Method::POST,
        "/api/v1/aws-keys",
        Some(json!({ "connection": connection, "ttl": ttl })),
    )?;
    if json_out {
        issued["endpoint_url"] = json!(endpoint);
        return print_json(&issued);
    }
    let field = |name: &str| issued[name].as_str().unwrap_or_default().to_owned();
    print_key_exports(
        &field("access_key_id"),
        &field("secret_access_key"),
        &field("user"),
        &field("expires"),
        endpoint,
    );
    Ok(())
}

/// Tokens or keys as listed: JSON, or a line each (id, user, state, expiry) where `id` is
/// the field holding the id.
fn print_credentials(rows: &[serde_json::Value], id: &str, json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    for r in rows {
        let field = |name: &str| r[name].as_str().unwrap_or_default().to_owned();
        println!(
            "{}\t{}\t{}\texpires {}",
            field(id),
            field("user"),
            field("state"),
            field("expires")
        );
    }
    Ok(())
}

/// The environment to use an issued key with, on stdout (the note on stderr).
fn print_key_exports(id: &str, secret: &str, user: &str, expires: &str, endpoint: &str) {
    eprintln!("issued AWS key {id} for {user} (expires {expires}); the secret is shown only now");
    println!("export AWS_ACCESS_KEY_ID={id}");
    println!("export AWS_SECRET_ACCESS_KEY={secret}");
    println!("export AWS_ENDPOINT_URL={endpoint}");
}

pub fn tokens(config: &Config, cmd: TokensCommand) -> Result<ExitCode> {
    let store = open_store(config)?;
    let tokens = Tokens::new(store.clone());
    match cmd {
        TokensCommand::Issue { user, ttl } => {
            let ttl = parse_ttl(&ttl)?;
            let issued = tokens.issue(&user, ttl)?;
            eprintln!(
                "issued token {} for {} (expires {})",
                issued.id,
                issued.user,
                humantime::format_rfc3339_seconds(issued.expires)
            );
            println!("{}", issued.token);
        }
        TokensCommand::List { user, out } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let list = store.list_tokens(user.as_deref())?;
            let rows: Vec<_> = list
                .iter()
                .map(|t| {
                    let state = crate::views::credential_state(t.revoked_ms, t.expires_ms, now);
                    json!({
                        "id": t.id, "user": t.user, "kind": t.kind.as_str(), "state": state,
                        "created": rfc3339_ms(t.created_ms), "expires": rfc3339_ms(t.expires_ms),
                        "last_used": t.last_used_ms.map(rfc3339_ms),
                    })
                })
                .collect();
            print_credentials(&rows, "id", out.json)?;
        }
        TokensCommand::Revoke { id } => {
            if !tokens.revoke(&id)? {
                bail!("no active token with id {id:?}");
            }
            eprintln!("revoked token {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sessions(config: &Config, cmd: SessionsCommand) -> Result<ExitCode> {
    let store = open_store(config)?;
    match cmd {
        SessionsCommand::List {
            user,
            connection,
            actor,
            with,
            text,
            since,
            until,
            limit,
            out,
        } => {
            // The gateway indexes the log once a second; catch up here too, so the counts
            // and filters are current even when it is not running (applying a record
            // twice changes nothing).
            if config.audit_dir().exists() {
                crate::index::catch_up(&config.audit_dir(), &store)?;
            }
            let ms = |t: humantime::Timestamp| crate::views::unix_ms(t.into());
            let rows = store.list_sessions(&SessionFilter {
                user,
                connection,
                actor,
                statement: text,
                since_ms: since.map(ms),
                until_ms: until.map(ms),
                denied: with.as_deref() == Some("denied"),
                held: with.as_deref() == Some("held"),
                masked: with.as_deref() == Some("masked"),
                limit,
                ..SessionFilter::default()
            })?;
            let list: Vec<SessionSummary> = rows.iter().map(SessionSummary::from).collect();
            if out.json {
                print_json(&list)?;
            } else {
                for s in list {
                    println!(
                        "{}  {}  {:<12} {:<16} {:<22} {:>5} stmts  {}",
                        s.id,
                        s.start,
                        s.user,
                        s.connection,
                        s.client_addr,
                        s.statements,
                        match (&s.end, &s.end_reason) {
                            (None, _) => "open".to_owned(),
                            (Some(_), Some(r)) => format!("ended: {}", printable(r)),
                            (Some(_), None) => "ended".to_owned(),
                        }
                    );
                }
            }
        }
        SessionsCommand::Show { id, out } => {
            let Some(row) = store.get_session(&id)? else {
                bail!("no session with id {id:?}");
            };
            let detail = session_detail(&config.audit_dir(), &row)?;
            if out.json {
                print_json(&detail)?;
            } else {
                print_session(&detail);
            }
        }
        SessionsCommand::Search {
            prompt,
            tool_call,
            trace,
            conversation,
            statement,
            user,
            connection,
            limit,
            out,
        } => {
            let filter = crate::views::SearchFilter {
                prompt,
                tool_call,
                trace,
                statement,
                conversation,
                user,
                connection,
                limit,
            };
            let hits = crate::views::search(&config.audit_dir(), &filter)?;
            if out.json {
                print_json(&hits)?;
            } else {
                for hit in &hits {
                    println!(
                        "{}  session {} #{}  {} -> {}  {}",
                        hit["time"].as_str().unwrap_or_default(),
                        hit["session"].as_str().unwrap_or_default(),
                        hit["statement_id"],
                        printable(hit["user"].as_str().unwrap_or_default()),
                        printable(hit["connection"].as_str().unwrap_or_default()),
                        printable(hit["decision"].as_str().unwrap_or_default()),
                    );
                    println!(
                        "      {}",
                        printable(hit["statement"].as_str().unwrap_or_default())
                    );
                    print_context(&hit["context"]);
                }
            }
            if hits.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent context of a statement, a line each for the prompt and for where it came from.
fn print_context(ctx: &serde_json::Value) {
    let text = |key: &str| ctx[key].as_str().map(printable);
    if let Some(prompt) = text("prompt") {
        println!("      prompt: {prompt}");
    }
    if let Some(intent) = text("intent") {
        println!("      intent: {intent}");
    }
    let source: Vec<String> = [
        (
            "client",
            text("client").map(|c| match text("client_version") {
                Some(v) => format!("{c} {v}"),
                None => c,
            }),
        ),
        ("conversation", text("conversation")),
        ("tool call", text("tool_call")),
        ("trace", text("trace_id").or_else(|| text("traceparent"))),
    ]
    .into_iter()
    .filter_map(|(label, value)| value.map(|v| format!("{label} {v}")))
    .collect();
    if !source.is_empty() {
        println!("      agent: {}", source.join(", "));
    }
}

/// Text from the log made safe for a terminal: statements and error messages are chosen
/// by clients, and an escape sequence or a line that looks like another record must not
/// mislead the auditor reading them. Control characters are shown escaped; continuation
/// lines are indented under their statement.
pub(crate) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\n         "),
            '\t' => out.push('\t'),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

fn print_session(d: &crate::views::SessionDetail) {
    let s = &d.summary;
    println!(
        "session {}  {} ({}) -> {}  from {}",
        s.id, s.user, s.actor, s.connection, s.client_addr
    );
    println!(
        "started {}  ended {}{}",
        s.start,
        s.end.as_deref().unwrap_or("(open)"),
        s.end_reason
            .as_deref()
            .map(|r| format!(" ({})", printable(r)))
            .unwrap_or_default()
    );
    for e in &d.events {
        let time = e["time"].as_str().unwrap_or_default();
        match e["kind"].as_str() {
            Some("statement") => {
                let outcome = match e["status"].as_str() {
                    Some("ok") => format!(
                        "ok {} ({} rows, {:.2} ms)",
                        e["tag"].as_str().unwrap_or_default(),
                        e["rows"],
                        e["duration_ms"].as_f64().unwrap_or(0.0)
                    ),
                    Some("error") => format!(
                        "error {}: {}",
                        e["error"]["code"].as_str().unwrap_or_default(),
                        printable(e["error"]["message"].as_str().unwrap_or_default())
                    ),
                    Some(other) => format!(
                        "{other}: {}",
                        printable(e["error"]["message"].as_str().unwrap_or_default())
                    ),
                    None => "(no result recorded)".to_owned(),
                };
                println!(
                    "  {time}  #{}  {}",
                    e["statement_id"],
                    printable(e["statement"].as_str().unwrap_or_default())
                );
                if let Some(params) = e["params"].as_array().filter(|p| !p.is_empty()) {
                    println!("      params: {}", serde_json::Value::Array(params.clone()));
                }
                print_context(&e["context"]);
                if let Some(review) = e["review"].as_object() {
                    let text = |key: &str| {
                        printable(review.get(key).and_then(|v| v.as_str()).unwrap_or_default())
                    };
                    println!(
                        "      review {} {}{}{}",
                        text("id"),
                        text("status"),
                        review
                            .get("by")
                            .and_then(|v| v.as_str())
                            .map(|by| format!(" by {}", printable(by)))
                            .unwrap_or_default(),
                        review
                            .get("at")
                            .and_then(|v| v.as_str())
                            .map(|at| format!(" at {}", printable(at)))
                            .unwrap_or_default(),
                    );
                }
                if let Some(request) = e["access_request"].as_str() {
                    println!(
                        "      review rule lifted by access request {}",
                        printable(request)
                    );
                }
                if e["decision"].as_str() == Some("deny") {
                    println!(
                        "      denied{}: {}",
                        e["rule"]
                            .as_str()
                            .map(|r| format!(" by policy {}", printable(r)))
                            .unwrap_or_default(),
                        printable(e["reason"].as_str().unwrap_or_default())
                    );
                }
                println!("      -> {outcome}");
            }
            Some(kind) => println!("  {time}  {kind}"),
            None => {}
        }
    }
}

pub fn audit_verify(config: &Config, json_out: bool) -> Result<ExitCode> {
    let dir = config.audit_dir();
    if !dir.exists() {
        bail!(
            "no audit log at {} (has the gateway run with this config?)",
            dir.display()
        );
    }
    // The head the gateway recorded outside the log, when there is a store to read it from.
    let anchor = if config.store_path().exists() {
        open_store(config)?
            .audit_anchor()?
            .map(|(seq, hash)| sluice_audit::Anchor { seq, hash })
    } else {
        None
    };
    match sluice_audit::verify_with_anchor(&dir, anchor.as_ref()) {
        Ok(report) => {
            if json_out {
                print_json(&json!({
                    "ok": true, "events": report.events, "segments": report.segments,
                    "head_hash": report.head_hash,
                }))?;
            } else {
                println!(
                    "audit log intact: {} events in {} segment(s), head {}",
                    report.events, report.segments, report.head_hash
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json_out {
                print_json(&json!({
                    "ok": false, "error": e.to_string(), "segment": e.segment,
                    "line": e.line, "seq": e.seq,
                }))?;
            } else {
                println!("audit log FAILED verification: {e}");
            }
            Ok(ExitCode::from(3))
        }
    }
}

/// Who `policy check` judges for.
pub struct PolicySubject {
    pub connection: String,
    pub user: String,
    pub groups: Vec<String>,
    pub agent: bool,
}

pub fn policy_check(
    config: &Config,
    subject: &PolicySubject,
    sql: &str,
    json_out: bool,
) -> Result<ExitCode> {
    if !config
        .connections
        .iter()
        .any(|c| c.name == subject.connection)
    {
        bail!("no connection named {:?} in the config", subject.connection);
    }
    let policy = config.policy()?;
    let mut groups = subject.groups.clone();
    if config.store_path().exists() {
        if let Some(user) = open_store(config)?.get_user(&subject.user)? {
            groups.extend(user.groups);
        }
    }
    groups.sort();
    groups.dedup();
    let identity = sluice_core::Identity {
        user: subject.user.clone(),
        groups,
        credential: None,
        actor: if subject.agent {
            sluice_core::ActorKind::Agent
        } else {
            sluice_core::ActorKind::Human
        },
    };
    let mut session = sluice_policy::SessionPolicy::default();
    let (mut refused, mut held) = (false, false);
    let mut results = Vec::new();
    for statement in sluice_sql::split_statements(sql) {
        let verdict = policy.judge(&identity, &subject.connection, statement.text, &mut session);
        let (decision, rule, mode) = match &verdict {
            sluice_policy::Verdict::Allow => ("allow", None, None),
            sluice_policy::Verdict::Deny { rule, .. } => ("deny", Some(rule.clone()), None),
            sluice_policy::Verdict::Review { rule, mode, .. } => {
                ("review", Some(rule.clone()), Some(mode.as_str()))
            }
            sluice_policy::Verdict::NotUnderstood { .. } => ("deny", None, None),
        };
        refused |= decision == "deny";
        held |= decision == "review";
        results.push(serde_json::json!({
            "statement": statement.text.trim(),
            "decision": decision,
            "rule": rule,
            "mode": mode,
            "reason": verdict.refusal(),
        }));
    }
    if json_out {
        print_json(&results)?;
    } else {
        for r in &results {
            let statement = printable(r["statement"].as_str().unwrap_or_default());
            match (r["decision"].as_str(), r["reason"].as_str()) {
                (Some("review"), _) => println!(
                    "review {statement}\n       held for review by policy {} ({} mode)",
                    printable(r["rule"].as_str().unwrap_or_default()),
                    r["mode"].as_str().unwrap_or_default()
                ),
                (_, None) => println!("allow  {statement}"),
                (_, Some(reason)) => println!("deny   {statement}\n       {}", printable(reason)),
            }
        }
    }
    Ok(if refused {
        ExitCode::from(4)
    } else if held {
        ExitCode::from(5)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `sluice reviews` and `sluice access` share: list, show, approve or deny.
pub enum Verb {
    List {
        status: String,
        limit: u32,
    },
    Show {
        id: String,
    },
    Decide {
        id: String,
        approve: bool,
        reason: Option<String>,
    },
}

impl Verb {
    /// The API call for this verb on the resources under `base`.
    fn call(&self, base: &str) -> (hyper::Method, String, Option<serde_json::Value>) {
        match self {
            Verb::List { status, limit } => {
                let filter = if status == "all" {
                    String::new()
                } else {
                    format!("status={}&", url_component(status))
                };
                (
                    hyper::Method::GET,
                    format!("{base}?{filter}limit={limit}"),
                    None,
                )
            }
            Verb::Show { id } => (
                hyper::Method::GET,
                format!("{base}/{}", url_component(id)),
                None,
            ),
            Verb::Decide {
                id,
                approve,
                reason,
            } => (
                hyper::Method::POST,
                format!(
                    "{base}/{}/{}",
                    url_component(id),
                    if *approve { "approve" } else { "deny" }
                ),
                Some(json!({ "reason": reason })),
            ),
        }
    }
}

/// The gateway and token an API verb uses: as given, else the saved sign-in (`sluice
/// login`), else the config's `listen.api`. The saved token goes only to the gateway it
/// was issued by: `--gateway` naming another one (a command line someone else wrote, an
/// `mcp.json` in a repository) needs its own `--token`.
pub async fn api_target(
    config: &Config,
    gateway: Option<String>,
    token: String,
) -> Result<(String, String)> {
    if !token.is_empty() {
        let gateway = gateway.unwrap_or_else(|| format!("http://{}", config.listen.api));
        return Ok((gateway, token));
    }
    let Ok(saved) = crate::client::cache::current().await else {
        let gateway = gateway.unwrap_or_else(|| format!("http://{}", config.listen.api));
        return Ok((gateway, token));
    };
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    match gateway {
        Some(g) if !same(&g, &saved.gateway) => bail!(
            "the saved sign-in is for {}, not {g}: pass --token (or SLUICE_TOKEN), or `sluice login --gateway {g}`",
            saved.gateway
        ),
        _ => Ok((saved.gateway, saved.token)),
    }
}

/// Calls the gateway's API as the holder of `token`; fails with the API's error message.
fn call_api(
    config: &Config,
    gateway: Option<String>,
    token: String,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (gateway, token) = runtime.block_on(api_target(config, gateway, token))?;
    let client = crate::api_client::ApiClient::new(&gateway, token)?;
    let (status, value) = runtime.block_on(client.call(method, path, body))?;
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("request failed");
        bail!("{} ({status})", printable(message));
    }
    Ok(value)
}

pub fn reviews(
    config: &Config,
    gateway: Option<String>,
    token: String,
    verb: Verb,
    json: bool,
) -> Result<ExitCode> {
    let (method, path, body) = verb.call("/api/v1/reviews");
    let value = call_api(config, gateway, token, method, &path, body)?;
    if json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    match verb {
        Verb::List { .. } => {
            let rows = value.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no reviews");
            }
            for r in rows {
                println!(
                    "{}  {:<9} {} on {} by policy {}: {}",
                    printable(r["id"].as_str().unwrap_or_default()),
                    printable(r["status"].as_str().unwrap_or_default()),
                    printable(r["requester"].as_str().unwrap_or_default()),
                    printable(r["connection"].as_str().unwrap_or_default()),
                    printable(r["rule"].as_str().unwrap_or_default()),
                    printable(r["statement"].as_str().unwrap_or_default()),
                );
            }
        }
        Verb::Show { .. } | Verb::Decide { .. } => print_review(&value),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `sluice access` was asked to do.
pub enum AccessVerb {
    Request {
        connection: String,
        duration: String,
        reason: String,
        lift_rule: Option<String>,
    },
    Other(Verb),
}

pub fn access(
    config: &Config,
    gateway: Option<String>,
    token: String,
    verb: AccessVerb,
    json: bool,
) -> Result<ExitCode> {
    let base = "/api/v1/access-requests";
    let (method, path, body) = match &verb {
        AccessVerb::Request {
            connection,
            duration,
            reason,
            lift_rule,
        } => (
            hyper::Method::POST,
            base.to_owned(),
            Some(json!({
                "connection": connection, "duration": duration, "reason": reason,
                "lift_rule": lift_rule,
            })),
        ),
        AccessVerb::Other(verb) => verb.call(base),
    };
    let value = call_api(config, gateway, token, method, &path, body)?;
    if json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = match value {
        serde_json::Value::Array(rows) => rows,
        one => vec![one],
    };
    if rows.is_empty() {
        println!("no access requests");
    }
    for r in rows {
        let text = |key: &str| printable(r[key].as_str().unwrap_or_default());
        let what = match r["lift_rule"].as_str() {
            Some(rule) => format!(
                "lift of review rule {} on {}",
                printable(rule),
                text("connection")
            ),
            None => format!("access to {}", text("connection")),
        };
        println!(
            "{}  {:<8} {} asks for {} for {}s: {}",
            text("id"),
            text("status"),
            text("requester"),
            what,
            r["duration_s"],
            text("reason")
        );
        match (r["status"].as_str(), r["ends"].as_str()) {
            (Some("approved"), Some(ends)) => println!(
                "    approved by {} until {}",
                text("decided_by"),
                printable(ends)
            ),
            (Some("denied"), _) => println!(
                "    denied by {}{}",
                text("decided_by"),
                r["decision_reason"]
                    .as_str()
                    .map(|why| format!(": {}", printable(why)))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_review(r: &serde_json::Value) {
    let text = |key: &str| printable(r[key].as_str().unwrap_or_default());
    println!("review {}  {}", text("id"), text("status"));
    println!(
        "  requested by {} ({}) on {} at {}, session {}",
        text("requester"),
        text("actor"),
        text("connection"),
        text("created"),
        text("session")
    );
    println!(
        "  policy {} ({} mode), expires {}",
        text("rule"),
        text("mode"),
        text("expires")
    );
    println!("  statement: {}", text("statement"));
    if let Some(params) = r["params"].as_array().filter(|p| !p.is_empty()) {
        println!("  params: {}", serde_json::Value::Array(params.clone()));
    }
    print_context(&r["context"]);
    println!(
        "  reviewers: {} (approvals needed: {})",
        r["reviewers"], r["min_approvals"]
    );
    for a in r["approvals"].as_array().into_iter().flatten() {
        println!(
            "  approved by {} at {}",
            printable(a["approver"].as_str().unwrap_or_default()),
            printable(a["at"].as_str().unwrap_or_default())
        );
    }
    if let Some(by) = r["decided_by"].as_str() {
        println!(
            "  decided by {} at {}{}",
            printable(by),
            text("decided"),
            r["reason"]
                .as_str()
                .map(|reason| format!(": {}", printable(reason)))
                .unwrap_or_default()
        );
    }
}

/// Percent-encodes everything but unreserved characters, for a path or query component.
fn url_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn terminal_escapes_and_fake_lines_are_neutralised() {
        let evil = "SELECT 1\x1b[2J\n  2026-01-01  #9  DROP TABLE x";
        let shown = printable(evil);
        assert!(!shown.contains('\x1b'));
        assert!(shown.contains("\\u{1b}[2J"));
        assert!(
            shown.contains("\n           2026-01-01"),
            "continuation lines are indented: {shown:?}"
        );
    }
}
