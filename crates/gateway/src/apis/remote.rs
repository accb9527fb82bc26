//! API calls served by a remote agent. The gateway judges and records the call as for the
//! embedded agent, then sends it through the tunnel: the connection as configured (its
//! credential as a reference), the request's method, path and headers, then its body in
//! frames. The agent — the only place the credential is resolved — signs the call again
//! (AWS) or adds the API's headers (HTTP), sends it, and streams the answer back.
//!
//! On the stream after the tunnel's `Call` request: gateway → agent, body frames (`u32`
//! length, bytes; length 0 ends the body, `u32::MAX` abandons it, so the target never gets
//! it whole); agent → gateway, one [`Answer`] message, then the answer's body until the
//! end of the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sluice_agent::SecretRef;
use sluice_aws::PayloadHash;
use sluice_tunnel::agent::{CallService, Permits};
use sluice_tunnel::gateway::Agents;
use sluice_tunnel::{frame, CallStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::body::{BoxBody, BoxError};
use super::forward::{self, Address, AwsTarget, ForwardError};
use super::http::{HttpTarget, InjectedHeader};
use super::AssumeRole;

/// Ends a body: nothing more follows.
const END: u32 = 0;
/// Abandons a body: it failed its check on the gateway.
const ABANDON: u32 = u32::MAX;
/// Largest body frame (what one read of the client's body yields is far less).
const MAX_FRAME: u32 = 16 * 1024 * 1024;
/// Connections whose targets an agent keeps built (and their role credentials cached).
const MAX_BUILT: usize = 256;
/// Body frames buffered between the tunnel and the HTTP client at each end.
const QUEUED_FRAMES: usize = 4;

/// A `kind: aws` connection as written in the configuration (credentials as references).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AwsSpec {
    pub name: String,
    pub region: String,
    pub services: Vec<String>,
    pub endpoint: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub sts_endpoint: Option<String>,
    /// The CA that signs the target's certificate (PEM), when not a public one.
    pub ca_pem: Option<String>,
}

/// A `kind: http` connection as written in the configuration (header secrets as references).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpSpec {
    pub name: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub ca_pem: Option<String>,
}

impl AwsSpec {
    /// The target this describes; nothing is resolved yet.
    pub fn target(&self) -> Result<AwsTarget> {
        let name = &self.name;
        let role = match &self.role_arn {
            Some(arn) => {
                let sts = self
                    .sts_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region))
                    .parse()
                    .with_context(|| format!("connection {name}: sts_endpoint"))?;
                Some(AssumeRole::new(
                    arn.clone(),
                    self.external_id.clone(),
                    format!("sluice-{name}"),
                    sts,
                ))
            }
            None => None,
        };
        Ok(AwsTarget {
            name: name.clone(),
            region: self.region.clone(),
            services: self.services.clone(),
            endpoint: self
                .endpoint
                .as_deref()
                .map(str::parse)
                .transpose()
                .with_context(|| format!("connection {name}: endpoint"))?,
            access_key_id: SecretRef::parse(&self.access_key_id),
            secret_access_key: SecretRef::parse(&self.secret_access_key),
            session_token: self.session_token.as_deref().map(SecretRef::parse),
            role,
            tls: crate::tls::client_config_pem(self.ca_pem.as_deref().map(str::as_bytes))
                .with_context(|| format!("connection {name}: ca_file"))?,
        })
    }

    /// The secret references the agent resolves for it.
    fn secrets(&self) -> Vec<&str> {
        [&self.access_key_id, &self.secret_access_key]
            .into_iter()
            .map(String::as_str)
            .chain(self.session_token.as_deref())
            .collect()
    }
}

impl HttpSpec {
    pub fn target(&self) -> Result<HttpTarget> {
        let name = &self.name;
        Ok(HttpTarget {
            name: name.clone(),
            url: self
                .url
                .parse()
                .with_context(|| format!("connection {name}: url"))?,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| InjectedHeader::parse(k, v))
                .collect::<Result<_>>()
                .with_context(|| format!("connection {name}: headers"))?,
            tls: crate::tls::client_config_pem(self.ca_pem.as_deref().map(str::as_bytes))
                .with_context(|| format!("connection {name}: ca_file"))?,
        })
    }

    /// The secret references among its headers (a value's last word).
    fn secrets(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter_map(|(_, v)| v.rsplit(' ').next())
            .filter(|w| w.starts_with("env:") || w.starts_with("file:"))
            .collect()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetSpec {
    Aws(AwsSpec),
    Http(HttpSpec),
}

/// One call, as the agent gets it.
#[derive(Serialize, Deserialize)]
struct RemoteCall {
    target: TargetSpec,
    /// AWS: the signing name of the service.
    service: String,
    method: String,
    path_and_query: String,
    /// AWS: the client's headers (the agent drops its signature and hop headers); HTTP: the
    /// headers to send, without the API's own.
    headers: Vec<(String, Vec<u8>)>,
    length: Option<u64>,
    /// AWS: the payload hash to sign with.
    payload: String,
}

/// The agent's answer to a call, before the answer's body.
#[derive(Serialize, Deserialize)]
enum Answer {
    Response {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
    },
    Failed {
        message: String,
        /// The gateway abandoned the body (it failed a check there).
        abandoned: bool,
    },
}

/// Which connections remote agents serve, and how to reach them.
pub struct RemoteApis {
    pub agents: Arc<Agents>,
    /// Connection → (agent, the connection as the agent gets it).
    pub routes: HashMap<String, (String, TargetSpec)>,
}

/// What the gateway sends for one call (the parts the target gets).
pub struct Outgoing<'a> {
    pub service: &'a str,
    pub method: Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: BoxBody,
    pub length: Option<u64>,
    pub payload: &'a PayloadHash,
}

impl RemoteApis {
    /// The agent serving `connection`, if a remote one does.
    pub fn route(&self, connection: &str) -> Option<&(String, TargetSpec)> {
        self.routes.get(connection)
    }

    /// Sends one call through `agent` and returns the target's answer, its body streaming.
    pub async fn send(
        &self,
        agent: &str,
        target: &TargetSpec,
        call: Outgoing<'_>,
    ) -> Result<Response<BoxBody>, ForwardError> {
        let head_only = call.method == Method::HEAD;
        // Known from the client's request (a Content-Length, or no body at all), so that
        // the agent sends the body as the client did, not chunked.
        let length = call.length.or_else(|| call.body.size_hint().exact());
        let head = RemoteCall {
            target: target.clone(),
            service: call.service.to_owned(),
            method: call.method.as_str().to_owned(),
            path_and_query: call.path_and_query.to_owned(),
            headers: call
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            length,
            payload: call.payload.as_str().to_owned(),
        };
        let head = serde_json::to_value(head).map_err(|e| ForwardError::Send(e.to_string()))?;
        let stream = self
            .agents
            .open_call(agent, head)
            .await
            .map_err(|e| ForwardError::Connect(format!("agent {agent}"), e.to_string()))?;
        let (mut reader, writer) = tokio::io::split(stream);
        // The body goes out while the answer is awaited (a target may answer early).
        let failed_upload = Arc::new(Mutex::new(None));
        tokio::spawn(send_frames(call.body, writer, Some(failed_upload.clone())));
        let answer: Answer = frame::read(&mut reader)
            .await
            .map_err(|e| ForwardError::Send(format!("agent {agent}: {e}")))?;
        match answer {
            Answer::Failed { message, abandoned } => {
                let upload = failed_upload
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Err(match upload {
                    Some(e) if abandoned => e,
                    _ => ForwardError::Agent(message),
                })
            }
            Answer::Response { status, headers } => {
                // No body follows a HEAD or a 204/304, whatever Content-Length says.
                let bodiless = head_only || matches!(status, 204 | 304);
                let length = if bodiless {
                    Some(0)
                } else {
                    content_length(&headers)
                };
                let mut response = Response::new(receive_frames(reader, None, length));
                *response.status_mut() =
                    StatusCode::from_u16(status).map_err(|e| ForwardError::Send(e.to_string()))?;
                *response.headers_mut() = header_map(&headers);
                Ok(response)
            }
        }
    }
}

/// Copies `body` into the stream in frames. A body that fails is abandoned (the far end
/// sees an error, not an end), and why is kept in `failed`, if given, for the client.
async fn send_frames<W: AsyncWrite + Unpin>(
    mut body: BoxBody,
    mut writer: W,
    failed: Option<Arc<Mutex<Option<ForwardError>>>>,
) {
    loop {
        let data = match body.frame().await {
            None => {
                let _ = writer.write_all(&END.to_be_bytes()).await;
                let _ = writer.flush().await;
                return;
            }
            Some(Err(e)) => {
                if let Some(failed) = &failed {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(forward::failure(&*e));
                }
                let _ = writer.write_all(&ABANDON.to_be_bytes()).await;
                let _ = writer.flush().await;
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        for piece in data.chunks(MAX_FRAME as usize) {
            // Non-empty and at most MAX_FRAME, so never one of the markers.
            let length = u32::try_from(piece.len()).unwrap_or(MAX_FRAME);
            if writer.write_all(&length.to_be_bytes()).await.is_err()
                || writer.write_all(piece).await.is_err()
            {
                return;
            }
        }
    }
}

/// A body fed from a channel (the far end of the tunnel). It tells when it has ended the
/// way a body read off a socket does: by its length, when the far end gave one (so an HTTP
/// server that stops at Content-Length sees a complete body, and an HTTP client sends an
/// empty one as no body at all), or by its end marker.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    /// Bytes still to come, when the length is known.
    remaining: Option<u64>,
    /// Ended with its end marker (not cut off, not abandoned).
    ended: bool,
    failed: bool,
}

impl ChannelBody {
    fn new(rx: mpsc::Receiver<Result<Bytes, BoxError>>, length: Option<u64>) -> Self {
        ChannelBody {
            rx,
            remaining: length,
            ended: false,
            failed: false,
        }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                if let Some(remaining) = &mut this.remaining {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = !this.failed;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && (self.ended || self.remaining == Some(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A body read from the stream in frames, until the end marker. One abandoned, or cut off
/// before its end marker, fails (so an HTTP client never takes it for complete, and a
/// target never gets an upload whole); `abandoned` tells which.
/// `length`: the body's length, when the far end gave one.
fn receive_frames<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: R,
    abandoned: Option<Arc<AtomicBool>>,
    length: Option<u64>,
) -> BoxBody {
    let (tx, rx) = mpsc::channel(QUEUED_FRAMES);
    tokio::spawn(async move {
        let fail = |why: &str| Err(Box::new(std::io::Error::other(why.to_owned())) as BoxError);
        loop {
            let length = match reader.read_u32().await {
                Ok(n) => n,
                Err(_) => {
                    let _ = tx.send(fail("the tunnel stream was cut off")).await;
                    return;
                }
            };
            match length {
                END => return,
                ABANDON => {
                    if let Some(abandoned) = &abandoned {
                        abandoned.store(true, Ordering::SeqCst);
                    }
                    let _ = tx.send(fail("the body was abandoned on the way")).await;
                    return;
                }
                n if n > MAX_FRAME => {
                    let _ = tx.send(fail("a body frame is too large")).await;
                    return;
                }
                n => {
                    let mut data = Vec::new();
                    let read = (&mut reader)
                        .take(u64::from(n))
                        .read_to_end(&mut data)
                        .await;
                    if read.is_err() || data.len() != n as usize {
                        let _ = tx.send(fail("the tunnel stream was cut off")).await;
                        return;
                    }
                    if tx.send(Ok(Bytes::from(data))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    ChannelBody::new(rx, length).boxed()
}

/// A path without its query, for the log: a query may carry a key or token.
fn path_only(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

/// The Content-Length among an answer's headers, if one is there and readable.
fn content_length(headers: &[(String, Vec<u8>)]) -> Option<u64> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.trim().parse().ok())
}

fn header_map(headers: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The agent's side: makes the calls the gateway sends.
#[derive(Default)]
pub struct AgentCalls {
    /// Targets built from their specs, kept so that a role's credentials are cached.
    built: Mutex<HashMap<String, (TargetSpec, Arc<Built>)>>,
}

enum Built {
    Aws(Box<AwsTarget>),
    Http(HttpTarget),
}

impl AgentCalls {
    fn built(&self, spec: &TargetSpec) -> Result<Arc<Built>> {
        let name = match spec {
            TargetSpec::Aws(s) => &s.name,
            TargetSpec::Http(s) => &s.name,
        };
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, target)) = built.get(name) {
            if known == spec {
                return Ok(target.clone());
            }
        }
        let target = Arc::new(match spec {
            TargetSpec::Aws(s) => Built::Aws(Box::new(s.target()?)),
            TargetSpec::Http(s) => Built::Http(s.target()?),
        });
        // A gateway serves a handful of connections; one naming ever new ones (broken or
        // hostile) must not grow this without end.
        if built.len() >= MAX_BUILT {
            built.clear();
        }
        built.insert(name.clone(), (spec.clone(), target.clone()));
        Ok(target)
    }

    async fn call(
        &self,
        call: RemoteCall,
        body: BoxBody,
        permits: &Permits,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        let refused = |what: String| {
            warn!(refused = %what, "refused: not among this agent's --allow-target / --allow-secret");
            ForwardError::Send("this agent does not serve that target (see the agent's log)".into())
        };
        let secrets = match &call.target {
            TargetSpec::Aws(s) => s.secrets(),
            TargetSpec::Http(s) => s.secrets(),
        };
        if let Some(secret) = secrets.into_iter().find(|s| !permits.secret(Some(s))) {
            return Err(refused(secret.to_owned()));
        }
        let built = self.built(&call.target).map_err(|e| {
            warn!(error = format!("{e:#}"), "bad API target from the gateway");
            ForwardError::Send("the agent cannot use the target's settings".into())
        })?;
        let method = Method::from_bytes(call.method.as_bytes())
            .map_err(|e| ForwardError::Send(e.to_string()))?;
        // Only a path on the target: an absolute URI or CONNECT could aim past it.
        if method == Method::CONNECT || !call.path_and_query.starts_with('/') {
            return Err(refused(format!(
                "{} {}",
                call.method,
                path_only(&call.path_and_query)
            )));
        }
        let headers = header_map(&call.headers);
        match &*built {
            Built::Aws(target) => {
                let mut addresses = vec![target.endpoint(&call.service).authority];
                if let Some(role) = &target.role {
                    addresses.push(Address::of(&role.sts).authority);
                }
                if let Some(address) = addresses.into_iter().find(|a| !permits.target(a)) {
                    return Err(refused(address));
                }
                let payload = PayloadHash::parse(&call.payload)
                    .map_err(|e| ForwardError::Sign(e.to_string()))?;
                forward::send(
                    target,
                    &call.service,
                    method,
                    &call.path_and_query,
                    &headers,
                    body,
                    call.length,
                    &payload,
                )
                .await
            }
            Built::Http(target) => {
                let address = Address::of(&target.url).authority;
                if !permits.target(&address) {
                    return Err(refused(address));
                }
                // Under the API's base, in a form the target cannot read as a path past it
                // (`/api/../admin`): the gateway refuses such paths from clients too.
                let base = format!("{}/", target.url.path().trim_end_matches('/'));
                let rest = call
                    .path_and_query
                    .strip_prefix(&base)
                    .map(|rest| rest.split_once('?').map_or(rest, |(path, _)| path));
                if rest.is_none_or(|rest| !rest.is_empty() && super::http::is_ambiguous(rest)) {
                    let path = path_only(&call.path_and_query);
                    return Err(refused(format!("{path} outside {base}")));
                }
                super::http::send(target, method, &call.path_and_query, headers, body).await
            }
        }
    }
}

impl CallService for AgentCalls {
    fn serve<'a>(
        &'a self,
        call: serde_json::Value,
        stream: CallStream,
        permits: Arc<Permits>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let (reader, mut writer) = tokio::io::split(stream);
            let abandoned = Arc::new(AtomicBool::new(false));
            let answer = match serde_json::from_value::<RemoteCall>(call) {
                Ok(call) => {
                    let body = receive_frames(reader, Some(abandoned.clone()), call.length);
                    self.call(call, body, &permits).await
                }
                Err(e) => {
                    // Not serde's message, here or to the gateway: it can quote a value of
                    // the call (a path with a presigned signature, a header).
                    warn!(kind = ?e.classify(), "unreadable API call from the gateway (different versions?)");
                    Err(ForwardError::Send(
                        "the agent cannot read the call (see the agent's log)".into(),
                    ))
                }
            };
            let response = match answer {
                Ok(response) => response,
                Err(e) => {
                    let message = e
                        .to_string()
                        .replace("the gateway's log", "the agent's log");
                    let abandoned = abandoned.load(Ordering::SeqCst);
                    let _ = frame::write(&mut writer, &Answer::Failed { message, abandoned }).await;
                    let _ = writer.shutdown().await;
                    return;
                }
            };
            let (head, body) = response.into_parts();
            let answer = Answer::Response {
                status: head.status.as_u16(),
                headers: head
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
            };
            if frame::write(&mut writer, &answer).await.is_err() {
                return;
            }
            let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed();
            send_frames(body, &mut writer, None).await;
            let _ = writer.shutdown().await;
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A body of `chunks`, then an error if `fails`.
    fn body_of(chunks: Vec<Vec<u8>>, fails: bool) -> BoxBody {
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        for chunk in chunks {
            tx.try_send(Ok(Bytes::from(chunk))).unwrap();
        }
        if fails {
            let e: BoxError = Box::new(std::io::Error::other("checksum mismatch"));
            tx.try_send(Err(e)).unwrap();
        }
        ChannelBody::new(rx, None).boxed()
    }

    /// Everything `body` yields, or its error.
    async fn collect(body: BoxBody) -> Result<Vec<u8>, String> {
        body.collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    async fn frames_of(body: BoxBody) -> Vec<u8> {
        let mut wire = Vec::new();
        send_frames(body, &mut wire, None).await;
        wire
    }

    #[tokio::test]
    async fn a_body_crosses_in_frames_and_ends_with_the_end_marker() {
        let wire = frames_of(body_of(vec![b"hello ".to_vec(), b"world".to_vec()], false)).await;
        assert_eq!(&wire[wire.len() - 4..], &END.to_be_bytes());
        let body = receive_frames(std::io::Cursor::new(wire), None, None);
        assert_eq!(collect(body).await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn a_large_piece_is_split_into_frames_of_at_most_the_limit() {
        let big = vec![7u8; MAX_FRAME as usize * 2 + 3];
        let wire = frames_of(body_of(vec![big.clone()], false)).await;
        let mut lengths = Vec::new();
        let mut at = 0;
        loop {
            let n = u32::from_be_bytes(wire[at..at + 4].try_into().unwrap());
            at += 4;
            if n == END {
                break;
            }
            lengths.push(n);
            at += n as usize;
        }
        assert_eq!(lengths, vec![MAX_FRAME, MAX_FRAME, 3]);
        assert_eq!(at, wire.len());
        let body = receive_frames(std::io::Cursor::new(wire), None, None);
        assert_eq!(collect(body).await.unwrap(), big);
    }

    #[tokio::test]
    async fn a_body_cut_off_before_its_end_marker_fails_instead_of_looking_complete() {
        let wire = frames_of(body_of(vec![b"partial".to_vec()], false)).await;
        // Without the end marker.
        let cut = wire[..wire.len() - 4].to_vec();
        let err = collect(receive_frames(std::io::Cursor::new(cut), None, None))
            .await
            .unwrap_err();
        assert!(err.contains("cut off"), "{err}");
        // In the middle of a frame.
        let cut = wire[..6].to_vec();
        let err = collect(receive_frames(std::io::Cursor::new(cut), None, None))
            .await
            .unwrap_err();
        assert!(err.contains("cut off"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_body_is_abandoned_and_the_far_end_is_told() {
        let failed = Arc::new(Mutex::new(None));
        let mut wire = Vec::new();
        send_frames(
            body_of(vec![b"some".to_vec()], true),
            &mut wire,
            Some(failed.clone()),
        )
        .await;
        assert_eq!(&wire[wire.len() - 4..], &ABANDON.to_be_bytes());
        assert!(failed.lock().unwrap().is_some(), "why it failed is kept");
        let abandoned = Arc::new(AtomicBool::new(false));
        let err = collect(receive_frames(
            std::io::Cursor::new(wire),
            Some(abandoned.clone()),
            None,
        ))
        .await
        .unwrap_err();
        assert!(err.contains("abandoned"), "{err}");
        assert!(abandoned.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_frame_longer_than_the_limit_is_refused() {
        let mut wire = (MAX_FRAME + 1).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0u8; 16]);
        let err = collect(receive_frames(std::io::Cursor::new(wire), None, None))
            .await
            .unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    fn http_spec(name: &str) -> TargetSpec {
        TargetSpec::Http(HttpSpec {
            name: name.into(),
            // Nothing listens there: a call that got past the checks would fail to connect.
            url: "http://127.0.0.1:9/api".into(),
            headers: vec![("authorization".into(), "Bearer env:API_TOKEN".into())],
            ca_pem: None,
        })
    }

    fn call_to(target: TargetSpec, method: &str, path: &str) -> RemoteCall {
        RemoteCall {
            target,
            service: String::new(),
            method: method.into(),
            path_and_query: path.into(),
            headers: Vec::new(),
            length: Some(0),
            payload: String::new(),
        }
    }

    async fn refusal(calls: &AgentCalls, call: RemoteCall) -> String {
        let permits = Permits::default();
        match calls.call(call, body_of(Vec::new(), false), &permits).await {
            Ok(_) => panic!("the call was made"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn the_agent_sends_only_paths_under_the_apis_base() {
        let calls = AgentCalls::default();
        for (method, path) in [
            ("GET", "http://169.254.169.254/latest/meta-data/"),
            ("GET", "//evil.example/api/x"),
            ("CONNECT", "/api/x"),
            ("GET", "/other/x"),
            ("GET", "/apix"),
            ("GET", "*"),
            ("GET", "/api/../admin"),
            ("GET", "/api/x/%2e%2e/%2E%2E/admin?q=1"),
            ("GET", "/api/x%2f..%2fadmin"),
            ("GET", "/api//x"),
        ] {
            let why = refusal(&calls, call_to(http_spec("api"), method, path)).await;
            assert!(
                why.contains("does not serve that target"),
                "{method} {path}: {why}"
            );
        }
        // A path under the base gets past the checks: it fails only for want of a server.
        for path in ["/api/x", "/api/", "/api/a/b.json?x=../y"] {
            let why = refusal(&calls, call_to(http_spec("api"), "GET", path)).await;
            assert!(!why.contains("does not serve that target"), "{path}: {why}");
        }
    }

    #[test]
    fn built_targets_stay_bounded_however_many_connections_are_named() {
        let calls = AgentCalls::default();
        for i in 0..MAX_BUILT * 2 + 1 {
            calls.built(&http_spec(&format!("api-{i}"))).unwrap();
            assert!(calls.built.lock().unwrap().len() <= MAX_BUILT);
        }
        // A changed spec under a known name is built again, not served from the cache.
        let first = calls.built(&http_spec("api-x")).unwrap();
        let same = calls.built(&http_spec("api-x")).unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        let TargetSpec::Http(mut changed) = http_spec("api-x") else {
            unreachable!()
        };
        changed.url = "http://127.0.0.1:10/api".into();
        let rebuilt = calls.built(&TargetSpec::Http(changed)).unwrap();
        assert!(!Arc::ptr_eq(&first, &rebuilt));
    }
}
