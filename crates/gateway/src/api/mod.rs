//! The HTTP API on `listen.api`. Every route except `/healthz` needs a sluice token
//! (`Authorization: Bearer …`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sluice_audit::AuditWriter;
use sluice_auth::Tokens;
use sluice_core::Identity;
use sluice_store::{SessionFilter, Store};

use crate::access::Access;
use crate::metrics::Metrics;
use crate::reviews::Reviews;
use crate::views::SessionSummary;

mod decisions;

use decisions::{
    approve_access, approve_review, deny_access, deny_review, list_access, list_reviews,
    request_access, show_access, show_review,
};

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
pub(crate) async fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<Identity, Response> {
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
