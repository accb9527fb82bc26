//! The HTTP API on `listen.api`. Every route except `/healthz` and the sign-in routes
//! under `/auth/` needs a sluice token (`Authorization: Bearer …`), and each checks the
//! caller's role:
//!
//! | route | user | auditor | admin |
//! |---|---|---|---|
//! | `GET /api/v1/whoami`, `GET /api/v1/connections` | yes | yes | yes |
//! | `GET /api/v1/sessions` | own sessions | all | all |
//! | `GET /api/v1/reviews[/ID]`, `GET /api/v1/access-requests[/ID]` | asked by them or theirs to decide | all | all |
//! | approve / deny, `POST /api/v1/access-requests` | as the rules allow | no | as the rules allow |
//! | `GET /metrics` | no | yes | yes |
//!
//! A refusal is answered 403 and recorded as a `denied` audit event.

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
use sluice_core::{Identity, Principal, Role};
use sluice_store::{SessionFilter, Store};

use crate::access::Access;
use crate::metrics::Metrics;
use crate::reviews::Reviews;
use crate::signin::{routes as signin, SignIn};
use crate::views::SessionSummary;

pub(crate) mod aws_keys;
pub(crate) mod decisions;

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
    pub signin: Arc<SignIn>,
    pub connections: Arc<Vec<ConnectionView>>,
    /// Where the audit log lives, for statement search.
    pub audit_dir: std::path::PathBuf,
    /// Statement searches read the whole log: two at a time, the rest wait their turn.
    pub searches: Arc<tokio::sync::Semaphore>,
    pub console: Arc<crate::console::ConsoleState>,
    /// Seals the secrets of AWS keys issued through the API.
    pub sealer: Arc<sluice_auth::Sealer>,
}

/// A connection as `/api/v1/connections` shows it.
pub struct ConnectionView {
    pub name: String,
    pub kind: &'static str,
    pub agent: String,
    /// Who may open sessions (`None`: every authenticated user).
    pub allow: Option<Vec<Principal>>,
    pub requires_access_request: bool,
    /// Where clients connect (the gateway's listener for this kind).
    pub listen: String,
}

impl ConnectionView {
    /// Whether `caller` may open sessions on this connection (an access request may still
    /// be needed).
    pub(crate) fn allows(&self, caller: &Caller) -> bool {
        caller.role.acts() && self.admits(&caller.identity)
    }

    /// Whether the connection's `allow:` list (if any) covers `who`.
    pub(crate) fn admits(&self, who: &Identity) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|list| list.iter().any(|p| p.covers(who)))
    }
}

/// Who is calling, with their role.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub identity: Identity,
    pub role: Role,
}

/// What a route needs of the caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Any role (the route itself narrows what a `user` sees).
    Any,
    /// Reading everything: auditors and admins.
    ReadAll,
    /// Acting (sessions, requests, decisions): users and admins.
    Act,
}

impl Need {
    /// Why `role` may not do what needs this, or `None` when it may.
    pub(crate) fn refusal(self, role: Role) -> Option<&'static str> {
        match self {
            Need::Any => None,
            Need::ReadAll => (!role.reads_everything()).then_some("needs role auditor or admin"),
            Need::Act => (!role.acts()).then_some("auditors can read but not act"),
        }
    }
}

pub fn router(
    state: ApiState,
    mcp: rmcp::transport::streamable_http_server::StreamableHttpService<
        crate::mcp::SluiceMcp,
        rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
    >,
) -> Router {
    let mcp_auth = crate::mcp::McpAuth {
        api: state.clone(),
        owners: Arc::default(),
    };
    let mcp = Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(
            mcp_auth,
            crate::mcp::authenticate,
        ));
    Router::new()
        .nest("/mcp", mcp)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/auth/password", post(signin::password))
        .route("/auth/oidc/start", get(signin::oidc_start))
        .route("/auth/oidc/callback", get(signin::oidc_callback))
        .route("/auth/cli/exchange", post(signin::cli_exchange))
        .route("/auth/device", post(signin::device_start))
        .route("/auth/device/poll", post(signin::device_poll))
        .route("/auth/refresh", post(signin::refresh))
        .route("/auth/workload", post(signin::workload))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/statements", get(search_statements))
        .route(
            "/api/v1/aws-keys",
            get(aws_keys::list).post(aws_keys::issue),
        )
        .route(
            "/api/v1/aws-keys/{id}",
            axum::routing::delete(aws_keys::revoke),
        )
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
        .merge(crate::console::router(state.clone()))
        .with_state(state)
}

/// Checks the bearer token and the caller's role for `action` (e.g. `GET /metrics`);
/// the error response never echoes the token. A role refusal is audited.
pub(crate) async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    need: Need,
    action: &str,
) -> Result<Caller, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return Err(unauthorized("missing bearer token"));
    };
    let tokens = state.tokens.clone();
    let caller =
        match tokio::task::spawn_blocking(move || tokens.verify(&token, SystemTime::now())).await {
            Ok(Ok(verified)) => Caller {
                identity: verified.identity,
                role: verified.role,
            },
            _ => return Err(unauthorized("invalid or expired token")),
        };
    if let Some(reason) = need.refusal(caller.role) {
        return Err(deny(state, &caller, action, reason));
    }
    Ok(caller)
}

/// Records and answers a refusal of an authenticated caller.
pub(crate) fn deny(state: &ApiState, caller: &Caller, action: &str, reason: &str) -> Response {
    record_denied(state, caller, action, reason);
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({
            "error": format!("{action}: {reason} (you are {}, role {})", caller.identity.user, caller.role.as_str())
        })),
    )
        .into_response()
}

/// Records a refusal of an authenticated caller as a `denied` event.
pub(crate) fn record_denied(state: &ApiState, caller: &Caller, action: &str, reason: &str) {
    state.audit.append(sluice_audit::Event::now(
        None,
        sluice_audit::EventBody::Denied {
            user: caller.identity.user.clone(),
            actor: caller.identity.actor.as_str().into(),
            role: caller.role.as_str().into(),
            action: action.into(),
            reason: reason.into(),
        },
    ));
}

async fn whoami(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    match authorize(&state, &headers, Need::Any, "GET /api/v1/whoami").await {
        Ok(c) => Json(serde_json::json!({
            "user": c.identity.user,
            "groups": c.identity.groups,
            "actor": c.identity.actor.as_str(),
            "role": c.role.as_str(),
        }))
        .into_response(),
        Err(r) => r,
    }
}

/// The connections, each with whether the caller may open sessions on it.
async fn connections(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match authorize(&state, &headers, Need::Any, "GET /api/v1/connections").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let list: Vec<_> = state
        .connections
        .iter()
        .map(|c| {
            let allowed = c.allows(&caller);
            serde_json::json!({
                "name": c.name,
                "kind": c.kind,
                "agent": c.agent,
                "listen": c.listen,
                "allowed": allowed,
                "requires_access_request": c.requires_access_request,
            })
        })
        .collect();
    Json(list).into_response()
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
    if let Err(r) = authorize(&state, &headers, Need::ReadAll, "GET /metrics").await {
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

#[derive(serde::Deserialize)]
struct StatementQuery {
    prompt: Option<String>,
    tool_call: Option<String>,
    trace: Option<String>,
    conversation: Option<String>,
    statement: Option<String>,
    user: Option<String>,
    connection: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/statements`: statements by the agent context behind them or their text
/// (`sluice sessions search` over the API). Users find their own statements only.
async fn search_statements(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<StatementQuery>,
) -> Response {
    const ACTION: &str = "GET /api/v1/statements";
    let caller = match authorize(&state, &headers, Need::Any, ACTION).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(user) = own_scope(&caller, q.user) else {
        return others_records(&state, &caller, ACTION);
    };
    let filter = crate::views::SearchFilter {
        prompt: q.prompt,
        tool_call: q.tool_call,
        trace: q.trace,
        statement: q.statement,
        conversation: q.conversation,
        user,
        connection: q.connection,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let dir = state.audit_dir.clone();
    let Ok(_turn) = state.searches.clone().acquire_owned().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match tokio::task::spawn_blocking(move || crate::views::search(&dir, &filter)).await {
        Ok(Ok(hits)) => Json(hits).into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "audit log unavailable" })),
        )
            .into_response(),
    }
}

/// Whose records a caller may read: auditors and admins anyone's (`requested`, or all),
/// users their own only; `None` when a user asks for someone else's.
fn own_scope(caller: &Caller, requested: Option<String>) -> Option<Option<String>> {
    if caller.role.reads_everything() {
        return Some(requested);
    }
    if requested.is_some_and(|u| u != caller.identity.user) {
        return None;
    }
    Some(Some(caller.identity.user.clone()))
}

/// The refusal of a user asking for someone else's records, recorded.
fn others_records(state: &ApiState, caller: &Caller, action: &str) -> Response {
    deny(state, caller, action, "users see only their own records")
}

async fn sessions(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    let caller = match authorize(&state, &headers, Need::Any, "GET /api/v1/sessions").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(user) = own_scope(&caller, q.user) else {
        return others_records(&state, &caller, "GET /api/v1/sessions");
    };
    let filter = SessionFilter {
        user,
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
