//! The HTTP API on `listen.api`. Every route except `/healthz` needs a sluice token
//! (`Authorization: Bearer …`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sluice_audit::AuditWriter;
use sluice_auth::Tokens;
use sluice_store::{SessionFilter, Store};

use crate::metrics::Metrics;
use crate::views::SessionSummary;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub audit: AuditWriter,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/sessions", get(sessions))
        .with_state(state)
}

/// Checks the bearer token; the error response never echoes it.
async fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), Response> {
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
        Ok(Ok(_)) => Ok(()),
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
