//! The web console under `/console` on `listen.api`: server-rendered pages (maud escapes
//! every value it prints), one small script and one stylesheet embedded in the binary,
//! no front-end server. People sign in with a password or the identity provider; the
//! session is a sign-in token in an HttpOnly cookie, every state change carries a CSRF
//! token bound to it, and every page is served under a strict Content-Security-Policy.
//!
//! What each role sees is what the API shows it: users their own sessions and the reviews
//! and access requests they asked for or may decide; auditors everything, read-only;
//! admins everything.

mod assets;
mod auth;
mod pages;
mod routes;
mod verify;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;

use crate::api::ApiState;

pub use auth::signed_in_by_provider;
pub use verify::VerifyStatus;

/// What the console keeps beyond the API's state.
pub struct ConsoleState {
    /// Keys the CSRF tokens (`data_dir/console.key`, so open pages survive a restart).
    csrf_key: [u8; 32],
    /// Host names the console answers to (loopback, the listener's address, the public
    /// URL's host): a page on another name that resolves here (DNS rebinding) gets nothing.
    hosts: Vec<String>,
    verify: std::sync::Mutex<VerifyStatus>,
}

impl ConsoleState {
    pub fn new(csrf_key: [u8; 32], hosts: Vec<String>) -> Arc<ConsoleState> {
        Arc::new(ConsoleState {
            csrf_key,
            hosts,
            verify: std::sync::Mutex::new(VerifyStatus::default()),
        })
    }
}

/// Every console page and fragment; the headers every answer carries are added here.
pub fn router(state: ApiState) -> Router<ApiState> {
    Router::new()
        .route("/console", get(routes::home))
        .route("/console/", get(routes::home))
        .route(
            "/console/login",
            get(routes::login_page).post(routes::login),
        )
        .route("/console/login/oidc", get(routes::login_oidc))
        .route("/console/logout", post(routes::logout))
        .route("/console/connections", get(routes::connections))
        .route("/console/sessions", get(routes::sessions))
        .route("/console/sessions/{id}", get(routes::session))
        .route("/console/sessions/{id}/timeline", get(routes::timeline))
        .route("/console/reviews", get(routes::reviews))
        .route("/console/reviews/queue", get(routes::review_queue))
        .route(
            "/console/reviews/{id}/{verdict}",
            post(routes::decide_review),
        )
        .route(
            "/console/access",
            get(routes::access).post(routes::request_access),
        )
        .route("/console/access/queue", get(routes::access_queue))
        .route(
            "/console/access/{id}/{verdict}",
            post(routes::decide_access),
        )
        .route("/console/audit", get(routes::audit))
        .route("/console/audit/verify", post(routes::audit_verify))
        .route("/console/audit/export", get(routes::audit_export))
        .route("/console/assets/{name}", get(assets::serve))
        .layer(axum::middleware::from_fn_with_state(state, known_host))
        .layer(axum::middleware::map_response(security_headers))
}

/// Refuses requests whose `Host` is not a name the console answers to.
async fn known_host(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(auth::host_name);
    if host.is_some_and(|h| {
        state
            .console
            .hosts
            .iter()
            .any(|k| k.eq_ignore_ascii_case(h))
    }) {
        return next.run(request).await;
    }
    pages::problem(
        axum::http::StatusCode::MISDIRECTED_REQUEST,
        "Unknown host",
        "the console answers only on its own host names (loopback or identity.public_url)",
    )
}

/// Statements and results are attacker-chosen text: besides escaping, no inline script or
/// style may run, nothing may frame the console, and forms post only to it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` with the console's own
    // form posts, which the same-origin check must refuse.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
