//! Who may use `/mcp`: every request carries a sluice token (or a service account's key)
//! of a role that may act, and an MCP session id is honoured only for the user who opened
//! the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::McpCaller;
use crate::api::{authorize, ApiState, Need};

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

/// The MCP streamable-HTTP session header (the server and `sluice mcp` alike).
pub(crate) const SESSION_HEADER: &str = "mcp-session-id";

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
