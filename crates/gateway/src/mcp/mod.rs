//! The Model Context Protocol endpoint (`/mcp`, streamable HTTP, rmcp): tools that let an
//! AI agent list and describe connections, run SQL and follow a review — each query a
//! session through the PostgreSQL frontend in this process, so policy, review, masking and
//! audit apply exactly as for psql. The tool call's context (client, conversation, tool
//! call, prompt, trace) goes with the session onto every statement it runs.

mod auth;
mod tools;

pub(crate) use auth::SESSION_HEADER;
pub use auth::{authenticate, McpAuth};

use std::sync::Arc;

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
use crate::api::ConnectionView;
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
