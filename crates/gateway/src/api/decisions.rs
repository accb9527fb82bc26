//! The review and access-request routes: list, show, approve and deny (and ask for access),
//! each as the holder of the bearer token. Both resources share the plumbing here; what a
//! decision means lives in `crate::reviews` and `crate::access`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_store::{AccessRow, ReviewRow};

use super::{authorize, deny, ApiState, Caller, Need};
use crate::access::{AccessAsk, AccessError};
use crate::reviews::ReviewError;
use crate::views::{access_json, review_json};

/// Longest reason accepted with a decision or an access request.
pub(crate) const MAX_REASON: usize = 2000;

/// Review and access-request statuses a list may be filtered by.
const STATUSES: &[&str] = &[
    "pending",
    "approved",
    "denied",
    "expired",
    "withdrawn",
    "used",
];

#[derive(Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

impl ListQuery {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(100).min(1000)
    }
}

/// A decision's body; optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionBody {
    reason: Option<String>,
}

/// An access request as a client sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccessBody {
    connection: String,
    /// `30m`, `2h`, …
    duration: String,
    reason: String,
    #[serde(default)]
    lift_rule: Option<String>,
}

/// An error a route answers with its own status and `{"error": …}`.
trait ApiError: std::fmt::Display {
    fn status(&self) -> StatusCode;
}

impl ApiError for ReviewError {
    fn status(&self) -> StatusCode {
        match self {
            ReviewError::NotFound(_) => StatusCode::NOT_FOUND,
            ReviewError::NotAReviewer { .. } | ReviewError::SelfApproval(_) => {
                StatusCode::FORBIDDEN
            }
            ReviewError::NotPending { .. } | ReviewError::AlreadyApproved(_) => {
                StatusCode::CONFLICT
            }
            ReviewError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl ApiError for AccessError {
    fn status(&self) -> StatusCode {
        match self {
            AccessError::NotFound(_) => StatusCode::NOT_FOUND,
            AccessError::Invalid(_) => StatusCode::BAD_REQUEST,
            AccessError::NotAReviewer { .. } | AccessError::SelfApproval(_) => {
                StatusCode::FORBIDDEN
            }
            AccessError::NotPending { .. } => StatusCode::CONFLICT,
            AccessError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `result` as a response: its view with `ok`, or its error.
fn respond<T, E: ApiError>(
    result: Result<T, E>,
    ok: StatusCode,
    view: fn(&T) -> Value,
) -> Response {
    match result {
        Ok(value) => (ok, Json(view(&value))).into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

fn review_list(rows: &[ReviewRow]) -> Value {
    Value::Array(rows.iter().map(review_json).collect())
}

fn access_list(rows: &[AccessRow]) -> Value {
    Value::Array(rows.iter().map(access_json).collect())
}

/// Who calls, once the token and the inputs every route takes (a status filter, a reason)
/// are checked.
async fn caller(
    state: &ApiState,
    headers: &HeaderMap,
    (need, action): (Need, &str),
    status: Option<&str>,
    reason: Option<&str>,
) -> Result<Caller, Response> {
    let who = authorize(state, headers, need, action).await?;
    if let Some(status) = status.filter(|s| !STATUSES.contains(s)) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown status {status:?} (one of {})", STATUSES.join(", ")),
        ));
    }
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("the reason is longer than {MAX_REASON} characters"),
        ));
    }
    Ok(who)
}

fn reason(body: Option<Json<DecisionBody>>) -> Option<String> {
    body.and_then(|Json(b)| b.reason)
}

pub(super) async fn list_reviews(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let who = match caller(
        &state,
        &headers,
        (Need::Any, "GET /api/v1/reviews"),
        q.status.as_deref(),
        None,
    )
    .await
    {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let rows = state.reviews.list(q.status.clone(), q.limit()).await;
    // A user sees the reviews they asked for or may decide.
    let rows = rows.map(|rows| {
        rows.into_iter()
            .filter(|r| sees_review(&who, r))
            .collect::<Vec<_>>()
    });
    respond(rows, StatusCode::OK, |rows: &Vec<ReviewRow>| {
        review_list(rows)
    })
}

pub(super) async fn show_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let action = "GET /api/v1/reviews/ID";
    let who = match caller(&state, &headers, (Need::Any, action), None, None).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    match state.reviews.get(&id).await {
        Ok(row) if !sees_review(&who, &row) => deny(
            &state,
            &who,
            action,
            "users see only reviews they asked for or may decide",
        ),
        found => respond(found, StatusCode::OK, review_json),
    }
}

async fn decide_review(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    reason: Option<String>,
    approve: bool,
) -> Response {
    let action = if approve {
        "POST /api/v1/reviews/ID/approve"
    } else {
        "POST /api/v1/reviews/ID/deny"
    };
    let who = match caller(
        &state,
        &headers,
        (Need::Act, action),
        None,
        reason.as_deref(),
    )
    .await
    {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let decided = if approve {
        state.reviews.approve(&id, &who.identity, reason).await
    } else {
        state.reviews.deny(&id, &who.identity, reason).await
    };
    respond(decided, StatusCode::OK, review_json)
}

pub(super) async fn approve_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_review(state, headers, id, reason(body), true).await
}

pub(super) async fn deny_review(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_review(state, headers, id, reason(body), false).await
}

pub(super) async fn request_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<AccessBody>, JsonRejection>,
) -> Response {
    // A malformed body gets the API's JSON error too, not the framework's plain text.
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let who = match caller(
        &state,
        &headers,
        (Need::Act, "POST /api/v1/access-requests"),
        None,
        Some(&body.reason),
    )
    .await
    {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let duration = match humantime::parse_duration(&body.duration) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("duration {:?}: {e}", body.duration),
            )
        }
    };
    let ask = AccessAsk {
        connection: body.connection,
        duration,
        reason: body.reason,
        lift_rule: body.lift_rule,
    };
    respond(
        state.access.request(&who.identity, ask).await,
        StatusCode::CREATED,
        access_json,
    )
}

pub(super) async fn list_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let who = match caller(
        &state,
        &headers,
        (Need::Any, "GET /api/v1/access-requests"),
        q.status.as_deref(),
        None,
    )
    .await
    {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let rows = state.access.list(q.status.clone(), q.limit()).await;
    let rows = rows.map(|rows| {
        rows.into_iter()
            .filter(|r| sees_access(&state, &who, r))
            .collect::<Vec<_>>()
    });
    respond(rows, StatusCode::OK, |rows: &Vec<AccessRow>| {
        access_list(rows)
    })
}

pub(super) async fn show_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let action = "GET /api/v1/access-requests/ID";
    let who = match caller(&state, &headers, (Need::Any, action), None, None).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    match state.access.get(&id).await {
        Ok(row) if !sees_access(&state, &who, &row) => deny(
            &state,
            &who,
            action,
            "users see only access requests they made or may decide",
        ),
        found => respond(found, StatusCode::OK, access_json),
    }
}

async fn decide_access(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    reason: Option<String>,
    approve: bool,
) -> Response {
    let action = if approve {
        "POST /api/v1/access-requests/ID/approve"
    } else {
        "POST /api/v1/access-requests/ID/deny"
    };
    let who = match caller(
        &state,
        &headers,
        (Need::Act, action),
        None,
        reason.as_deref(),
    )
    .await
    {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let decided = state
        .access
        .decide(&id, &who.identity, approve, reason)
        .await;
    respond(decided, StatusCode::OK, access_json)
}

pub(super) async fn approve_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_access(state, headers, id, reason(body), true).await
}

pub(super) async fn deny_access(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    decide_access(state, headers, id, reason(body), false).await
}

pub(crate) fn sees_review(who: &Caller, review: &ReviewRow) -> bool {
    who.role.reads_everything()
        || review.requester == who.identity.user
        || crate::reviews::is_reviewer(review, &who.identity)
}

pub(crate) fn sees_access(state: &ApiState, who: &Caller, row: &AccessRow) -> bool {
    who.role.reads_everything()
        || row.requester == who.identity.user
        || state.access.may_decide(&row.connection, &who.identity)
}

/// The HTTP status a review error is answered with (the console's too).
pub(crate) fn review_error_status(e: &ReviewError) -> StatusCode {
    e.status()
}

/// The HTTP status an access-request error is answered with (the console's too).
pub(crate) fn access_error_status(e: &AccessError) -> StatusCode {
    e.status()
}
