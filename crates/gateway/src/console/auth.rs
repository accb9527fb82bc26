//! Who is looking at the console: the sign-in token in the session cookie, and the CSRF
//! token every form posts back.

use std::time::SystemTime;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::api::{ApiState, Caller};
use crate::signin::{Granted, Refusal};

/// The session cookie over plain HTTP (loopback): a sign-in token, sent only to the
/// console's own paths.
const COOKIE: &str = "sluice_console";
/// The same over HTTPS: the `__Host-` prefix makes browsers refuse it from a sibling
/// subdomain or without `Secure` (it must then have `Path=/`).
const SECURE_COOKIE: &str = "__Host-sluice_console";

fn cookie_name(state: &ApiState) -> &'static str {
    if state.signin.secure_cookies() {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// A signed-in viewer.
pub struct Viewer {
    pub caller: Caller,
    pub token_id: String,
    /// The CSRF token for this session's forms.
    pub csrf: String,
}

impl Viewer {
    pub fn user(&self) -> &str {
        &self.caller.identity.user
    }

    /// Whether the viewer may act (decide, request), not only read.
    pub fn acts(&self) -> bool {
        self.caller.role.acts()
    }

    pub fn reads_everything(&self) -> bool {
        self.caller.role.reads_everything()
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

fn csrf_mac(state: &ApiState, token: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&state.console.csrf_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(token.as_bytes());
    mac
}

/// The signed-in viewer, or the answer for someone who is not: a redirect to the sign-in
/// page for a page, 401 for a fragment the script polls.
pub async fn viewer(state: &ApiState, headers: &HeaderMap) -> Result<Viewer, Response> {
    let fragment = headers.contains_key("x-sluice-fragment");
    let out = || {
        if fragment {
            StatusCode::UNAUTHORIZED.into_response()
        } else {
            see_other("/console/login")
        }
    };
    let Some(token) = cookie_value(headers, cookie_name(state)) else {
        return Err(out());
    };
    let tokens = state.tokens.clone();
    let presented = token.clone();
    let verified =
        tokio::task::spawn_blocking(move || tokens.verify(&presented, SystemTime::now())).await;
    let Ok(Ok(verified)) = verified else {
        return Err(out());
    };
    let csrf = hex::encode(csrf_mac(state, &token).finalize().into_bytes());
    Ok(Viewer {
        caller: Caller {
            identity: verified.identity,
            role: verified.role,
        },
        token_id: verified.token_id,
        csrf,
    })
}

/// Checks a state-changing request: the form's CSRF token must be this session's, and a
/// browser's `Origin`, when sent, must be the console's own.
pub fn check_post(
    state: &ApiState,
    headers: &HeaderMap,
    presented_csrf: &str,
) -> Result<(), Box<Response>> {
    if !same_origin(state, headers) {
        return Err(Box::new(forbidden("cross-origin request refused")));
    }
    let Some(token) = cookie_value(headers, cookie_name(state)) else {
        return Err(Box::new(forbidden("not signed in")));
    };
    let ok = hex::decode(presented_csrf)
        .map(|bytes| csrf_mac(state, &token).verify_slice(&bytes).is_ok())
        .unwrap_or(false);
    if !ok {
        return Err(Box::new(forbidden(
            "the form's CSRF token is missing or stale: reload the page and try again",
        )));
    }
    Ok(())
}

/// `false` when the browser says the request comes from another site: `Sec-Fetch-Site`
/// other than same-origin, or an `Origin` that is neither the gateway's public origin nor
/// the `Host` the request was sent to (`Origin: null` included).
pub fn same_origin(state: &ApiState, headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or_default());
    if fetch_site.is_some_and(|site| site != "same-origin" && site != "none") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if origin.eq_ignore_ascii_case(state.signin.public_origin()) {
        return true;
    }
    // The listener itself serves plain HTTP.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")))
}

/// The host name in a `Host` header (`name`, `name:port`, `[v6]:port`).
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn forbidden(message: &str) -> Response {
    super::pages::problem(StatusCode::FORBIDDEN, "Refused", message)
}

pub fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// Sets the session cookie for a fresh sign-in and sends the browser to the console.
pub fn start_session(state: &ApiState, granted: &Granted) -> Response {
    let max_age = granted
        .expires
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs());
    let cookie = if state.signin.secure_cookies() {
        format!(
            "{SECURE_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age={max_age}",
            granted.token
        )
    } else {
        format!(
            "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Lax; Max-Age={max_age}",
            granted.token
        )
    };
    let mut response = see_other("/console/sessions");
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Clears the session cookie.
pub fn end_session_cookie(state: &ApiState, response: &mut Response) {
    let cookie = if state.signin.secure_cookies() {
        format!("{SECURE_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=0")
    } else {
        format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Lax; Max-Age=0")
    };
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// The end of a console sign-in through the identity provider.
pub fn signed_in_by_provider(state: &ApiState, result: Result<Granted, Refusal>) -> Response {
    match result {
        Ok(granted) => start_session(state, &granted),
        Err(refusal) => super::pages::login(
            refusal.status,
            None,
            Some(&refusal.message),
            state.signin.has_provider(),
        ),
    }
}
