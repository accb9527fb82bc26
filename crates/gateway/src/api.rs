//! The HTTP API on `listen.api`. Every route except `/healthz` needs a sluice token
//! (`Authorization: Bearer …`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sluice_audit::AuditWriter;
use sluice_auth::Tokens;
use sluice_core::Identity;
use sluice_store::{SessionFilter, Store};

use crate::access::{Access, AccessAsk, AccessError};
use crate::metrics::Metrics;
use crate::reviews::{ReviewError, Reviews};
use crate::views::{access_json, review_json, SessionSummary};

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub audit: AuditWriter,
    pub reviews: Arc<Reviews>,
    pub access: Arc<Access>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/reviews", get(list_reviews))
        .route("/api/v1/reviews/{id}", get(show_review))
        .route("/api/v1/reviews/{id}/approve", post(approve_review))
        .route("/api/v1/reviews/{id}/deny", post(deny_review))
        .route(
            "/api/v1/access-requests",
            get(list_access).post(request_access),
        )
        .route("/api/v1/access-requests/{id}", get(show_access))
        .route("/api/v1/access-requests/{id}/approve", post(approve_access))
        .route("/api/v1/access-requests/{id}/deny", post(deny_access))
        .with_state(state)
}

/// Checks the bearer token and returns whose it is; the error response never echoes it.
async fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<Identity, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return Err(unauthorized("missing bearer token"));
    };
    let tokens = state.tokens.clone();
    match tokio::task::spawn_blocking(move || tokens.verify(&token, SystemTime::now())).await {
        Ok(Ok(verified)) => Ok(verified.identity),
        _ => Err(unauthorized("invalid or expired token")),
    }
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers).await {
        return r;
    }
    let (seq, _) = state.audit.head();
    state.metrics.audit_events.set(seq as i64);
    state.metrics.audit_syncs.set(state.audit.syncs() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SessionQuery {
    user: Option<String>,
    connection: Option<String>,
    limit: Option<u32>,
}

async fn sessions(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers).await {
        return r;
    }
    let filter = SessionFilter {
        user: q.user,
        connection: q.connection,
        limit: q.limit.unwrap_or(100).min(1000),
        ..SessionFilter::default()
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.list_sessions(&filter)).await {
        Ok(Ok(rows)) => {
            Json(rows.iter().map(SessionSummary::from).collect::<Vec<_>>()).into_response()
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "metadata store unavailable" })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ReviewQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// Longest reason accepted with a decision or an access request.
const MAX_REASON: usize = 2000;

/// Review and access-request statuses a list may be filtered by.
const STATUSES: &[&str] = &[
    "pending",
    "approved",
    "denied",
    "expired",
    "withdrawn",
    "used",
];

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The refusal of an unknown status filter or an overlong reason, if either is given.
fn bad_input(status: Option<&str>, reason: Option<&str>) -> Option<Response> {
    if let Some(status) = status.filter(|s| !STATUSES.contains(s)) {
        return Some(bad_request(format!(
            "unknown status {status:?} (one of {})",
            STATUSES.join(", ")
        )));
    }
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON) {
        return Some(bad_request(format!(
            "the reason is longer than {MAX_REASON} characters"
        )));
    }
    None
}

/// A reviewer's decision; the body is optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
}

fn review_error(e: &ReviewError) -> Response {
    let status = match e {
        ReviewError::NotFound(_) => StatusCode::NOT_FOUND,
        ReviewError::NotAReviewer { .. } | ReviewError::SelfApproval(_) => StatusCode::FORBIDDEN,
        ReviewError::NotPending { .. } | ReviewError::AlreadyApproved(_) => StatusCode::CONFLICT,
        ReviewError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn list_reviews(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ReviewQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers).await {
        return r;
    }
    if let Some(refusal) = bad_input(q.status.as_deref(), None) {
        return refusal;
    }
    match state
        .reviews
        .list(q.status, q.limit.unwrap_or(100).min(1000))
        .await
    {
        Ok(rows) => Json(rows.iter().map(review_json).collect::<Vec<_>>()).into_response(),
        Err(e) => review_error(&e),
    }
}

async fn show_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers).await {
        return r;
    }
    match state.reviews.get(&id).await {
        Ok(row) => Json(review_json(&row)).into_response(),
        Err(e) => review_error(&e),
    }
}

/// A reviewer's decision on review `id`, made as the token's holder.
async fn decide_review(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    body: Option<Json<DecisionBody>>,
    approve: bool,
) -> Response {
    let who = match authorize(&state, &headers).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let reason = body.and_then(|Json(b)| b.reason);
    if let Some(refusal) = bad_input(None, reason.as_deref()) {
        return refusal;
    }
    let decided = if approve {
        state.reviews.approve(&id, &who, reason).await
    } else {
        state.reviews.deny(&id, &who, reason).await
    };
    match decided {
        Ok(row) => Json(review_json(&row)).into_response(),
        Err(e) => review_error(&e),
    }
}

async fn approve_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_review(state, headers, id, body, true).await
}

async fn deny_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_review(state, headers, id, body, false).await
}

fn access_error(e: &AccessError) -> Response {
    let status = match e {
        AccessError::NotFound(_) => StatusCode::NOT_FOUND,
        AccessError::Invalid(_) => StatusCode::BAD_REQUEST,
        AccessError::NotAReviewer { .. } | AccessError::SelfApproval(_) => StatusCode::FORBIDDEN,
        AccessError::NotPending { .. } => StatusCode::CONFLICT,
        AccessError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

/// An access request as a client sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    connection: String,
    /// `30m`, `2h`, …
    duration: String,
    reason: String,
    #[serde(default)]
    lift_rule: Option<String>,
}

async fn request_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<AccessBody>,
) -> Response {
    let who = match authorize(&state, &headers).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    if let Some(refusal) = bad_input(None, Some(&body.reason)) {
        return refusal;
    }
    let duration = match humantime::parse_duration(&body.duration) {
        Ok(d) => d,
        Err(e) => {
            return access_error(&AccessError::Invalid(format!(
                "duration {:?}: {e}",
                body.duration
            )))
        }
    };
    let ask = AccessAsk {
        connection: body.connection,
        duration,
        reason: body.reason,
        lift_rule: body.lift_rule,
    };
    match state.access.request(&who, ask).await {
        Ok(row) => (StatusCode::CREATED, Json(access_json(&row))).into_response(),
        Err(e) => access_error(&e),
    }
}

async fn list_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ReviewQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers).await {
        return r;
    }
    if let Some(refusal) = bad_input(q.status.as_deref(), None) {
        return refusal;
    }
    match state
        .access
        .list(q.status, q.limit.unwrap_or(100).min(1000))
        .await
    {
        Ok(rows) => Json(rows.iter().map(access_json).collect::<Vec<_>>()).into_response(),
        Err(e) => access_error(&e),
    }
}

async fn show_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers).await {
        return r;
    }
    match state.access.get(&id).await {
        Ok(row) => Json(access_json(&row)).into_response(),
        Err(e) => access_error(&e),
    }
}

async fn decide_access(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    body: Option<Json<DecisionBody>>,
    approve: bool,
) -> Response {
    let who = match authorize(&state, &headers).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let reason = body.and_then(|Json(b)| b.reason);
    if let Some(refusal) = bad_input(None, reason.as_deref()) {
        return refusal;
    }
    match state.access.decide(&id, &who, approve, reason).await {
        Ok(row) => Json(access_json(&row)).into_response(),
        Err(e) => access_error(&e),
    }
}

async fn approve_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_access(state, headers, id, body, true).await
}

async fn deny_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_access(state, headers, id, body, false).await
}
