//! The console's handlers: each checks the viewer, gathers what its page shows (from the
//! store, the review and access services, or the audit log) and hands it to `pages`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sluice_audit::{EventBody, Position};
use sluice_store::{SessionFilter, SessionRow};

use super::auth::{self, see_other, viewer, Viewer};
use super::pages::{self, SessionsPage};
use super::verify;
use crate::access::AccessAsk;
use crate::api::{decisions, record_denied, ApiState, Need};
use crate::views::{session_start, unix_ms, Resume};

/// Sessions per page.
const PAGE: u32 = 50;
/// Reviews and access requests read for a queue (then narrowed to what the viewer may
/// see), and recent decisions shown.
const QUEUE: u32 = 1000;
const RECENT: usize = 20;

/// The viewer, or the response that ends the request.
macro_rules! viewer_or_return {
    ($state:expr, $headers:expr) => {
        match viewer(&$state, &$headers).await {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

/// A refusal of a signed-in viewer: recorded as a `denied` event, shown as a page.
fn refuse(state: &ApiState, viewer: &Viewer, action: &str, reason: &str) -> Response {
    record_denied(state, &viewer.caller, action, reason);
    pages::problem(StatusCode::FORBIDDEN, "Not allowed", reason)
}

fn unavailable(what: &str) -> Response {
    pages::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        &format!("{what} is unavailable; try again"),
    )
}

fn bad_form(r: FormRejection) -> Response {
    pages::problem(r.status(), "Bad request", &r.body_text())
}

pub async fn home() -> Response {
    see_other("/console/sessions")
}

pub async fn login_page(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if viewer(&state, &headers).await.is_ok() {
        return see_other("/console/sessions");
    }
    pages::login(StatusCode::OK, None, None, state.signin.has_provider())
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
}

pub async fn login(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    // No session yet, so no CSRF token: a form posted from another site (signing the
    // victim in as someone else) is told apart by its Origin.
    if !auth::same_origin(&state, &headers) {
        return pages::problem(
            StatusCode::FORBIDDEN,
            "Refused",
            "cross-origin request refused",
        );
    }
    let Form(form) = match form {
        Ok(f) => f,
        Err(r) => return bad_form(r),
    };
    match state
        .signin
        .password(&form.user, &form.password, &addr.to_string())
        .await
    {
        Ok(granted) => auth::start_session(&state, &granted),
        Err(refusal) => pages::login(
            refusal.status,
            Some(&form.user),
            Some(&refusal.message),
            state.signin.has_provider(),
        ),
    }
}

pub async fn login_oidc(State(state): State<ApiState>) -> Response {
    match state.signin.console_start().await {
        Ok((url, browser_key)) => crate::signin::routes::to_provider(&state, &url, &browser_key),
        Err(r) => pages::login(
            r.status,
            None,
            Some(&r.message),
            state.signin.has_provider(),
        ),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A form that changes something: it carries the session's CSRF token.
trait Posted {
    fn csrf(&self) -> &str;
}

impl Posted for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The viewer and their form, once the form parsed, the viewer is signed in, the CSRF
/// token and origin check out, and the role may do `action` (a refusal is recorded).
async fn posted<F: Posted>(
    state: &ApiState,
    headers: &HeaderMap,
    form: Result<Form<F>, FormRejection>,
    need: Need,
    action: &str,
) -> Result<(Viewer, F), Response> {
    let Form(form) = form.map_err(bad_form)?;
    let viewer = viewer(state, headers).await?;
    auth::check_post(state, headers, form.csrf()).map_err(|r| *r)?;
    if let Some(reason) = need.refusal(viewer.caller.role) {
        return Err(refuse(state, &viewer, action, reason));
    }
    Ok((viewer, form))
}

pub async fn logout(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let viewer = match posted(&state, &headers, form, Need::Any, "POST /console/logout").await {
        Ok((viewer, _)) => viewer,
        Err(r) => return r,
    };
    state.signin.sign_out(&viewer.token_id).await;
    let mut response = see_other("/console/login");
    auth::end_session_cookie(&state, &mut response);
    response
}

pub async fn connections(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let viewer = viewer_or_return!(state, headers);
    let store = state.store.clone();
    let agents = tokio::task::spawn_blocking(move || store.list_agents())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let now_ms = crate::reviews::now_ms();
    let connected = |name: &str| agents.iter().any(|a| a.name == name && a.connected(now_ms));
    let api = state.signin.public_origin().to_owned();
    let rows: Vec<pages::ConnectionRow> = state
        .connections
        .iter()
        .map(|c| pages::ConnectionRow {
            name: c.name.clone(),
            kind: c.kind,
            agent: c.agent.clone(),
            state: if c.agent == "embedded" || connected(&c.agent) {
                "ready"
            } else {
                "agent not connected"
            },
            listen: c.listen.clone(),
            allowed: c.allows(&viewer.caller),
            requires_access_request: c.requires_access_request,
        })
        .collect();
    pages::connections(&viewer, &rows, &api)
}

#[derive(Deserialize, Default)]
pub struct SessionsQuery {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub connection: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    /// `denied`, `held` or `masked`.
    #[serde(default)]
    pub decision: String,
    /// Text in a statement.
    #[serde(default)]
    pub q: String,
    /// The last session of the previous page: `STARTED_MS.ID`.
    #[serde(default)]
    pub after: String,
}

impl SessionsQuery {
    /// The query as form fields, for the next page's link.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("user", self.user.as_str()),
            ("actor", &self.actor),
            ("connection", &self.connection),
            ("from", &self.from),
            ("to", &self.to),
            ("decision", &self.decision),
            ("q", &self.q),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }

    pub fn paged(&self) -> bool {
        !self.after.is_empty()
    }
}

/// A form's time (`datetime-local`: `YYYY-MM-DDTHH:MM[:SS]`, read as UTC) in unix ms.
fn form_time(value: &str) -> Result<Option<i64>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let full = if value.len() == 16 {
        format!("{value}:00Z")
    } else if value.ends_with('Z') {
        value.to_owned()
    } else {
        format!("{value}Z")
    };
    humantime::parse_rfc3339(&full)
        .map(|t| Some(unix_ms(t)))
        .map_err(|_| format!("{value:?} is not a time (YYYY-MM-DDTHH:MM, UTC)"))
}

pub async fn sessions(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<SessionsQuery>,
) -> Response {
    let viewer = viewer_or_return!(state, headers);
    let mut problems = Vec::new();
    let mut time = |v: &str| {
        form_time(v).unwrap_or_else(|e| {
            problems.push(e);
            None
        })
    };
    let (since_ms, until_ms) = (time(&q.from), time(&q.to));
    if !["", "human", "agent"].contains(&q.actor.as_str()) {
        problems.push(format!("{:?} is not an actor (human or agent)", q.actor));
    }
    if !["", "denied", "held", "masked"].contains(&q.decision.as_str()) {
        problems.push(format!(
            "{:?} is not a decision filter (denied, held or masked)",
            q.decision
        ));
    }
    let after = if q.after.is_empty() {
        None
    } else {
        let parsed = q
            .after
            .split_once('.')
            .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_owned())));
        if parsed.is_none() {
            problems.push("the page link is damaged: start from the newest".to_owned());
        }
        parsed
    };
    let nonempty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let filter = SessionFilter {
        // Users see their own sessions only.
        user: if viewer.reads_everything() {
            nonempty(&q.user)
        } else {
            Some(viewer.user().to_owned())
        },
        connection: nonempty(&q.connection),
        since_ms,
        until_ms,
        actor: nonempty(&q.actor),
        statement: nonempty(&q.q),
        denied: q.decision == "denied",
        held: q.decision == "held",
        masked: q.decision == "masked",
        after,
        limit: PAGE + 1,
        open_only: false,
    };
    let store = state.store.clone();
    let mut rows = if problems.is_empty() {
        match tokio::task::spawn_blocking(move || store.list_sessions(&filter)).await {
            Ok(Ok(rows)) => rows,
            _ => return unavailable("the metadata store"),
        }
    } else {
        Vec::new()
    };
    let next = (rows.len() > PAGE as usize).then(|| {
        rows.truncate(PAGE as usize);
        rows.last()
            .map(|r| format!("{}.{}", r.started_ms, r.id))
            .unwrap_or_default()
    });
    let names: Vec<String> = state.connections.iter().map(|c| c.name.clone()).collect();
    pages::sessions(
        &viewer,
        &SessionsPage {
            query: &q,
            rows: &rows,
            next,
            problems: &problems,
            connections: &names,
        },
    )
}

/// The session `id` if the viewer may read it.
async fn visible_session(
    state: &ApiState,
    viewer: &Viewer,
    id: &str,
    action: &str,
) -> Result<SessionRow, Response> {
    let store = state.store.clone();
    let key = id.to_owned();
    let row = match tokio::task::spawn_blocking(move || store.get_session(&key)).await {
        Ok(Ok(Some(row))) => row,
        Ok(Ok(None)) => {
            return Err(pages::problem(
                StatusCode::NOT_FOUND,
                "No such session",
                "no session has this id",
            ))
        }
        _ => return Err(unavailable("the metadata store")),
    };
    if !viewer.reads_everything() && row.user != viewer.user() {
        return Err(refuse(
            state,
            viewer,
            action,
            "users see only their own sessions",
        ));
    }
    Ok(row)
}

/// Entries the session page shows at most; the export has them all.
const PAGE_EVENTS: usize = 5_000;
/// Entries one live-follow poll returns at most.
const FOLLOW_EVENTS: usize = 1_000;

/// A resume point as the page carries it: `SEGMENT.OFFSET.SEQ`, and `.next` when the
/// record there was shown already.
fn position_text(r: Resume) -> String {
    let p = r.at;
    let next = if r.after { ".next" } else { "" };
    format!("{}.{}.{}{next}", p.segment, p.offset, p.seq)
}

fn parse_position(text: &str) -> Option<Resume> {
    let (text, after) = match text.strip_suffix(".next") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let mut parts = text.splitn(3, '.');
    let at = Position {
        segment: parts.next()?.parse().ok()?,
        offset: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
    };
    Some(Resume { at, after })
}

/// The session's timeline from `from`; a `from` naming no record is `bad_position`.
async fn read_timeline(
    state: &ApiState,
    id: &str,
    from: Resume,
    max: usize,
    bad_position: impl FnOnce() -> Response,
) -> Result<crate::views::Timeline, Response> {
    let (dir, id) = (state.audit_dir.clone(), id.to_owned());
    match tokio::task::spawn_blocking(move || crate::views::timeline(&dir, &id, from, max)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) if e.is::<crate::views::NoSuchPosition>() => Err(bad_position()),
        _ => Err(unavailable("the audit log")),
    }
}

pub async fn session(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let viewer = viewer_or_return!(state, headers);
    let row = match visible_session(&state, &viewer, &id, "GET /console/sessions/ID").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let from = Resume {
        at: session_start(&row),
        after: false,
    };
    // The start comes from the session index: not finding it there is an outage.
    let outage = || unavailable("the audit log");
    match read_timeline(&state, &row.id, from, PAGE_EVENTS, outage).await {
        Ok(t) => pages::session(
            &viewer,
            &row,
            &t.events,
            t.truncated,
            &position_text(t.resume),
        ),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct TimelineQuery {
    #[serde(default)]
    from: String,
}

/// Live follow: the session's entries from `from` (the position the last answer gave in
/// `x-resume`), so each poll reads only what is new; entries already shown come again
/// when their result arrived, and replace the old ones.
pub async fn timeline(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Response {
    let viewer = viewer_or_return!(state, headers);
    let row = match visible_session(&state, &viewer, &id, "GET /console/sessions/ID").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let open = row.ended_ms.is_none();
    let bad_position = || {
        pages::problem(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "from is not a position in this session's part of the audit log",
        )
    };
    // Never before the session's own start; any other position is checked by the reader
    // (it must hold the record with that seq) and only this session's records are shown.
    let from = if q.from.is_empty() {
        Resume {
            at: session_start(&row),
            after: false,
        }
    } else {
        match parse_position(&q.from).filter(|r| r.at.seq >= row.audit_seq) {
            Some(r) => r,
            None => return bad_position(),
        }
    };
    // A position that names no record is the caller's mistake, not an outage.
    match read_timeline(&state, &row.id, from, FOLLOW_EVENTS, bad_position).await {
        Ok(t) => {
            let mut response = pages::timeline_fragment(&t.events, row.started_ms);
            let headers = response.headers_mut();
            headers.insert(
                "x-session-open",
                header::HeaderValue::from_static(if open { "1" } else { "0" }),
            );
            if let Ok(resume) = header::HeaderValue::from_str(&position_text(t.resume)) {
                headers.insert("x-resume", resume);
            }
            response
        }
        Err(r) => r,
    }
}

/// The pending reviews the viewer may see, oldest first.
async fn pending_reviews(
    state: &ApiState,
    viewer: &Viewer,
) -> Option<Vec<sluice_store::ReviewRow>> {
    let rows = state
        .reviews
        .list(Some("pending".into()), QUEUE)
        .await
        .ok()?;
    Some(oldest_first(rows, |r| {
        decisions::sees_review(&viewer.caller, r)
    }))
}

/// The reviews decided last that the viewer may see.
async fn recent_reviews(state: &ApiState, viewer: &Viewer) -> Option<Vec<sluice_store::ReviewRow>> {
    let rows = state.reviews.list(None, QUEUE).await.ok()?;
    Some(decided(rows, |r| decisions::sees_review(&viewer.caller, r)))
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    #[serde(default)]
    done: String,
}

impl DoneQuery {
    /// The notice after a decision: the request's id and its status *now*, looked up in
    /// what the page lists (nothing for an unknown id), so a crafted link cannot put words
    /// on the page.
    fn notice<T: Queued>(&self, pending: &[T], recent: &[T]) -> String {
        let row = pending.iter().chain(recent).find(|r| r.id() == self.done);
        row.map_or_else(String::new, |r| format!("{} {}", r.id(), r.status()))
    }
}

/// What the review and access-request queues have in common.
trait Queued {
    fn id(&self) -> &str;
    fn status(&self) -> &str;
    fn created_ms(&self) -> i64;
}

impl Queued for sluice_store::ReviewRow {
    fn id(&self) -> &str {
        &self.id
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn created_ms(&self) -> i64 {
        self.created_ms
    }
}

impl Queued for sluice_store::AccessRow {
    fn id(&self) -> &str {
        &self.id
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn created_ms(&self) -> i64 {
        self.created_ms
    }
}

/// Those the viewer may see, oldest first: a new arrival goes to the end of a queue, so
/// nothing already shown moves.
fn oldest_first<T: Queued>(rows: Vec<T>, sees: impl Fn(&T) -> bool) -> Vec<T> {
    let mut rows: Vec<T> = rows.into_iter().filter(|r| sees(r)).collect();
    rows.sort_by(|a, b| (a.created_ms(), a.id()).cmp(&(b.created_ms(), b.id())));
    rows
}

/// The most recent decided ones the viewer may see.
fn decided<T: Queued>(rows: Vec<T>, sees: impl Fn(&T) -> bool) -> Vec<T> {
    rows.into_iter()
        .filter(|r| r.status() != "pending" && sees(r))
        .take(RECENT)
        .collect()
}

/// Back to a queue page after a decision or request, which shows its notice.
fn back_to(page: &str, id: &str) -> Response {
    let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    see_other(&format!("{page}?done={id}"))
}

pub async fn reviews(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(done): Query<DoneQuery>,
) -> Response {
    let viewer = viewer_or_return!(state, headers);
    let lists = (
        pending_reviews(&state, &viewer).await,
        recent_reviews(&state, &viewer).await,
    );
    match lists {
        (Some(pending), Some(recent)) => {
            pages::reviews(&viewer, &pending, &recent, &done.notice(&pending, &recent))
        }
        _ => unavailable("the review store"),
    }
}

pub async fn review_queue(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let viewer = viewer_or_return!(state, headers);
    match pending_reviews(&state, &viewer).await {
        Some(pending) => pages::review_queue_fragment(&viewer, &pending),
        None => unavailable("the review store"),
    }
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

impl Posted for DecisionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `approve` or `deny` as a bool, and the reason checked; otherwise the refusal's status
/// and message.
fn read_verdict(verdict: &str, form: &DecisionForm) -> Result<bool, (StatusCode, String)> {
    if form.reason.chars().count() > decisions::MAX_REASON {
        let message = format!(
            "the reason is longer than {} characters",
            decisions::MAX_REASON
        );
        return Err((StatusCode::BAD_REQUEST, message));
    }
    match verdict {
        "approve" => Ok(true),
        "deny" => Ok(false),
        _ => Err((
            StatusCode::NOT_FOUND,
            "the verdict is approve or deny".to_owned(),
        )),
    }
}

/// A decision's form checked: the viewer, whether they approve, and their reason.
async fn decision(
    state: &ApiState,
    headers: &HeaderMap,
    form: Result<Form<DecisionForm>, FormRejection>,
    verdict: &str,
    action: &str,
) -> Result<(Viewer, bool, Option<String>), Response> {
    let (viewer, form) = posted(state, headers, form, Need::Act, action).await?;
    let approve = read_verdict(verdict, &form)
        .map_err(|(status, message)| pages::problem(status, "Not decided", &message))?;
    let reason = form.reason.trim();
    Ok((
        viewer,
        approve,
        (!reason.is_empty()).then(|| reason.to_owned()),
    ))
}

pub async fn decide_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, verdict)): Path<(String, String)>,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let action = "POST /console/reviews/ID";
    let (viewer, approve, reason) = match decision(&state, &headers, form, &verdict, action).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let who = &viewer.caller.identity;
    let decided = if approve {
        state.reviews.approve(&id, who, reason).await
    } else {
        state.reviews.deny(&id, who, reason).await
    };
    match decided {
        Ok(row) => back_to("/console/reviews", &row.id),
        Err(e) => pages::problem(
            decisions::review_error_status(&e),
            "Not decided",
            &e.to_string(),
        ),
    }
}

/// The pending access requests the viewer may see, oldest first.
async fn pending_access(state: &ApiState, viewer: &Viewer) -> Option<Vec<sluice_store::AccessRow>> {
    let rows = state
        .access
        .list(Some("pending".into()), QUEUE)
        .await
        .ok()?;
    Some(oldest_first(rows, |r| {
        decisions::sees_access(state, &viewer.caller, r)
    }))
}

/// The access requests decided last that the viewer may see.
async fn recent_access(state: &ApiState, viewer: &Viewer) -> Option<Vec<sluice_store::AccessRow>> {
    let rows = state.access.list(None, QUEUE).await.ok()?;
    Some(decided(rows, |r| {
        decisions::sees_access(state, &viewer.caller, r)
    }))
}

pub async fn access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(done): Query<DoneQuery>,
) -> Response {
    let viewer = viewer_or_return!(state, headers);
    let names: Vec<String> = state.connections.iter().map(|c| c.name.clone()).collect();
    let lists = (
        pending_access(&state, &viewer).await,
        recent_access(&state, &viewer).await,
    );
    match lists {
        (Some(pending), Some(recent)) => {
            let notice = done.notice(&pending, &recent);
            pages::access(&viewer, &pending, &recent, &names, &notice)
        }
        _ => unavailable("the access-request store"),
    }
}

pub async fn access_queue(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let viewer = viewer_or_return!(state, headers);
    match pending_access(&state, &viewer).await {
        Some(pending) => pages::access_queue_fragment(&viewer, &pending),
        None => unavailable("the access-request store"),
    }
}

pub async fn decide_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, verdict)): Path<(String, String)>,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let action = "POST /console/access/ID";
    let (viewer, approve, reason) = match decision(&state, &headers, form, &verdict, action).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match state
        .access
        .decide(&id, &viewer.caller.identity, approve, reason)
        .await
    {
        Ok(row) => back_to("/console/access", &row.id),
        Err(e) => pages::problem(
            decisions::access_error_status(&e),
            "Not decided",
            &e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
pub struct AccessForm {
    #[serde(default)]
    csrf: String,
    connection: String,
    duration: String,
    reason: String,
    #[serde(default)]
    lift_rule: String,
}

impl Posted for AccessForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn request_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<AccessForm>, FormRejection>,
) -> Response {
    let (viewer, form) =
        match posted(&state, &headers, form, Need::Act, "POST /console/access").await {
            Ok(posted) => posted,
            Err(r) => return r,
        };
    let bad = |m: String| pages::problem(StatusCode::BAD_REQUEST, "Bad request", &m);
    if form.reason.chars().count() > decisions::MAX_REASON {
        return bad(format!(
            "the reason is longer than {} characters",
            decisions::MAX_REASON
        ));
    }
    let duration = match humantime::parse_duration(form.duration.trim()) {
        Ok(d) => d,
        Err(e) => return bad(format!("duration {:?}: {e}", form.duration)),
    };
    let ask = AccessAsk {
        connection: form.connection,
        duration,
        reason: form.reason,
        lift_rule: Some(form.lift_rule.trim().to_owned()).filter(|r| !r.is_empty()),
    };
    match state.access.request(&viewer.caller.identity, ask).await {
        Ok(row) => back_to("/console/access", &row.id),
        Err(e) => pages::problem(
            decisions::access_error_status(&e),
            "Not requested",
            &e.to_string(),
        ),
    }
}

pub async fn audit(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let viewer = viewer_or_return!(state, headers);
    if let Some(reason) = Need::ReadAll.refusal(viewer.caller.role) {
        return refuse(&state, &viewer, "GET /console/audit", reason);
    }
    let store = state.store.clone();
    let anchor = tokio::task::spawn_blocking(move || store.audit_anchor())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let (seq, _) = state.audit.head();
    pages::audit(&viewer, &verify::current(&state.console), anchor, seq)
}

pub async fn audit_verify(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let action = "POST /console/audit/verify";
    let viewer = match posted(&state, &headers, form, Need::ReadAll, action).await {
        Ok((viewer, _)) => viewer,
        Err(r) => return r,
    };
    verify::start(
        state.console.clone(),
        state.audit_dir.clone(),
        state.store.clone(),
        viewer.user(),
    );
    see_other("/console/audit")
}

#[derive(Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    session: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// Which records an export takes.
enum Export {
    Session(Box<SessionRow>),
    Range { from_ms: i64, to_ms: i64 },
}

/// `GET /console/audit/export`: the stored records of a session or a time range as JSONL,
/// streamed; each line is exactly as in the log, so its hash still checks.
pub async fn audit_export(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Response {
    let viewer = viewer_or_return!(state, headers);
    const ACTION: &str = "GET /console/audit/export";
    if let Some(reason) = Need::ReadAll.refusal(viewer.caller.role) {
        return refuse(&state, &viewer, ACTION, reason);
    }
    let bad = |m: String| pages::problem(StatusCode::BAD_REQUEST, "Bad request", &m);
    let (export, name) = if !q.session.trim().is_empty() {
        match visible_session(&state, &viewer, q.session.trim(), ACTION).await {
            Ok(row) => {
                let name = format!("sluice-session-{}.jsonl", row.id);
                (Export::Session(Box::new(row)), name)
            }
            Err(r) => return r,
        }
    } else {
        let (from, to) = match (form_time(&q.from), form_time(&q.to)) {
            (Ok(Some(from)), Ok(to)) => (from, to),
            (Ok(None), _) => return bad("give a session id or a start time".into()),
            (Err(e), _) | (_, Err(e)) => return bad(e),
        };
        if to.is_some_and(|to| to <= from) {
            return bad("the end of the range must come after its start".into());
        }
        let name = match to {
            Some(to) => format!("sluice-audit-{from}-{to}.jsonl"),
            None => format!("sluice-audit-{from}-end.jsonl"),
        };
        (
            Export::Range {
                from_ms: from,
                to_ms: to.unwrap_or(i64::MAX),
            },
            name,
        )
    };
    // Exports read the log like searches do: a few at a time. The reader is opened before
    // answering, so a log that cannot be read is a 503, not a 200 with nothing in it.
    let Ok(turn) = state.searches.clone().acquire_owned().await else {
        return unavailable("the audit log");
    };
    let dir = state.audit_dir.clone();
    let start = match &export {
        Export::Session(row) => Some(session_start(row)),
        Export::Range { .. } => None,
    };
    let opened = tokio::task::spawn_blocking(move || match start {
        Some(p) => sluice_audit::read_from(&dir, p),
        None => sluice_audit::read_all(&dir),
    })
    .await;
    let Ok(Ok(records)) = opened else {
        return unavailable("the audit log");
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        export_lines(records.keep_lines(), &export, &tx);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Records are in log order, which is nearly but not exactly time order (an event is
/// stamped before it waits for the log): a range export reads this far past its end.
const RANGE_GRACE_MS: i64 = 60_000;

/// Sends the export's lines in chunks of about 64 KiB; stops when the client leaves.
fn export_lines(
    mut records: sluice_audit::Records,
    export: &Export,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    const CHUNK: usize = 64 * 1024;
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(record) = records.next() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        let (take, done) = match export {
            Export::Session(row) => {
                let mine = record.event.session.as_deref() == Some(row.id.as_str());
                let closed = mine && matches!(record.event.body, EventBody::SessionClose { .. });
                (mine, closed)
            }
            Export::Range { from_ms, to_ms } => {
                let ms = unix_ms(record.event.time);
                (
                    ms >= *from_ms && ms < *to_ms,
                    ms >= to_ms.saturating_add(RANGE_GRACE_MS),
                )
            }
        };
        if take {
            chunk.extend_from_slice(records.last_line());
            chunk.push(b'\n');
        }
        let full = chunk.len() >= CHUNK || (done && !chunk.is_empty());
        if full && tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
            return;
        }
        if done {
            return;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
}

/// How long ago, for the pages ("3 s", "2 min").
pub fn ago(ms: i64) -> String {
    let now = unix_ms(SystemTime::now());
    let secs = Duration::from_millis((now - ms).max(0) as u64).as_secs();
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}
