//! The unauthenticated sign-in routes under `/auth/` (each route checks a credential of
//! its own: password, provider callback, PKCE verifier, refresh handle, workload JWT).

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{Granted, Refusal, BROWSER_COOKIE};
use crate::api::ApiState;

fn refusal(r: Refusal) -> Response {
    (r.status, Json(json!({ "error": r.message }))).into_response()
}

fn granted(g: Result<Granted, Refusal>) -> Response {
    match g {
        Ok(g) => (
            StatusCode::OK,
            // Tokens must not be cached by anything between the gateway and the client.
            [(header::CACHE_CONTROL, "no-store")],
            Json(g.json()),
        )
            .into_response(),
        Err(r) => refusal(r),
    }
}

/// The API's JSON error for a malformed body.
fn rejection(r: JsonRejection) -> Response {
    refusal(Refusal::new(r.status(), r.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    user: String,
    password: String,
}

pub async fn password(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    b: Result<Json<PasswordBody>, JsonRejection>,
) -> Response {
    let b = match b {
        Ok(Json(b)) => b,
        Err(r) => return rejection(r),
    };
    granted(
        state
            .signin
            .password(&b.user, &b.password, &addr.to_string())
            .await,
    )
}

#[derive(Deserialize)]
pub struct StartQuery {
    cli_port: u16,
    challenge: String,
    login_hint: Option<String>,
}

/// Sends the browser to the provider, with the cookie that binds the sign-in to it.
pub fn to_provider(state: &ApiState, url: &str, browser_key: &str) -> Response {
    let mut response = redirect(url);
    if let Ok(cookie) = state.signin.browser_cookie(browser_key).parse() {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub async fn oidc_start(State(state): State<ApiState>, Query(q): Query<StartQuery>) -> Response {
    match state
        .signin
        .browser_start(q.cli_port, &q.challenge, q.login_hint.as_deref())
        .await
    {
        Ok((url, browser_key)) => to_provider(&state, &url, &browser_key),
        Err(r) => page(r.status, "Sign-in could not start", &r.message),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn oidc_callback(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let browser_key = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.to_owned());
    let error = q.error.as_ref().map(|e| match &q.error_description {
        Some(d) => format!("{e}: {d}"),
        None => e.clone(),
    });
    let Some(login_state) = q.state.as_deref() else {
        return page(StatusCode::BAD_REQUEST, "Sign-in failed", "no state");
    };
    match state
        .signin
        .callback(
            q.code.as_deref(),
            login_state,
            browser_key.as_deref(),
            error.as_deref(),
            &addr.to_string(),
        )
        .await
    {
        Ok(super::CallbackEnd::Cli(url)) => redirect(&url),
        Ok(super::CallbackEnd::Console(result)) => {
            crate::console::signed_in_by_provider(&state, result)
        }
        Err(r) => page(r.status, "Sign-in failed", &r.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeBody {
    code: String,
    verifier: String,
}

pub async fn cli_exchange(
    State(state): State<ApiState>,
    b: Result<Json<ExchangeBody>, JsonRejection>,
) -> Response {
    match b {
        Ok(Json(b)) => granted(state.signin.cli_exchange(&b.code, &b.verifier)),
        Err(r) => rejection(r),
    }
}

pub async fn device_start(State(state): State<ApiState>) -> Response {
    match state.signin.device_start().await {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(r) => refusal(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollBody {
    handle: String,
}

pub async fn device_poll(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    b: Result<Json<PollBody>, JsonRejection>,
) -> Response {
    let b = match b {
        Ok(Json(b)) => b,
        Err(r) => return rejection(r),
    };
    match state.signin.device_poll(&b.handle, &addr.to_string()).await {
        Ok(None) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "authorization_pending" })),
        )
            .into_response(),
        Ok(Some(g)) => granted(Ok(g)),
        Err(r) => refusal(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

pub async fn refresh(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    b: Result<Json<RefreshBody>, JsonRejection>,
) -> Response {
    match b {
        Ok(Json(b)) => granted(
            state
                .signin
                .refresh(&b.refresh_token, &addr.to_string())
                .await,
        ),
        Err(r) => rejection(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadBody {
    token: String,
}

pub async fn workload(
    State(state): State<ApiState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    b: Result<Json<WorkloadBody>, JsonRejection>,
) -> Response {
    match b {
        Ok(Json(b)) => granted(state.signin.workload(&b.token, &addr.to_string()).await),
        Err(r) => rejection(r),
    }
}

fn redirect(url: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url.to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

/// A minimal page for the browser; `message` is escaped.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    };
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>sluice</title><h1>{}</h1><p>{}</p>",
        escape(title),
        escape(message)
    );
    (
        status,
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'",
        )],
        Html(html),
    )
        .into_response()
}
