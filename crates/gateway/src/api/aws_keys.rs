//! AWS key pairs for oneself: `sluice aws-keys issue` without `--user` comes here, as the
//! holder of the bearer token. Users see and revoke their own keys; admins see and revoke
//! everyone's.

use std::time::{Duration, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sluice_core::Role;
use tracing::info;

use super::{authorize, ApiState, Need};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueBody {
    /// The one `kind: aws` connection the key is for.
    #[serde(default)]
    connection: Option<String>,
    /// Lifetime, e.g. `8h` (default 12h).
    #[serde(default)]
    ttl: Option<String>,
}

/// `POST /api/v1/aws-keys`: a key pair for the caller.
pub(crate) async fn issue(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<IssueBody>, JsonRejection>,
) -> Response {
    let caller = match authorize(&state, &headers, Need::Act, "POST /api/v1/aws-keys").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let ttl = match body.ttl.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(12 * 3600),
        Some(Ok(ttl)) => ttl,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    if let Some(name) = &body.connection {
        match state.connections.iter().find(|c| &c.name == name) {
            Some(c) if c.kind == "aws" && c.allows(&caller) => {}
            Some(c) if c.kind == "aws" => {
                return error(
                    StatusCode::FORBIDDEN,
                    format!("you may not use connection {name:?}"),
                )
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("no kind: aws connection {name:?}"),
                )
            }
        }
    }
    let (store, sealer, user) = (
        state.store.clone(),
        state.sealer.clone(),
        caller.identity.user.clone(),
    );
    let connection = body.connection.clone();
    let issued = tokio::task::spawn_blocking(move || {
        crate::apis::keys::issue(&store, &sealer, &user, connection.as_deref(), ttl)
    })
    .await;
    match issued {
        Ok(Ok(k)) => {
            info!(user = %k.user, key = %k.access_key_id, "AWS key issued through the API");
            (
                StatusCode::CREATED,
                Json(json!({
                    "access_key_id": k.access_key_id,
                    "secret_access_key": k.secret_access_key,
                    "user": k.user,
                    "connection": k.connection,
                    "expires": humantime::format_rfc3339_seconds(k.expires).to_string(),
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key could not be issued",
        ),
    }
}

/// `GET /api/v1/aws-keys`: the caller's keys (an admin's: everyone's). Never the secrets.
pub(crate) async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match authorize(&state, &headers, Need::Any, "GET /api/v1/aws-keys").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let user = (caller.role != Role::Admin).then(|| caller.identity.user.clone());
    let store = state.store.clone();
    let rows = match tokio::task::spawn_blocking(move || store.list_aws_keys(user.as_deref())).await
    {
        Ok(Ok(rows)) => rows,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the metadata store is unavailable",
            )
        }
    };
    let now = crate::views::unix_ms(SystemTime::now());
    let list: Vec<_> = rows
        .iter()
        .map(|k| crate::apis::keys::key_json(k, now))
        .collect();
    Json(list).into_response()
}

/// `DELETE /api/v1/aws-keys/{id}`: revokes one of the caller's keys (an admin: anyone's).
pub(crate) async fn revoke(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match authorize(&state, &headers, Need::Act, "DELETE /api/v1/aws-keys").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let key = id.clone();
    let row = match tokio::task::spawn_blocking(move || store.get_aws_key(&key)).await {
        Ok(Ok(row)) => row,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the metadata store is unavailable",
            )
        }
    };
    // Someone else's key is as good as unknown to a user.
    let Some(row) = row.filter(|r| caller.role == Role::Admin || r.user == caller.identity.user)
    else {
        return error(StatusCode::NOT_FOUND, format!("no AWS key {id:?}"));
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || {
        store.revoke_aws_key(&row.id, crate::views::unix_ms(SystemTime::now()))
    })
    .await
    {
        Ok(Ok(true)) => Json(json!({ "revoked": id })).into_response(),
        Ok(Ok(false)) => error(
            StatusCode::CONFLICT,
            format!("AWS key {id:?} is already revoked"),
        ),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the metadata store is unavailable",
        ),
    }
}
