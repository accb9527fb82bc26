//! The console's pages, rendered on the server. maud escapes every value interpolated
//! into the markup, so statements, parameters, prompts and errors — attacker-chosen text —
//! are shown as text; the pages carry no inline script or style (the CSP forbids them).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use sluice_store::{AccessRow, ReviewRow, SessionRow};

use super::auth::Viewer;
use super::routes::{ago, SessionsQuery};
use super::verify::VerifyStatus;
use crate::views::rfc3339_ms;

/// A page or fragment as a response, with the console's security headers (also set by
/// the router's layer; repeated here for pages served from `/auth/`).
fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Navigation entries: path, label, and whether the viewer's role sees it.
fn nav(viewer: &Viewer, active: &str) -> Markup {
    let entries = [
        ("/console/sessions", "Sessions", true),
        ("/console/reviews", "Reviews", true),
        ("/console/access", "Access", true),
        ("/console/connections", "Connections", true),
        ("/console/audit", "Audit", viewer.reads_everything()),
    ];
    html! {
        nav {
            a.brand href="/console/sessions" { "sluice" }
            @for (path, label, shown) in entries {
                @if shown {
                    a href=(path) class=[(path == active).then_some("active")] { (label) }
                }
            }
            span.who {
                (viewer.user()) " · " (viewer.caller.role.as_str())
                @if !viewer.acts() { " · " span.badge { "read-only" } }
            }
            form.logout method="post" action="/console/logout" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" { "Sign out" }
            }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { "sluice · " (title) }
            link rel="icon" href="/console/assets/icon.svg" type="image/svg+xml";
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

fn layout(viewer: &Viewer, active: &str, title: &str, body: Markup) -> Response {
    respond(
        StatusCode::OK,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header { (nav(viewer, active)) }
                    main { h1 { (title) } (body) }
                }
            }
        },
    )
}

/// A page saying why something did not happen.
pub fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    respond(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    main.narrow {
                        h1 { (title) }
                        p.error role="alert" { (message) }
                        p { a href="/console/sessions" { "Back to the console" } }
                    }
                }
            }
        },
    )
}

pub fn login(
    status: StatusCode,
    user: Option<&str>,
    error: Option<&str>,
    has_provider: bool,
) -> Response {
    respond(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Sign in"))
                body {
                    main.narrow {
                        h1 { "Sign in to sluice" }
                        @if let Some(error) = error { p.error role="alert" { (error) } }
                        form method="post" action="/console/login" {
                            label { "User" input name="user" autocomplete="username" required value=[user]; }
                            label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                            button type="submit" { "Sign in" }
                        }
                        @if has_provider {
                            p.or { "or" }
                            a.button #sso href="/console/login/oidc" { "Sign in with your identity provider" }
                        }
                    }
                }
            }
        },
    )
}

/// `text` percent-encoded for a URI, every byte but the unreserved ones: safe inside a
/// URI and inside the shell's double quotes the snippets use.
fn uri_part(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct ConnectionRow {
    pub name: String,
    pub kind: &'static str,
    pub agent: String,
    pub state: &'static str,
    pub listen: String,
    pub allowed: bool,
    pub requires_access_request: bool,
}

pub fn connections(viewer: &Viewer, rows: &[ConnectionRow], api: &str) -> Response {
    let user = viewer.user();
    let body = html! {
        p { "Sign in once with " code { "sluice login" } "; the snippets below then carry your token. " code { "sluice connect NAME" } " opens a local port for clients that cannot." }
        @for c in rows {
            @let (host, port) = c.listen.rsplit_once(':').unwrap_or((c.listen.as_str(), "5432"));
            section.connection id={ "connection-" (c.name) } {
                h2 { (c.name) }
                dl.facts {
                    dt { "kind" } dd { (c.kind) }
                    dt { "agent" } dd { (c.agent) }
                    dt { "state" } dd class=(if c.state == "ready" { "ok" } else { "bad" }) { (c.state) }
                    dt { "you may connect" } dd { (if c.allowed { "yes" } else { "no" }) @if c.requires_access_request { " (after an approved access request)" } }
                }
                @match c.kind {
                    "aws" => {
                        h3 { "AWS CLI / SDKs" }
                        pre.snippet { "# a key pair for you (ask an admin: sluice aws-keys issue --user " (user) " --connection " (c.name) ")\nexport AWS_ACCESS_KEY_ID=SLUICE...\nexport AWS_SECRET_ACCESS_KEY=...\nexport AWS_ENDPOINT_URL=http://" (c.listen) "\naws s3 ls\n# AWS CLI v1 presigned URLs: aws configure set default.s3.signature_version s3v4" }
                    }
                    "http" => {
                        h3 { "curl" }
                        pre.snippet { "curl -H \"Authorization: Bearer $SLUICE_TOKEN\" http://" (c.listen) "/" (uri_part(&c.name)) "/PATH" }
                    }
                    _ => {
                        h3 { "psql" }
                        pre.snippet { "psql \"$(sluice credentials " (c.name) " --format uri)\"\n# or, with a token as the password:\npsql \"postgresql://" (uri_part(user)) "@" (host) ":" (port) "/" (uri_part(&c.name)) "\"" }
                        h3 { "DBeaver / JDBC" }
                        pre.snippet { "jdbc:postgresql://" (host) ":" (port) "/" (uri_part(&c.name)) "?user=" (uri_part(user)) "\n# password: your sluice token (sluice credentials " (c.name) " --format json)" }
                        h3 { "Cursor / Claude Code (MCP)" }
                        pre.snippet { "{\n  \"mcpServers\": {\n    \"sluice\": {\n      \"command\": \"sluice\",\n      \"args\": [\"mcp\", \"--gateway\", \"" (api) "\"]\n    }\n  }\n}" }
                    }
                }
            }
        }
        @if rows.is_empty() { p { "No connections are configured." } }
    };
    layout(viewer, "/console/connections", "Connections", body)
}

pub struct SessionsPage<'a> {
    pub query: &'a SessionsQuery,
    pub rows: &'a [SessionRow],
    pub next: Option<String>,
    pub problems: &'a [String],
    pub connections: &'a [String],
}

pub fn sessions(viewer: &Viewer, page: &SessionsPage<'_>) -> Response {
    let q = page.query;
    let next_link = page
        .next
        .as_deref()
        .map(|after| sessions_link(q, Some(after)));
    let body = html! {
        form.filters method="get" action="/console/sessions" {
            @if viewer.reads_everything() {
                label { "User" input name="user" value=(q.user); }
            }
            label { "Actor"
                select name="actor" {
                    option value="" { "anyone" }
                    option value="human" selected[q.actor == "human"] { "human" }
                    option value="agent" selected[q.actor == "agent"] { "agent" }
                }
            }
            label { "Connection"
                select name="connection" {
                    option value="" { "any" }
                    @for name in page.connections {
                        option value=(name) selected[&q.connection == name] { (name) }
                    }
                }
            }
            label { "From (UTC)" input name="from" type="datetime-local" value=(q.from); }
            label { "To (UTC)" input name="to" type="datetime-local" value=(q.to); }
            label { "With"
                select name="decision" {
                    option value="" { "any statement" }
                    option value="denied" selected[q.decision == "denied"] { "a denied statement" }
                    option value="held" selected[q.decision == "held"] { "a held statement" }
                    option value="masked" selected[q.decision == "masked"] { "masked results" }
                }
            }
            label.wide { "Statement text" input name="q" type="search" value=(q.q) placeholder="e.g. DELETE FROM orders"; }
            button type="submit" { "Filter" }
        }
        @for p in page.problems { p.error role="alert" { (p) } }
        @if page.rows.is_empty() {
            p.empty { "No sessions match." }
        } @else {
            table.sessions {
                thead { tr { th { "Started (UTC)" } th { "User" } th { "Actor" } th { "Connection" } th { "Client" } th { "Statements" } th { "Denied" } th { "Held" } th { "Masked" } th { "Ended" } } }
                tbody {
                    @for s in page.rows {
                        tr {
                            td { a href={ "/console/sessions/" (s.id) } { (rfc3339_ms(s.started_ms)) } }
                            td { (s.user) }
                            td { span class={ "actor " (s.actor) } { (s.actor) } }
                            td { (s.connection) }
                            td { (s.client_addr) }
                            td.num { (s.statements) }
                            td class=(if s.denied > 0 { "num bad" } else { "num" }) { (s.denied) }
                            td class=(if s.held > 0 { "num warn" } else { "num" }) { (s.held) }
                            td.num { (s.masked) }
                            td { @match s.ended_ms { Some(ms) => (rfc3339_ms(ms)), None => span.live { "open" } } }
                        }
                    }
                }
            }
        }
        p.pager {
            @if q.paged() { a href=(sessions_link(q, None)) { "« Newest" } }
            @if let Some(link) = &next_link { a #next-page href=(link) { "Older »" } }
        }
    };
    let mut response = layout(viewer, "/console/sessions", "Sessions", body);
    if !page.problems.is_empty() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    response
}

/// The sessions list with the same filters, from the start or after a session.
fn sessions_link(q: &SessionsQuery, after: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in q.pairs() {
        query.append_pair(k, v);
    }
    if let Some(after) = after {
        query.append_pair("after", after);
    }
    format!("/console/sessions?{}", query.finish())
}

/// Milliseconds since the session started, from an event's RFC 3339 `time`.
fn offset_ms(event: &Value, started_ms: i64) -> i64 {
    event
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .map_or(0, |t| (crate::views::unix_ms(t) - started_ms).max(0))
}

fn text<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event.get(key).and_then(Value::as_str)
}

fn context(ctx: &Value) -> Markup {
    let fields = [
        ("prompt", "prompt"),
        ("intent", "intent"),
        ("tool_call", "tool call"),
        ("client", "client"),
        ("conversation", "conversation"),
        ("trace_id", "trace"),
    ];
    html! {
        dl.context {
            @for (key, label) in fields {
                @if let Some(v) = text(ctx, key) { dt { (label) } dd class=(key) { (v) } }
            }
            @if let Some(Value::Object(tags)) = ctx.get("tags") {
                @for (k, v) in tags { dt { "tag " (k) } dd { (v.as_str().unwrap_or_default()) } }
            }
        }
    }
}

fn timeline_item(e: &Value, started_ms: i64) -> Markup {
    let kind = text(e, "kind").unwrap_or("event");
    let seq = e.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let at = offset_ms(e, started_ms);
    html! {
        li id={ "ev-" (seq) } class={ "ev " (kind) } data-seq=(seq)
            data-result-seq=[e.get("result_seq").and_then(Value::as_u64)] data-at=(at) {
            div.ev-head {
                span.t { "+" (format!("{:.3}", at as f64 / 1000.0)) " s" }
                span.kind { (kind.replace('_', " ")) }
                @if let Some(d) = text(e, "decision") { span class={ "decision " (d) } { (d) } }
                @if let Some(r) = text(e, "rule") { span.rule { "rule " (r) } }
                @if let Some(s) = text(e, "status") { span class={ "status " (s) } { (s) } }
            }
            @if let Some(sql) = text(e, "statement") { pre.sql { (sql) } }
            @if let Some(Value::Array(params)) = e.get("params") {
                @if !params.is_empty() {
                    div.params { "parameters " ol { @for p in params { li { @match p.as_str() { Some(v) => (v), None => em { "NULL" } } } } } }
                }
            }
            dl.facts {
                @if let Some(d) = e.get("duration_ms").and_then(Value::as_f64) { dt { "duration" } dd { (format!("{d:.2} ms")) } }
                @if let Some(r) = e.get("rows").and_then(Value::as_u64) { dt { "rows" } dd { (r) } }
                @if let Some(t) = text(e, "tag") { dt { "tag" } dd { (t) } }
                @if let Some(r) = text(e, "reason") { dt { "reason" } dd { (r) } }
                @if let Some(c) = text(e, "client_addr") { dt { "client" } dd { (c) } }
                @if let Some(a) = text(e, "application_name") { dt { "application" } dd { (a) } }
                @if let Some(b) = text(e, "by") { dt { "by" } dd { (b) } }
                @if let Some(r) = text(e, "review_id") { dt { "review" } dd { (r) } }
                @if let Some(err) = e.get("error").filter(|v| !v.is_null()) {
                    dt { "error" } dd.bad { (text(err, "code").unwrap_or_default()) " " (text(err, "message").unwrap_or_default()) }
                }
            }
            @if let Some(Value::Array(masked)) = e.get("masked") {
                @if !masked.is_empty() {
                    div.masked { "masked: "
                        @for m in masked {
                            span.mask { (text(m, "column").or(text(m, "detector")).unwrap_or("?")) " (" (text(m, "style").unwrap_or_default()) ") ×" (m.get("values").and_then(Value::as_u64).unwrap_or(0)) }
                        }
                    }
                }
            }
            @if let Some(review) = e.get("review").filter(|v| !v.is_null()) {
                div.review { "review " (text(review, "id").unwrap_or_default()) ": " (text(review, "status").unwrap_or_default())
                    @if let Some(by) = text(review, "by") { " by " (by) }
                    @if let Some(at) = text(review, "at") { " at " (at) }
                }
            }
            @if let Some(ctx) = e.get("context").filter(|v| v.is_object()) { (context(ctx)) }
        }
    }
}

pub fn session(
    viewer: &Viewer,
    s: &SessionRow,
    events: &[Value],
    truncated: bool,
    resume: &str,
) -> Response {
    let open = s.ended_ms.is_none();
    let follow = (open && !truncated).then(|| format!("/console/sessions/{}/timeline", s.id));
    let body = html! {
        dl.facts.summary {
            dt { "user" } dd { (s.user) " (" (s.actor) ")" }
            dt { "connection" } dd { (s.connection) }
            dt { "client" } dd { (s.client_addr) }
            dt { "started" } dd { (rfc3339_ms(s.started_ms)) }
            dt { "ended" } dd { @match s.ended_ms { Some(ms) => { (rfc3339_ms(ms)) @if let Some(r) = &s.end_reason { " (" (r) ")" } }, None => span.live { "open" } } }
            dt { "statements" } dd { (s.statements) " · denied " (s.denied) " · held " (s.held) " · masked " (s.masked) }
        }
        div.replay role="toolbar" aria-label="Replay" {
            button #play type="button" { "Play" }
            button #pause type="button" disabled { "Pause" }
            button #step type="button" { "Step" }
            button #show-all type="button" { "Show all" }
            label { "Speed "
                select #speed { option value="1" { "1×" } option value="4" { "4×" } option value="16" { "16×" } }
            }
            span #replay-pos aria-live="polite" {}
            span.hint { "Plays at recorded timing; pauses longer than 5 s are shortened." }
            @if follow.is_some() { span #follow.live { "following live" } }
        }
        @if truncated {
            p.notice { "Showing the first " (events.len()) " entries of this session. The export has all of them." }
        }
        ol #timeline data-follow-url=[follow] data-resume=(resume) {
            @for e in events { (timeline_item(e, s.started_ms)) }
        }
        @if viewer.reads_everything() {
            p { a href={ "/console/audit/export?session=" (s.id) } download { "Export this session (JSONL)" } }
        }
    };
    layout(
        viewer,
        "/console/sessions",
        &format!("Session {}", s.id),
        body,
    )
}

pub fn timeline_fragment(events: &[Value], started_ms: i64) -> Response {
    respond(
        StatusCode::OK,
        html! { @for e in events { (timeline_item(e, started_ms)) } },
    )
}

fn params_list(params_json: &str) -> Markup {
    let params: Vec<Option<String>> = serde_json::from_str(params_json).unwrap_or_default();
    html! {
        @if !params.is_empty() {
            div.params { "parameters " ol { @for p in &params { li { @match p { Some(v) => (v), None => em { "NULL" } } } } } }
        }
    }
}

fn done_notice(done: &str) -> Markup {
    html! { @if !done.is_empty() { p.notice role="status" { (done) } } }
}

fn review_card(viewer: &Viewer, r: &ReviewRow) -> Markup {
    let mine = r.requester == viewer.user();
    let decides = viewer.acts() && !mine && crate::reviews::is_reviewer(r, &viewer.caller.identity);
    let ctx: Option<Value> = r
        .context
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    html! {
        article.review id={ "review-" (r.id) } data-status=(r.status) {
            header {
                strong { (r.requester) } " (" (r.actor) ") on " strong { (r.connection) }
                " · rule " code { (r.rule) } " · " (r.mode) " · " (ago(r.created_ms))
                @if viewer.reads_everything() || mine {
                    " · " a href={ "/console/sessions/" (r.session_id) } { "session" }
                }
            }
            pre.sql { (r.statement) }
            (params_list(&r.params))
            @if let Some(ctx) = &ctx { (context(ctx)) }
            p.meta {
                "approvals " (r.approvals.len()) " of " (r.min_approvals)
                @if r.status == "pending" { " · expires " (rfc3339_ms(r.expires_ms)) }
                @else { " · " span class={ "status " (r.status) } { (r.status) }
                    @if let Some(by) = &r.decided_by { " by " (by) }
                    @if let Some(reason) = &r.reason { " — " (reason) } }
            }
            @if r.status == "pending" && (decides || (mine && viewer.acts())) {
                form.decide method="post" action={ "/console/reviews/" (r.id) "/deny" } {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    label { "Reason" textarea name="reason" rows="2" maxlength="2000" {} }
                    @if decides {
                        button.approve type="submit" formaction={ "/console/reviews/" (r.id) "/approve" } { "Approve" }
                        button.deny type="submit" { "Deny" }
                    } @else {
                        button.deny type="submit" { "Withdraw" }
                    }
                }
            }
        }
    }
}

fn review_queue(viewer: &Viewer, pending: &[ReviewRow]) -> Markup {
    html! {
        @if pending.is_empty() { p.empty { "No statement is waiting for review." } }
        @for r in pending { (review_card(viewer, r)) }
    }
}

pub fn reviews(
    viewer: &Viewer,
    pending: &[ReviewRow],
    recent: &[ReviewRow],
    done: &str,
) -> Response {
    let body = html! {
        (done_notice(done))
        h2 { "Waiting" }
        div #review-queue data-live-url="/console/reviews/queue" { (review_queue(viewer, pending)) }
        h2 { "Recently decided" }
        @if recent.is_empty() { p.empty { "None yet." } }
        @for r in recent { (review_card(viewer, r)) }
    };
    layout(viewer, "/console/reviews", "Reviews", body)
}

pub fn review_queue_fragment(viewer: &Viewer, pending: &[ReviewRow]) -> Response {
    respond(StatusCode::OK, review_queue(viewer, pending))
}

fn access_card(viewer: &Viewer, r: &AccessRow) -> Markup {
    let mine = r.requester == viewer.user();
    html! {
        article.access id={ "access-" (r.id) } data-status=(r.status) {
            header {
                strong { (r.requester) } " asks for " strong { (r.connection) }
                " for " (humantime::format_duration(std::time::Duration::from_millis(r.duration_ms.max(0) as u64)))
                @if let Some(rule) = &r.lift_rule { " (lifting rule " code { (rule) } ")" }
                " · " (ago(r.created_ms))
            }
            p.reason { (r.reason) }
            p.meta { span class={ "status " (r.status) } { (r.status) }
                @if let Some(by) = &r.decided_by { " by " (by) }
                @if let Some(reason) = &r.decision_reason { " — " (reason) } }
            @if r.status == "pending" && viewer.acts() && !mine {
                form.decide method="post" action={ "/console/access/" (r.id) "/deny" } {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    label { "Reason" textarea name="reason" rows="2" maxlength="2000" {} }
                    button.approve type="submit" formaction={ "/console/access/" (r.id) "/approve" } { "Approve" }
                    button.deny type="submit" { "Deny" }
                }
            }
        }
    }
}

fn access_queue(viewer: &Viewer, pending: &[AccessRow]) -> Markup {
    html! {
        @if pending.is_empty() { p.empty { "No access request is waiting." } }
        @for r in pending { (access_card(viewer, r)) }
    }
}

pub fn access(
    viewer: &Viewer,
    pending: &[AccessRow],
    recent: &[AccessRow],
    connections: &[String],
    done: &str,
) -> Response {
    let body = html! {
        (done_notice(done))
        @if viewer.acts() {
            details {
                summary { "Ask for access" }
                form.ask method="post" action="/console/access" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    label { "Connection" select name="connection" { @for c in connections { option value=(c) { (c) } } } }
                    label { "For" input name="duration" value="1h" required; }
                    label { "Lift review rule (optional)" input name="lift_rule"; }
                    label.wide { "Why" textarea name="reason" rows="2" maxlength="2000" required {} }
                    button type="submit" { "Ask" }
                }
            }
        }
        h2 { "Waiting" }
        div #access-queue data-live-url="/console/access/queue" { (access_queue(viewer, pending)) }
        h2 { "Recently decided" }
        @if recent.is_empty() { p.empty { "None yet." } }
        @for r in recent { (access_card(viewer, r)) }
    };
    layout(viewer, "/console/access", "Access requests", body)
}

pub fn access_queue_fragment(viewer: &Viewer, pending: &[AccessRow]) -> Response {
    respond(StatusCode::OK, access_queue(viewer, pending))
}

fn time(t: Option<std::time::SystemTime>) -> String {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

pub fn audit(
    viewer: &Viewer,
    status: &VerifyStatus,
    anchor: Option<(u64, String)>,
    head_seq: u64,
) -> Response {
    let body = html! {
        section #verify data-running=[status.running.then_some("1")] {
            h2 { "Hash chain" }
            p { "The log holds " strong { (head_seq) } " events."
                @if let Some((seq, hash)) = &anchor { " Durable head noted outside the log: seq " (seq) ", " code { (hash) } "." } }
            @match (&status.outcome, status.running) {
                (_, true) => p.live #verify-result { "Checking every event since " (time(status.started)) "…" },
                (Some(Ok(summary)), false) => p.ok #verify-result { "Verified " (time(status.finished)) " (asked by " (status.by.as_deref().unwrap_or("?")) "): " (summary) },
                (Some(Err(problem)), false) => p.bad #verify-result role="alert" { "Verification FAILED " (time(status.finished)) ": " (problem) },
                (None, false) => p #verify-result { "Not verified since the gateway started." },
            }
            form method="post" action="/console/audit/verify" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" disabled[status.running] { "Verify the whole log now" }
            }
        }
        section {
            h2 { "Export (JSONL)" }
            p { "Each line is the record exactly as stored, with its " code { "prev" } " and " code { "hash" } "." }
            form.filters method="get" action="/console/audit/export" {
                label { "Session id" input name="session" required; }
                button type="submit" { "Export session" }
            }
            form.filters method="get" action="/console/audit/export" {
                label { "From (UTC)" input name="from" type="datetime-local" required; }
                label { "To (UTC)" input name="to" type="datetime-local"; }
                button type="submit" { "Export time range" }
            }
        }
    };
    layout(viewer, "/console/audit", "Audit", body)
}
