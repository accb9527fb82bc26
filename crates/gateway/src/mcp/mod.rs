//! The Model Context Protocol endpoint (`/mcp`, streamable HTTP, rmcp): tools that let an
//! AI agent list and describe connections, run SQL and follow a review — each query a
//! session through the PostgreSQL frontend in this process, so policy, review, masking and
//! audit apply exactly as for psql. The tool call's context (client, conversation, tool
//! call, prompt, trace) goes with the session onto every statement it runs.

mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use sha2::{Digest, Sha256};
use sluice_core::{AgentContext, Identity};
use sluice_mask::Masking;
use sluice_postgres::Frontend;
use sluice_store::Store;
use tokio_util::sync::CancellationToken;

use crate::agents::Connectors;
use crate::api::{authorize, ApiState, ConnectionView, Need};
use crate::pipeline::GatewayPipeline;

/// What the tools need from the gateway.
pub struct McpDeps {
    pub frontend: Arc<Frontend<GatewayPipeline, Connectors>>,
    pub connections: Arc<Vec<ConnectionView>>,
    pub masking: Option<Arc<Masking>>,
    pub store: Arc<Store>,
}

/// The caller of one `/mcp` request, established by [`authenticate`] before rmcp sees it.
#[derive(Clone)]
pub struct McpCaller {
    pub identity: Identity,
    /// The HTTP client's address, recorded as the session's `mcp:ADDR`.
    pub addr: String,
    /// The caller's own token, presented again to open each query's session.
    token: Arc<str>,
    /// Cancelled when the client withdraws the call (MCP `notifications/cancelled`): its
    /// statement is then cancelled in the target.
    pub stop: CancellationToken,
}

impl std::fmt::Debug for McpCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpCaller")
            .field("user", &self.identity.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The `/mcp` service: a fresh handler per MCP session, all sharing `deps`.
pub fn service(
    deps: Arc<McpDeps>,
    allowed_hosts: Vec<String>,
) -> StreamableHttpService<SluiceMcp, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts)
        // Agents are programs, not web pages: any request a browser marks with an Origin
        // is refused, so no page can drive the endpoint with a user's token.
        .enforce_origin_validation();
    StreamableHttpService::new(
        move || Ok(SluiceMcp { deps: deps.clone() }),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Most MCP sessions remembered at once, and per user; past that the least recently used
/// is forgotten (its client then has to initialize again). One unused for longer than
/// `SESSION_IDLE` is forgotten too (rmcp ends idle sessions sooner).
const MAX_SESSIONS: usize = 10_000;
const MAX_SESSIONS_PER_USER: usize = 100;
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Which user opened each MCP session: a session id is not a credential, so a request
/// naming another user's session is answered as if the session did not exist.
#[derive(Default)]
pub struct SessionOwners {
    owners: Mutex<HashMap<String, (String, Instant)>>,
}

impl SessionOwners {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `user` opened `session`; using it counts as activity.
    fn owned_by(&self, session: &str, user: &str) -> bool {
        match self.lock().get_mut(session) {
            Some((owner, used)) if owner == user => {
                *used = Instant::now();
                true
            }
            _ => false,
        }
    }

    fn insert(&self, session: String, user: String) {
        let mut owners = self.lock();
        let now = Instant::now();
        owners.retain(|_, (_, used)| now.duration_since(*used) < SESSION_IDLE);
        let theirs = owners.values().filter(|(owner, _)| *owner == user).count();
        // A user's sessions make room among their own; only a full table takes from all.
        let evict_from = if theirs >= MAX_SESSIONS_PER_USER {
            Some(user.clone())
        } else if owners.len() >= MAX_SESSIONS {
            None
        } else {
            owners.insert(session, (user, now));
            return;
        };
        let lru = owners
            .iter()
            .filter(|(_, (owner, _))| evict_from.as_ref().is_none_or(|u| owner == u))
            .min_by_key(|(_, (_, used))| *used)
            .map(|(id, _)| id.clone());
        if let Some(lru) = lru {
            owners.remove(&lru);
        }
        owners.insert(session, (user, now));
    }

    fn remove(&self, session: &str) {
        self.lock().remove(session);
    }
}

/// What the `/mcp` middleware needs.
#[derive(Clone)]
pub struct McpAuth {
    pub api: ApiState,
    pub owners: Arc<SessionOwners>,
}

const SESSION_HEADER: &str = "mcp-session-id";

/// Middleware: every `/mcp` request carries a sluice token (or service-account key) of a
/// role that may act, and names only an MCP session its own user opened; the identity
/// rides in the request's extensions to the tools.
pub async fn authenticate(
    State(auth): State<McpAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    let action = format!("{} /mcp", request.method());
    let caller = match authorize(&auth.api, request.headers(), Need::Act, &action).await {
        Ok(c) => c,
        Err(refusal) => return refusal,
    };
    let Some(token) = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(Arc::<str>::from)
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let user = caller.identity.user.clone();
    if let Some(id) = &session {
        if !auth.owners.owned_by(id, &user) {
            return (StatusCode::NOT_FOUND, "no such MCP session\n").into_response();
        }
    }
    let ending = request.method() == axum::http::Method::DELETE;
    let addr = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    request.extensions_mut().insert(McpCaller {
        identity: caller.identity,
        addr,
        token,
        stop: CancellationToken::new(),
    });
    let mut response = next.run(request).await;
    // rmcp answers a session's end with 202; clients expect the 204 of a DELETE done.
    if ending && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    match (&session, response.headers().get(SESSION_HEADER)) {
        (None, Some(new)) => {
            if let Ok(new) = new.to_str() {
                auth.owners.insert(new.to_owned(), user);
            }
        }
        (Some(id), _) if ending && response.status().is_success() => auth.owners.remove(id),
        _ => {}
    }
    response
}

#[derive(Clone)]
pub struct SluiceMcp {
    deps: Arc<McpDeps>,
}

impl ServerHandler for SluiceMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sluice", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "sluice is the access gateway in front of these databases. Every query runs \
                 under your identity, is checked against policy, may be held for a human's \
                 review (you get a review id: poll review_status, then run the same query \
                 again once approved), has sensitive values masked, and is audited together \
                 with the prompt you pass in `prompt`.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let Some(mut caller) = parts.and_then(|p| p.extensions.get::<McpCaller>()).cloned() else {
            return Err(ErrorData::invalid_request("not authenticated", None));
        };
        caller.stop = context.ct.clone();
        let agent_context = call_context(&request, &context, parts);
        let args = request.arguments.unwrap_or_default();
        let result = tools::call(&self.deps, &caller, &request.name, args, agent_context).await;
        Ok(result.into())
    }
}

/// What the MCP exchange tells about this call: the client from the handshake, the MCP
/// session as the conversation (unless `_meta` names one), the JSON-RPC id as the tool
/// call (unless `_meta` names one), `_meta` keys (`prompt`, `traceparent`, …, also
/// namespaced as `sluice/prompt`), and a `traceparent` HTTP header.
fn call_context(
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
    parts: Option<&axum::http::request::Parts>,
) -> AgentContext {
    let mut ctx = AgentContext::default();
    if let Some(peer) = context.peer.peer_info() {
        ctx.set("client", &peer.client_info.name);
        ctx.set("client_version", &peer.client_info.version);
    }
    let header = |name: &str| {
        parts
            .and_then(|p| p.headers.get(name))
            .and_then(|v| v.to_str().ok())
    };
    // The MCP session, by a digest: its id is the client's handle on the session and is
    // not written down.
    if let Some(session) = header(SESSION_HEADER) {
        let digest = Sha256::digest(session.as_bytes());
        ctx.conversation = Some(format!("mcp-{}", hex::encode(&digest[..8])));
    }
    if let Some(tp) = header("traceparent") {
        ctx.set("traceparent", tp);
    }
    let id = match &context.id {
        rmcp::model::NumberOrString::Number(n) => n.to_string(),
        rmcp::model::NumberOrString::String(s) => s.to_string(),
    };
    ctx.set("tool_call", &id);
    let meta = request.meta.iter().flat_map(|m| m.0 .0.iter());
    for (key, value) in meta.chain(context.meta.0 .0.iter()) {
        let key = key.rsplit('/').next().unwrap_or(key);
        match (key, value) {
            ("progressToken", _) => {}
            // Sessionless protocol versions carry the client on every request instead of
            // in a handshake.
            ("clientInfo", serde_json::Value::Object(info)) => {
                for (field, as_key) in [("name", "client"), ("version", "client_version")] {
                    if let Some(text) = info.get(field).and_then(|v| v.as_str()) {
                        ctx.set(as_key, text);
                    }
                }
            }
            (key, value) => {
                if let Some(text) = value.as_str() {
                    ctx.set(key, text);
                }
            }
        }
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_belong_to_their_user_and_one_user_evicts_only_their_own() {
        let owners = SessionOwners::default();
        owners.insert("a-1".into(), "alice".into());
        assert!(owners.owned_by("a-1", "alice"));
        assert!(!owners.owned_by("a-1", "mallory"));
        assert!(!owners.owned_by("nope", "alice"));
        for i in 0..=MAX_SESSIONS_PER_USER {
            owners.insert(format!("m-{i}"), "mallory".into());
        }
        assert!(owners.owned_by("a-1", "alice"), "alice keeps her session");
        let mallorys = owners
            .lock()
            .values()
            .filter(|(owner, _)| owner == "mallory")
            .count();
        assert_eq!(mallorys, MAX_SESSIONS_PER_USER, "one of hers made room");
        assert!(owners.owned_by(&format!("m-{MAX_SESSIONS_PER_USER}"), "mallory"));
        owners.remove("a-1");
        assert!(!owners.owned_by("a-1", "alice"));
    }
}
