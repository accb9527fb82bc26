//! `kind: http` connections: a plain HTTP API behind the gateway. Clients send their sluice
//! token as `Authorization: Bearer …` to `listen.http` under `/CONNECTION/…`; the call is
//! judged by method and path (`http:DELETE /v1/users/7`), recorded, and sent to the API's
//! base URL with the API's own headers (its credential, resolved by the agent) in place of
//! the client's token.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use sluice_agent::SecretRef;
use sluice_core::{
    ApiCall, Decision, Outcome, OutcomeStatus, Pipeline, Request as CallRequest, RequestKind,
};
use tracing::warn;

use super::body::{BoxBody, Counted};
use super::forward::{deliver, Address, ForwardError, DROPPED};
use super::{ApiFrontend, Caller, ClientConnection, Refusal, Waiting};

/// Protocol name on sessions and in the record.
const PROTOCOL: &str = "http";

/// A header the agent adds to every request: text, then optionally a secret reference
/// resolved when the request is sent (`Bearer env:API_TOKEN`).
pub struct InjectedHeader {
    name: HeaderName,
    prefix: String,
    secret: Option<SecretRef>,
}

impl InjectedHeader {
    /// `value` as written in the config; a last word `env:NAME` or `file:PATH` is a secret.
    pub fn parse(name: &str, value: &str) -> anyhow::Result<InjectedHeader> {
        let name = HeaderName::from_bytes(name.as_bytes())?;
        let (prefix, last) = match value.rsplit_once(' ') {
            Some((head, last)) => (format!("{head} "), last),
            None => (String::new(), value),
        };
        Ok(if last.starts_with("env:") || last.starts_with("file:") {
            InjectedHeader {
                name,
                prefix,
                secret: Some(SecretRef::parse(last)),
            }
        } else {
            InjectedHeader {
                name,
                prefix: value.to_owned(),
                secret: None,
            }
        })
    }

    fn value(&self) -> Result<HeaderValue, ForwardError> {
        let secret = match &self.secret {
            Some(s) => s.resolve().map_err(|e| {
                tracing::error!(header = %self.name, error = %e, "cannot read an HTTP API credential");
                ForwardError::Credential
            })?,
            None => String::new(),
        };
        HeaderValue::from_str(&format!("{}{secret}", self.prefix)).map_err(|_| {
            tracing::error!(header = %self.name, "an HTTP API credential is not a header value");
            ForwardError::Credential
        })
    }
}

/// A `kind: http` connection as the agent serves it.
pub struct HttpTarget {
    pub name: String,
    /// `scheme://host[:port][/base]`.
    pub url: Uri,
    pub headers: Vec<InjectedHeader>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer(request: &Request<Incoming>) -> Option<String> {
    let value = request
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal(status, code, message.into())
}

impl ApiFrontend {
    /// One call to a `kind: http` connection.
    pub(super) async fn http_call(
        &self,
        request: Request<Incoming>,
        token: String,
        conn: &ClientConnection,
    ) -> Result<Response<BoxBody>, Refusal> {
        let (mut parts, body) = request.into_parts();
        // `/CONNECTION/rest?query`
        let path = parts.uri.path().trim_start_matches('/').to_owned();
        let (name, rest) = path.split_once('/').unwrap_or((&path, ""));
        let name = percent_decode_str(name).decode_utf8_lossy().into_owned();
        let Some(target) = self.http_targets.iter().find(|t| t.name == name) else {
            return Err(refusal(
                StatusCode::NOT_FOUND,
                "NoSuchConnection",
                format!("no kind: http connection {name:?}; send requests to /CONNECTION/PATH"),
            ));
        };
        let verified = self
            .pipeline
            .verify_token(&token, "the bearer token's holder")
            .await;
        let (identity, role) = match verified {
            Ok(v) => v,
            Err(failure) => {
                self.pipeline
                    .auth_failed("", &target.name, &conn.addr, PROTOCOL, &failure);
                return Err(refusal(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    failure.to_string(),
                ));
            }
        };
        let session = self
            .session(
                conn,
                Caller::Verified(identity, role),
                &target.name,
                PROTOCOL,
            )
            .await?;
        if let Some(message) = session.control.ended() {
            return Err(refusal(StatusCode::FORBIDDEN, "AccessDenied", message));
        }

        // A tunnel through the API is not a call on it (and an agent never opens one).
        if parts.method == hyper::Method::CONNECT {
            return Err(refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "CONNECT is not a call on an API",
            ));
        }
        let resource = resource_of(rest)?;
        let action = parts.method.as_str().to_ascii_uppercase();
        // Frameworks that let a header or parameter stand for the method would run another
        // method than the one judged.
        let overridden = METHOD_OVERRIDES
            .iter()
            .any(|h| parts.headers.contains_key(*h))
            || parts.uri.query().is_some_and(|q| {
                q.split('&').any(|p| {
                    percent_decode_str(p.split('=').next().unwrap_or(""))
                        .decode_utf8_lossy()
                        .eq_ignore_ascii_case("_method")
                })
            });
        // A form body can carry `_method` too: forms are read whole and looked at.
        let form = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_ascii_lowercase())
            .is_some_and(|v| {
                v.starts_with("application/x-www-form-urlencoded")
                    || v.starts_with("multipart/form-data")
            });
        // A form is read whole and its hash recorded; another body streams, unhashed.
        let mut body_hash = None;
        let body_unbound = super::has_body(&parts.headers) && !form;
        let body: BoxBody = if form {
            let _turn = self.buffering.acquire().await.map_err(|_| {
                refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the gateway is stopping",
                )
            })?;
            let read = Limited::new(body, super::MAX_BUFFERED_BODY).collect();
            let bytes = tokio::time::timeout(super::BUFFERING_DEADLINE, read)
                .await
                .map_err(|_| {
                    let (status, code, message) = super::too_slow();
                    refusal(status, code, &message)
                })?
                .map_err(|e| {
                    refusal(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        format!(
                            "a form body is read whole, at most {} bytes: {e}",
                            super::MAX_BUFFERED_BODY
                        ),
                    )
                })?
                .to_bytes();
            // Decoded first: a form parser reads `%5Fmethod` as `_method`.
            let decoded: Vec<u8> = percent_encoding::percent_decode(&bytes).collect();
            if decoded
                .windows(b"_method".len())
                .any(|w| w.eq_ignore_ascii_case(b"_method"))
            {
                return Err(refusal(
                    StatusCode::BAD_REQUEST,
                    "MethodOverride",
                    "a form field _method is refused: send the method itself",
                ));
            }
            body_hash = Some(hex::encode(Sha256::digest(&bytes)));
            super::full(bytes)
        } else {
            body.map_err(|e| -> super::body::BoxError { Box::new(e) })
                .boxed()
        };
        if overridden {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "MethodOverride",
                "method overrides (X-HTTP-Method-Override, _method, …) are refused: send the method itself",
            ));
        }
        let method_is_head = parts.method == hyper::Method::HEAD;
        if session.masking.is_some() {
            // A compressed answer could not be masked.
            parts.headers.insert(
                hyper::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let request_id = session
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let call = CallRequest {
            id: request_id,
            kind: RequestKind::Execute,
            text: format!("http:{action} {resource}"),
            // The query decides what the call does too: recorded, and bound into a
            // fail-mode approval.
            params: parts
                .uri
                .query()
                .map(|q| Some(format!("query: {}", super::recorded_query(q))))
                .into_iter()
                .chain(body_hash.map(|h| Some(format!("body sha256: {h}"))))
                .collect(),
            statement_name: None,
            refusal: None,
            call: Some(ApiCall {
                service: "http".into(),
                action,
                resource: resource.clone(),
                source: None,
                body_unbound,
            }),
        };
        let decision = self
            .pipeline
            .requests(&session.info, vec![call], &Waiting { peer: &conn.peer })
            .await
            .into_iter()
            .next()
            .unwrap_or(Decision::Deny {
                reason: "no decision was made".into(),
            });
        if let Decision::Deny { reason } | Decision::Withdrawn { reason } = decision {
            self.pipeline.outcome(
                &session.info,
                Outcome {
                    request_id,
                    status: OutcomeStatus::NotExecuted {
                        reason: reason.clone(),
                    },
                    duration: Duration::ZERO,
                    masked: Vec::new(),
                    transfer: None,
                },
            );
            return Err(refusal(StatusCode::FORBIDDEN, "AccessDenied", reason));
        }

        let started = Instant::now();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let upstream = self
            .http_send(target, parts, rest, body, bytes_in.clone())
            .await;
        let response = match upstream {
            Ok(response) => response,
            Err(e) => {
                warn!(connection = %target.name, error = %e, "HTTP call failed");
                self.failed(&session, &[request_id], started, &bytes_in, &e);
                return Err(refusal(
                    StatusCode::BAD_GATEWAY,
                    "BadGateway",
                    e.to_string(),
                ));
            }
        };
        let head_only = method_is_head;
        self.answer(
            &session,
            &[request_id],
            "http",
            &resource,
            head_only,
            started,
            bytes_in,
            response,
        )
        .await
    }

    /// Sends the call through the agent that serves `target`: the client's request with
    /// its hop headers dropped, the path under the API's base.
    async fn http_send(
        &self,
        target: &HttpTarget,
        parts: hyper::http::request::Parts,
        rest: &str,
        body: BoxBody,
        bytes_in: Arc<AtomicU64>,
    ) -> Result<Response<BoxBody>, ForwardError> {
        let base = target.url.path().trim_end_matches('/');
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{base}/{rest}?{q}"),
            None => format!("{base}/{rest}"),
        };
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in &parts.headers {
            if !DROPPED.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(length) = parts.headers.get(hyper::header::CONTENT_LENGTH) {
            headers.insert(hyper::header::CONTENT_LENGTH, length.clone());
        }
        let body: BoxBody = Counted::new(body, bytes_in, None).boxed();
        match self.remote.route(&target.name) {
            Some((agent, spec)) => {
                let call = super::remote::Outgoing {
                    service: "http",
                    method: parts.method,
                    path_and_query: &path_and_query,
                    headers: &headers,
                    body,
                    length: None,
                    payload: &sluice_aws::PayloadHash::Unsigned,
                };
                self.remote.send(agent, spec, call).await
            }
            None => send(target, parts.method, &path_and_query, headers, body)
                .await
                .map(|r| {
                    r.map(|b| {
                        b.map_err(|e| -> super::body::BoxError { Box::new(e) })
                            .boxed()
                    })
                }),
        }
    }
}

/// Sends a call to `target` where its agent runs: with the `Host` of the API and the
/// headers the connection adds (its credential resolved here).
pub(super) async fn send(
    target: &HttpTarget,
    method: hyper::Method,
    path_and_query: &str,
    mut headers: hyper::HeaderMap,
    body: BoxBody,
) -> Result<Response<Incoming>, ForwardError> {
    let address = Address::of(&target.url);
    headers.insert(
        hyper::header::HOST,
        HeaderValue::from_str(&address.host_header)
            .map_err(|e| ForwardError::Connect(address.authority.clone(), e.to_string()))?,
    );
    for injected in &target.headers {
        headers.insert(injected.name.clone(), injected.value()?);
    }
    let uri: Uri = path_and_query
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ForwardError::Send(e.to_string()))?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    deliver(&address, &target.tls, request).await
}

/// Headers some frameworks read as the request's method.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    // … and the path (IIS, some Symfony set-ups, proxies' own headers that targets behind
    // them may trust).
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-envoy-original-path",
];

/// Whether a target could read `rest` (a path below the API's base, without its query)
/// differently from how it is written: `.` or `..` segments, empty segments, `;`, encoded
/// separators or backslashes, an encoded `%` (decoded twice), control characters or bytes
/// that are not UTF-8 (a NUL cut, an overlong `.`), or a segment ending in a dot or a space
/// (which some servers strip).
pub(super) fn is_ambiguous(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    let decoded = percent_decode_str(rest).decode_utf8_lossy();
    lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%25")
        || decoded.contains('\\')
        || decoded.contains(';')
        || decoded.starts_with('/')
        || decoded.contains("//")
        || decoded
            .chars()
            .any(|c| c.is_control() || c == char::REPLACEMENT_CHARACTER)
        || decoded
            .split('/')
            .any(|segment| segment == "." || segment == ".." || segment.ends_with(['.', ' ']))
}

/// The path a call acts on, as policy sees it: decoded. A path the target could read
/// differently from the policy — with `.` or `..` segments, encoded separators or
/// backslashes — is refused, so `/public/../admin` cannot pass for `/public/…`.
fn resource_of(rest: &str) -> Result<String, Refusal> {
    if is_ambiguous(rest) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "AmbiguousPath",
            "paths with . or .. segments, empty segments, ';', encoded slashes or backslashes are refused",
        ));
    }
    Ok(format!("/{}", percent_decode_str(rest).decode_utf8_lossy()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_for_policy_and_ambiguous_ones_refused() {
        assert_eq!(
            resource_of("v1/users/7").ok().as_deref(),
            Some("/v1/users/7")
        );
        assert_eq!(resource_of("%61dmin/x").ok().as_deref(), Some("/admin/x"));
        for bad in [
            "/admin/x",
            "admin;x/users",
            "public/../admin",
            "a/%2e%2e/admin",
            "a%2Fb",
            "a\\b",
            "a%5cb",
            "./x",
            "admin%00x",
            "admin%09",
            "admin%20/x",
            "admin.",
            "v1/%252e%252e/admin",
            "%c0%ae%c0%ae/admin",
        ] {
            assert!(resource_of(bad).is_err(), "{bad}");
        }
        for good in ["v1/users.json", "v1/a.b/c", "v1/caf%C3%A9", "v1/x-y_z~1"] {
            assert!(resource_of(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn secrets_in_a_query_are_not_recorded() {
        assert_eq!(
            super::super::recorded_query("draft=1&api_key=s3cr3t&Access%5FToken=t&q"),
            "draft=1&api_key=[redacted]&Access%5FToken=[redacted]&q"
        );
        assert_eq!(
            super::super::recorded_query("pass=p&jwt=j&x=1;token=t"),
            "pass=[redacted]&jwt=[redacted]&x=1&token=[redacted]"
        );
    }

    #[test]
    fn injected_headers_keep_their_secret_apart() {
        let h = InjectedHeader::parse("Authorization", "Bearer env:SOME_TOKEN").unwrap();
        assert_eq!(h.prefix, "Bearer ");
        assert!(h.secret.is_some());
        let h = InjectedHeader::parse("X-Team", "platform eng").unwrap();
        assert_eq!(
            (h.prefix.as_str(), h.secret.is_none()),
            ("platform eng", true)
        );
    }
}
