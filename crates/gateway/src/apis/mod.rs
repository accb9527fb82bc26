//! The AWS frontend on `listen.http`: AWS clients (the CLI, SDKs) point
//! `AWS_ENDPOINT_URL` here and sign with a sluice key pair. Each request's signature is
//! checked, the call named (`s3:DeleteObject prod/k`), judged by policy and recorded like
//! a statement, and then sent on, signed again with the connection's real credential.
//! Bodies stream both ways.
//!
//! A client TCP connection is a session per user and connection it uses, as a database
//! connection is; each call is one request in it.

mod assume_role;
mod body;
mod errors;
mod forward;
mod http;
pub mod keys;
mod masking;
pub mod remote;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use sluice_auth::Sealer;
use sluice_aws::{ChunkDecoder, PayloadHash, SigError};
use sluice_core::{
    ApiCall, AuthFailure, Decision, HoldChannel, Identity, Outcome, OutcomeStatus, Pipeline,
    Request as CallRequest, RequestKind, Role, SessionControl, SessionInfo, Transfer,
};
use sluice_mask::{Masking, SessionMasking};
use sluice_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::pipeline::GatewayPipeline;
pub use assume_role::AssumeRole;
use body::{BoxBody, Checked, ChunkFraming, Counted, Dechunked, Sha256Matches};
use errors::{error, Shape};
pub use forward::AwsTarget;
pub use http::HttpTarget;

/// The largest body read whole: services other than S3 sign the body's hash without
/// declaring it, so it must be read before the signature can be checked.
pub(super) const MAX_BUFFERED_BODY: usize = 8 * 1024 * 1024;
/// Bodies being read whole at once (each up to [`MAX_BUFFERED_BODY`]), so that a flood of
/// them cannot take the gateway's memory.
const BUFFERING_AT_ONCE: usize = 8;
/// How long a body read whole may take to arrive: a client that trickles one in holds one
/// of the [`BUFFERING_AT_ONCE`] turns, and must give it back.
pub(super) const BUFFERING_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The refusal of a body that did not arrive within [`BUFFERING_DEADLINE`].
pub(super) fn too_slow() -> (StatusCode, &'static str, String) {
    (
        StatusCode::REQUEST_TIMEOUT,
        "RequestTimeout",
        format!(
            "the request body did not arrive within {} s",
            BUFFERING_DEADLINE.as_secs()
        ),
    )
}
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new connection may take to send its first byte and, for https://, to finish
/// the TLS handshake (before the header timeout starts).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers a request may carry once: sluice and the service must read the same value.
const SINGLE_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "content-type",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-copy-source",
    "x-amz-target",
    "x-amz-decoded-content-length",
    "x-amz-trailer",
];

/// How long a header-signed request's signature counts as used (its validity window).
const REPLAY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Protocol name on sessions and in the record.
const PROTOCOL: &str = "aws";

pub(crate) fn full(bytes: Bytes) -> BoxBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The AWS listener's state.
pub struct ApiFrontend {
    pipeline: Arc<GatewayPipeline>,
    store: Arc<Store>,
    sealer: Arc<Sealer>,
    /// `kind: aws` connections, in config order.
    targets: Vec<AwsTarget>,
    /// `kind: http` connections.
    http_targets: Vec<HttpTarget>,
    virtual_host: Option<String>,
    masking: Option<Arc<Masking>>,
    pub(super) buffering: tokio::sync::Semaphore,
    /// Client connections at once (`limits.max_connections`).
    connections: Arc<tokio::sync::Semaphore>,
    tls: TlsAcceptor,
    /// The connections remote agents serve.
    remote: remote::RemoteApis,
}

/// One client TCP connection: its sessions by (user, connection).
struct ClientConnection {
    addr: String,
    sessions: tokio::sync::Mutex<HashMap<(String, String), Arc<CallSession>>>,
    /// A second handle on the socket, to see the client hang up while a call is held.
    peer: TcpStream,
}

/// Whether a request carries a body (a length over zero, or chunked).
pub(super) fn has_body(headers: &hyper::HeaderMap) -> bool {
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Whether the client's first byte opens a TLS handshake (record type 22).
async fn starts_tls(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    Ok(n == 1 && first[0] == 0x16)
}

/// The connection, and a second handle on its socket for [`Waiting`].
fn watched(tcp: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let std = tcp.into_std()?;
    let second = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpStream::from_std(second)?))
}

struct CallSession {
    info: SessionInfo,
    next_id: AtomicU64,
    control: Arc<EndFlag>,
    /// The masking rules covering this user on this connection.
    masking: Option<Arc<SessionMasking>>,
}

/// Set when the pipeline ends the session (an access window closed, the gateway stops):
/// later calls on it are refused.
#[derive(Default)]
struct EndFlag {
    message: Mutex<Option<String>>,
    /// Set with `message`: read for every frame of a streamed answer without locking.
    is_ended: std::sync::atomic::AtomicBool,
}

impl SessionControl for EndFlag {
    fn end(&self, message: &str) {
        *self.message.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.to_owned());
        self.is_ended.store(true, Ordering::Release);
    }
}

impl EndFlag {
    fn ended(&self) -> Option<String> {
        if !self.is_ended.load(Ordering::Acquire) {
            return None;
        }
        self.message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A body that fails as soon as its session is ended.
struct UntilEnded {
    inner: BoxBody,
    control: Arc<EndFlag>,
}

impl hyper::body::Body for UntilEnded {
    type Data = hyper::body::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Some(message) = self.control.ended() {
            return std::task::Poll::Ready(Some(Err(Box::new(std::io::Error::other(message)))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP client cannot be told anything while its call is held; it waits for the answer,
/// and withdraws the call by hanging up.
struct Waiting<'a> {
    /// A second handle on the client's socket (hyper does not read it while a call is held).
    peer: &'a TcpStream,
}

/// How often a held call looks whether its client hung up.
const HANGUP_CHECK: Duration = Duration::from_millis(250);

impl HoldChannel for Waiting<'_> {
    fn notice(&self, _message: &str) {}

    fn withdrawn(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let peer = self.peer;
        Box::pin(async move {
            loop {
                // Read-closed shows a hang-up even while unread request bytes wait.
                match peer.ready(tokio::io::Interest::READABLE).await {
                    Ok(ready) if ready.is_read_closed() => return,
                    Err(_) => return,
                    Ok(_) => tokio::time::sleep(HANGUP_CHECK).await,
                }
            }
        })
    }
}

/// A refusal: HTTP status, AWS error code, message.
struct Refusal(StatusCode, &'static str, String);

impl From<SigError> for Refusal {
    fn from(e: SigError) -> Refusal {
        let status = match e {
            SigError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            SigError::Missing | SigError::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        };
        let status = if matches!(e, SigError::Missing) {
            StatusCode::FORBIDDEN
        } else {
            status
        };
        Refusal(status, e.code(), e.to_string())
    }
}

fn request_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// How the listener takes clients.
pub struct ListenOptions {
    /// The domain of virtual-hosted S3 addressing (`BUCKET.<domain>`), if used.
    pub virtual_host: Option<String>,
    pub max_connections: usize,
    /// The gateway's certificate, for clients that connect with `https://`.
    pub tls: TlsAcceptor,
}

/// The connections the listener serves, by kind.
pub struct ApiTargets {
    pub aws: Vec<AwsTarget>,
    pub http: Vec<HttpTarget>,
    /// Those of them that remote agents serve.
    pub remote: remote::RemoteApis,
}

impl ApiFrontend {
    pub fn new(
        pipeline: Arc<GatewayPipeline>,
        store: Arc<Store>,
        sealer: Sealer,
        targets: ApiTargets,
        masking: Option<Arc<Masking>>,
        listen: ListenOptions,
    ) -> ApiFrontend {
        ApiFrontend {
            pipeline,
            store,
            sealer: Arc::new(sealer),
            targets: targets.aws,
            http_targets: targets.http,
            remote: targets.remote,
            virtual_host: listen.virtual_host,
            masking,
            buffering: tokio::sync::Semaphore::new(BUFFERING_AT_ONCE),
            connections: Arc::new(tokio::sync::Semaphore::new(listen.max_connections)),
            tls: listen.tls,
        }
    }

    /// Accepts AWS clients until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, addr) = listener.accept().await?;
            // Over the limit, a connection is closed at once; the others carry on.
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                warn!(client = %addr, "too many AWS/HTTP client connections; closing one");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.connection(tcp, addr.to_string()).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, addr: String) {
        let _ = tcp.set_nodelay(true);
        let (tcp, peer) = match watched(tcp) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, client = %addr, "cannot watch an AWS/HTTP client connection");
                return;
            }
        };
        let client = Arc::new(ClientConnection {
            addr,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            peer,
        });
        let (this, conn) = (self.clone(), client.clone());
        let service = service_fn(move |request| {
            let (this, conn) = (this.clone(), conn.clone());
            async move { Ok::<_, Infallible>(this.handle(request, &conn).await) }
        });
        let http = http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .clone();
        // One port for http:// and https://: a TLS ClientHello starts with a handshake record.
        // The first byte and the whole handshake come within one deadline.
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let served = match tokio::time::timeout_at(deadline, starts_tls(&tcp)).await {
            Ok(Ok(true)) => match tokio::time::timeout_at(deadline, self.tls.accept(tcp)).await {
                Ok(Ok(tls)) => http.serve_connection(TokioIo::new(tls), service).await,
                Ok(Err(e)) => {
                    debug!(error = %e, client = %client.addr, "TLS with an AWS/HTTP client failed");
                    return;
                }
                Err(_) => return,
            },
            Ok(Ok(false)) => http.serve_connection(TokioIo::new(tcp), service).await,
            Ok(Err(_)) | Err(_) => return,
        };
        if let Err(e) = served {
            debug!(error = %e, client = %client.addr, "AWS client connection ended");
        }
        for (_, session) in client.sessions.lock().await.drain() {
            self.pipeline
                .session_closed(&session.info, Some("client closed".into()));
        }
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        conn: &ClientConnection,
    ) -> Response<BoxBody> {
        let id = request_id();
        if let Some(token) = http::bearer(&request) {
            return match self.http_call(request, token, conn).await {
                Ok(response) => response,
                Err(Refusal(status, code, message)) => {
                    error(Shape::Http, status, code, &message, &id)
                }
            };
        }
        let target_header = request.headers().contains_key("x-amz-target");
        // Before the service is known, refusals take S3's shape (the likeliest client).
        let mut shape = Shape::S3;
        match self.call(request, conn, &mut shape, target_header).await {
            Ok(response) => response,
            Err(Refusal(status, code, message)) => error(shape, status, code, &message, &id),
        }
    }

    async fn call(
        &self,
        request: Request<Incoming>,
        conn: &ClientConnection,
        shape: &mut Shape,
        target_header: bool,
    ) -> Result<Response<BoxBody>, Refusal> {
        let (mut parts, body) = request.into_parts();
        // A header the service reads once must come once: otherwise sluice and the service
        // might each read another copy.
        for name in SINGLE_HEADERS {
            if parts.headers.get_all(*name).iter().count() > 1 {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    format!("the {name} header may be sent once"),
                ));
            }
        }
        let info = sluice_aws::sigv4::parse(&parts.uri, &parts.headers)?;
        *shape = Shape::for_request(&info.service, target_header);
        if info.presigned() && info.service != "s3" {
            // A presigned URL does not sign a body: for other services anyone holding it
            // could send any payload.
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "NotImplemented",
                format!(
                    "presigned URLs are accepted for S3 only, not {}",
                    info.service
                ),
            ));
        }
        let key = match keys::open(&self.store, &self.sealer, &info.access_key).await {
            Ok(key) => key,
            Err(e) => {
                let failure = AuthFailure::BadCredentials(info.access_key.clone());
                self.pipeline
                    .auth_failed(&info.access_key, "", &conn.addr, PROTOCOL, &failure);
                let code = match e {
                    keys::KeyError::Expired(_) => "ExpiredToken",
                    keys::KeyError::Store(_)
                    | keys::KeyError::Unavailable
                    | keys::KeyError::Sealing => {
                        return Err(Refusal(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "ServiceUnavailable",
                            e.to_string(),
                        ))
                    }
                    _ => "InvalidAccessKeyId",
                };
                return Err(Refusal(StatusCode::FORBIDDEN, code, e.to_string()));
            }
        };
        // Services other than S3 sign the body's hash without declaring it; query-protocol
        // services name the action in a form body; an S3 batch delete names its keys in
        // its body. Those bodies are read whole before anything else.
        let batch_delete = info.service == "s3"
            && parts.method == hyper::Method::POST
            && sluice_aws::classify(
                "s3",
                &parts.method,
                &parts.uri,
                &parts.headers,
                self.virtual_host.as_deref(),
                None,
            )
            .action
                == "DeleteObjects";
        let read_whole = info.payload.is_none() || info.service != "s3" || batch_delete;
        let (body, computed) = if read_whole {
            if info.payload.as_ref().is_some_and(PayloadHash::is_streaming) {
                return Err(Refusal(
                    StatusCode::NOT_IMPLEMENTED,
                    "NotImplemented",
                    format!(
                        "streamed (aws-chunked) bodies are supported for S3 uploads only, not {}",
                        info.service
                    ),
                ));
            }
            let _turn = self.buffering.acquire().await.map_err(|_| {
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the gateway is stopping".into(),
                )
            })?;
            let read = Limited::new(body, MAX_BUFFERED_BODY).collect();
            let bytes = tokio::time::timeout(BUFFERING_DEADLINE, read)
                .await
                .map_err(|_| {
                    let (status, code, message) = too_slow();
                    Refusal(status, code, message)
                })?
                .map_err(|e| {
                    Refusal(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        format!("the request body could not be read whole (at most {MAX_BUFFERED_BODY} bytes): {e}"),
                    )
                })?
                .to_bytes();
            let actual = hex::encode(Sha256::digest(&bytes));
            if let Some(PayloadHash::Sha256(declared)) = &info.payload {
                if *declared != actual {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "XAmzContentSHA256Mismatch",
                        "the body does not match its declared x-amz-content-sha256".into(),
                    ));
                }
            }
            (Upload::Buffered(bytes), Some(PayloadHash::Sha256(actual)))
        } else {
            (Upload::Streaming(body), None)
        };
        let verified = match sluice_aws::verify(
            &info,
            &parts.method,
            &parts.uri,
            &parts.headers,
            &key.secret,
            computed.as_ref(),
            SystemTime::now(),
        ) {
            Ok(v) => v,
            Err(e) => {
                let failure = AuthFailure::BadCredentials(key.user.clone());
                self.pipeline
                    .auth_failed(&key.user, "", &conn.addr, PROTOCOL, &failure);
                return Err(e.into());
            }
        };
        // A header-signed request that changes something is not meant to be sent twice
        // (presigned URLs are). Reads are exempt: the same read signed within the same
        // second has the same signature (a listing run twice, a quick retry), and repeating
        // one changes nothing.
        let changes = !matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD);
        if !info.presigned() && changes {
            // Remembered in the store for as long as the signature is accepted: up to the
            // skew window after the time it names (which may be ahead of the gateway's
            // clock), so a restart does not reopen the window.
            let now = SystemTime::now();
            let named = sluice_aws::sigv4::request_time(&info).unwrap_or(now);
            let until = named.max(now) + REPLAY_WINDOW;
            let (store, signature) = (self.store.clone(), info.signature.clone());
            let first_use = tokio::task::spawn_blocking(move || {
                store.use_signature(
                    &signature,
                    crate::views::unix_ms(until),
                    crate::views::unix_ms(now),
                )
            })
            .await;
            let first_use = match first_use {
                Ok(Ok(first)) => first,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot record a used AWS signature");
                    return Err(Refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "the gateway cannot check this request right now; try again".into(),
                    ));
                }
                Err(_) => {
                    return Err(Refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "the gateway cannot check this request right now; try again".into(),
                    ))
                }
            };
            if !first_use {
                let failure = AuthFailure::BadCredentials(key.user.clone());
                self.pipeline
                    .auth_failed(&key.user, "", &conn.addr, PROTOCOL, &failure);
                return Err(Refusal(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    "this signed request was already used; sign each request anew".into(),
                ));
            }
        }
        let target = self.target_for(key.connection.as_deref(), &info.service)?;
        let session = self
            .session(
                conn,
                Caller::StoredUser(key.user.clone()),
                &target.name,
                PROTOCOL,
            )
            .await?;
        if let Some(message) = session.control.ended() {
            return Err(Refusal(StatusCode::FORBIDDEN, "AccessDenied", message));
        }

        let form = match &body {
            Upload::Buffered(bytes) => Some(bytes.as_ref()),
            Upload::Streaming(_) => None,
        };
        let op = sluice_aws::classify(
            &info.service,
            &parts.method,
            &parts.uri,
            &parts.headers,
            self.virtual_host.as_deref(),
            form,
        );
        // What is sent on must be what was named: a bucket S3 would not accept could carry
        // a path or query of its own into the forwarded request.
        let bucket = op.resource.split('/').next().unwrap_or("");
        if op.service == "s3" && !bucket.is_empty() && !sluice_aws::valid_bucket_name(bucket) {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "InvalidBucketName",
                "the bucket name is not one S3 accepts".into(),
            ));
        }
        let head_only = parts.method == hyper::Method::HEAD;
        if session.masking.is_some() {
            // What the answer says it is decides whether it is masked: the client may not
            // rename it, nor have it compressed, streamed or transformed.
            let overrides = sluice_aws::query_param_names(&parts.uri)
                .iter()
                .any(|p| p.to_ascii_lowercase().starts_with("response-content-"));
            let unmaskable = matches!(op.action.as_str(), "SelectObjectContent")
                || parts
                    .uri
                    .path()
                    .ends_with("/response-streaming-invocations");
            if overrides || unmaskable {
                return Err(Refusal(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    "answers are masked for you: response-content-* overrides, S3 Select and streamed invocations are refused".into(),
                ));
            }
            parts.headers.insert(
                hyper::header::ACCEPT_ENCODING,
                hyper::header::HeaderValue::from_static("identity"),
            );
            // A Lambda's log tail comes back in a header, which is not masked.
            parts.headers.remove("x-amz-log-type");
        }
        let request_id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let text = match &op.source {
            Some(source) => format!("{} {} from {source}", op.qualified_action(), op.resource),
            None => format!("{} {}", op.qualified_action(), op.resource),
        };
        // What else decides what the call does, recorded with it and bound into a fail-mode
        // approval: its query (less a presigned URL's signature) and its body's hash (never
        // the body, which may carry secrets).
        let mut params = Vec::new();
        if let Some((_, query)) =
            without_presigning(parts.uri.path_and_query().map_or("", |p| p.as_str()))
                .split_once('?')
        {
            params.push(Some(format!("query: {}", recorded_query(query))));
        }
        params.push(Some(match (&body, &info.payload) {
            (Upload::Buffered(bytes), _) => {
                format!("body sha256: {}", hex::encode(Sha256::digest(bytes)))
            }
            (Upload::Streaming(_), Some(PayloadHash::Sha256(hash))) => {
                format!("body sha256: {hash}")
            }
            (Upload::Streaming(_), Some(other)) => format!("body: {}", other.as_str()),
            (Upload::Streaming(_), None) => "body: unsigned".to_owned(),
        }));
        let body_unbound = has_body(&parts.headers)
            && !matches!(
                (&body, &info.payload),
                (Upload::Buffered(_), _) | (_, Some(PayloadHash::Sha256(_)))
            );
        let call = CallRequest {
            id: request_id,
            kind: RequestKind::Execute,
            text,
            params,
            statement_name: None,
            refusal: None,
            call: Some(ApiCall {
                service: op.service.clone(),
                action: op.action.clone(),
                resource: op.resource.clone(),
                source: op.source.clone(),
                body_unbound,
            }),
        };
        let mut calls = vec![call];
        // A batch delete is judged (and recorded) as the DeleteObject of each of its keys.
        if op.action == "DeleteObjects" {
            let keys = match &body {
                Upload::Buffered(bytes) => sluice_aws::batch_delete_keys(bytes),
                Upload::Streaming(_) => None,
            };
            let Some(keys) = keys else {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "MalformedXML",
                    "the batch delete's keys cannot be read unambiguously".into(),
                ));
            };
            let bucket = op.resource.clone();
            for key in keys {
                let resource = format!("{bucket}/{key}");
                calls.push(CallRequest {
                    id: session.next_id.fetch_add(1, Ordering::Relaxed),
                    kind: RequestKind::Execute,
                    text: format!("s3:DeleteObject {resource} (in DeleteObjects)"),
                    params: Vec::new(),
                    statement_name: None,
                    refusal: None,
                    call: Some(ApiCall {
                        service: "s3".into(),
                        action: "DeleteObject".into(),
                        resource,
                        source: None,
                        // Named by the batch's body, which was read and hashed.
                        body_unbound: false,
                    }),
                });
            }
        }
        let ids: Vec<u64> = calls.iter().map(|c| c.id).collect();
        let refused = self
            .pipeline
            .requests(&session.info, calls, &Waiting { peer: &conn.peer })
            .await
            .into_iter()
            .find_map(|d| match d {
                Decision::Allow => None,
                Decision::Deny { reason } | Decision::Withdrawn { reason } => Some(reason),
            });
        let started = Instant::now();
        if let Some(reason) = refused {
            self.record(&session, &ids, |_| Outcome {
                request_id: 0,
                status: OutcomeStatus::NotExecuted {
                    reason: reason.clone(),
                },
                duration: Duration::ZERO,
                masked: Vec::new(),
                transfer: None,
            });
            return Err(Refusal(StatusCode::FORBIDDEN, "AccessDenied", reason));
        }

        // What the target gets: the payload, checked on the way.
        let bytes_in = Arc::new(AtomicU64::new(0));
        let header_u64 = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let declared = info
            .payload
            .clone()
            .or(computed)
            .unwrap_or(PayloadHash::Unsigned);
        // What an aws-chunked upload may end with.
        let announced = parts
            .headers
            .get("x-amz-trailer")
            .and_then(|v| v.to_str().ok());
        let (upstream_body, length, upstream_payload): (BoxBody, Option<u64>, PayloadHash) =
            match (body, &declared) {
                (Upload::Buffered(bytes), _) => {
                    let length = bytes.len() as u64;
                    let hash = PayloadHash::Sha256(hex::encode(Sha256::digest(&bytes)));
                    (full(bytes), Some(length), hash)
                }
                (Upload::Streaming(body), PayloadHash::Sha256(hash)) => (
                    Checked::new(body, Sha256Matches::new(hash)).boxed(),
                    header_u64("content-length"),
                    declared.clone(),
                ),
                (Upload::Streaming(body), PayloadHash::Unsigned) => (
                    body.map_err(Into::into).boxed(),
                    header_u64("content-length"),
                    PayloadHash::Unsigned,
                ),
                (Upload::Streaming(body), PayloadHash::StreamingSigned { .. }) => (
                    Dechunked::new(
                        body,
                        ChunkDecoder::signed(verified).announcing(announced),
                        header_u64("x-amz-decoded-content-length"),
                    )
                    .boxed(),
                    header_u64("x-amz-decoded-content-length"),
                    PayloadHash::Unsigned,
                ),
                // Passed on chunked, so that its trailing checksum reaches the target,
                // which checks it and keeps it with the object (or the part).
                (Upload::Streaming(body), PayloadHash::StreamingUnsigned) => (
                    Checked::new(
                        body,
                        ChunkFraming::new(
                            ChunkDecoder::unsigned().announcing(announced),
                            header_u64("x-amz-decoded-content-length"),
                        ),
                    )
                    .boxed(),
                    header_u64("content-length"),
                    PayloadHash::StreamingUnsigned,
                ),
            };
        let upstream_body = Counted::new(upstream_body, bytes_in.clone(), None).boxed();
        let mut path_and_query = path_style(
            &parts.uri,
            &op,
            self.virtual_host.as_deref(),
            &parts.headers,
        );
        if info.presigned() {
            // The target gets the call signed in headers with the real credential; the
            // client's query-string signature names the sluice key.
            path_and_query = without_presigning(&path_and_query);
        }
        let answer = match self.remote.route(&target.name) {
            Some((agent, spec)) => {
                let call = remote::Outgoing {
                    service: &info.service,
                    method: parts.method.clone(),
                    path_and_query: &path_and_query,
                    headers: &parts.headers,
                    body: upstream_body,
                    length,
                    payload: &upstream_payload,
                };
                self.remote.send(agent, spec, call).await
            }
            None => forward::send(
                target,
                &info.service,
                parts.method.clone(),
                &path_and_query,
                &parts.headers,
                upstream_body,
                length,
                &upstream_payload,
            )
            .await
            .map(|r| r.map(|b| b.map_err(|e| -> body::BoxError { Box::new(e) }).boxed())),
        };
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                warn!(connection = %target.name, error = %e, "AWS call failed");
                self.failed(&session, &ids, started, &bytes_in, &e);
                return Err(match e {
                    forward::ForwardError::Upload { code, message } => {
                        Refusal(StatusCode::BAD_REQUEST, code, message)
                    }
                    other => Refusal(
                        StatusCode::BAD_GATEWAY,
                        "ServiceUnavailable",
                        other.to_string(),
                    ),
                });
            }
        };
        self.answer(
            &session,
            &ids,
            &op.service,
            &op.resource,
            head_only,
            started,
            bytes_in,
            response,
        )
        .await
    }

    /// Records the outcome of each of `ids` (a call, and the keys of a batch delete): the
    /// first gets what `outcome` makes of it, the others the same status alone.
    fn record(&self, session: &CallSession, ids: &[u64], outcome: impl FnOnce(u64) -> Outcome) {
        record_outcomes(&self.pipeline, &session.info, ids, outcome);
    }

    /// Records a call that got no answer from its target.
    fn failed(
        &self,
        session: &CallSession,
        ids: &[u64],
        started: Instant,
        bytes_in: &AtomicU64,
        error: &forward::ForwardError,
    ) {
        self.not_passed_on(session, ids, 502, started, bytes_in, &error.to_string());
    }

    /// Records calls whose answer (`status` from the target, 502 for none) the client did
    /// not get, and why.
    fn not_passed_on(
        &self,
        session: &CallSession,
        ids: &[u64],
        status: u16,
        started: Instant,
        bytes_in: &AtomicU64,
        message: &str,
    ) {
        self.record(session, ids, |request_id| Outcome {
            request_id,
            status: OutcomeStatus::Error {
                code: status.to_string(),
                message: message.to_owned(),
                rows: 0,
            },
            duration: started.elapsed(),
            masked: Vec::new(),
            transfer: Some(Transfer {
                status,
                bytes_in: bytes_in.load(Ordering::Relaxed),
                bytes_out: 0,
            }),
        });
    }

    /// The target's answer on its way to the client: hop headers dropped, masked when the
    /// session's rules cover it, counted, and its `result` recorded when it ends.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        session: &CallSession,
        ids: &[u64],
        service: &str,
        resource: &str,
        head_only: bool,
        started: Instant,
        bytes_in: Arc<AtomicU64>,
        response: Response<BoxBody>,
    ) -> Result<Response<BoxBody>, Refusal> {
        let (mut head, answer_body) = response.into_parts();
        let status = head.status.as_u16();
        for hop in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
        ] {
            head.headers.remove(hop);
        }
        // A masked session's JSON or text answer is read whole, masked, and sent on.
        let mut masked = Vec::new();
        let s3 = service == "s3";
        let masked_session = session.masking.as_ref().filter(|_| !head_only);
        let kind = masked_session
            .and_then(|m| masking::maskable(&head.headers, resource, s3).map(|k| (m, k)));
        // Outside S3 objects (whose binary content cannot be masked anyway), an answer of a
        // kind that cannot be masked is not passed on in a masked session.
        let has_body = !matches!(status, 204 | 304)
            && head
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() != b"0");
        if masked_session.is_some() && kind.is_none() && !s3 && has_body {
            let content_type = head
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type")
                .to_owned();
            let message = format!(
                "this answer is masked for you, and a {content_type} answer cannot be masked"
            );
            self.not_passed_on(session, ids, status, started, &bytes_in, &message);
            return Err(Refusal(StatusCode::FORBIDDEN, "AccessDenied", message));
        }
        if kind.is_some() {
            // A part of a value, or a compressed one, cannot be masked reliably.
            let encoded = head
                .headers
                .get(hyper::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("identity")
                });
            if head.status == StatusCode::PARTIAL_CONTENT || encoded {
                let message = "this answer is masked for you and cannot be masked in ranges or compressed; read it whole".to_owned();
                self.not_passed_on(session, ids, status, started, &bytes_in, &message);
                return Err(Refusal(StatusCode::FORBIDDEN, "AccessDenied", message));
            }
        }
        let answer_body: BoxBody = if let Some((masking, kind)) = kind {
            let whole = match body::read_whole(answer_body, masking::MAX_MASKED_BODY).await {
                Ok(whole) => whole,
                Err(e) => {
                    let message = format!(
                        "the answer cannot be masked (over {} bytes, or cut off: {e}), so it is not passed on",
                        masking::MAX_MASKED_BODY
                    );
                    self.not_passed_on(session, ids, status, started, &bytes_in, &message);
                    return Err(Refusal(StatusCode::FORBIDDEN, "AccessDenied", message));
                }
            };
            let body = match masking::mask_body(masking, kind, &whole) {
                Some((body, counts)) => {
                    masked = counts;
                    // What the target said about its own bytes no longer holds.
                    let stale: Vec<_> = head
                        .headers
                        .keys()
                        .filter(|k| {
                            k.as_str().starts_with("x-amz-checksum-") || k.as_str() == "content-md5"
                        })
                        .cloned()
                        .collect();
                    for name in stale {
                        head.headers.remove(name);
                    }
                    Bytes::from(body)
                }
                None => whole,
            };
            head.headers
                .insert(hyper::header::CONTENT_LENGTH, body.len().into());
            full(body)
        } else {
            answer_body
        };
        let pipeline = self.pipeline.clone();
        let info_for_end = session.info.clone();
        let ids = ids.to_vec();
        let on_end: body::OnEnd = Box::new(move |bytes_out, complete| {
            let transfer = Transfer {
                status,
                bytes_in: bytes_in.load(Ordering::Relaxed),
                bytes_out,
            };
            let status = if status < 400 && complete {
                OutcomeStatus::Ok {
                    tag: format!("HTTP {status}"),
                    rows: 0,
                }
            } else {
                OutcomeStatus::Error {
                    code: status.to_string(),
                    message: if complete {
                        format!("the target answered HTTP {status}")
                    } else {
                        "the answer was cut off before its end".into()
                    },
                    rows: 0,
                }
            };
            record_outcomes(&pipeline, &info_for_end, &ids, |request_id| Outcome {
                request_id,
                status,
                duration: started.elapsed(),
                masked,
                transfer: Some(transfer),
            });
        });
        // An answer still streaming when the session is ended (its token revoked, its
        // access window closed) stops there, as a PostgreSQL session does.
        let answer_body = UntilEnded {
            inner: answer_body,
            control: session.control.clone(),
        }
        .boxed();
        let counted = Counted::new(answer_body, Arc::new(AtomicU64::new(0)), Some(on_end));
        Ok(Response::from_parts(head, counted.boxed()))
    }

    /// The connection a call goes to: the key's own, or the one serving its service.
    fn target_for(&self, bound: Option<&str>, service: &str) -> Result<&AwsTarget, Refusal> {
        let serving = |t: &&AwsTarget| t.services.iter().any(|s| s == service);
        let found = match bound {
            Some(name) => self.targets.iter().filter(serving).find(|t| t.name == name),
            None => self.targets.iter().find(serving),
        };
        found.ok_or_else(|| {
            Refusal(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                match bound {
                    Some(name) => format!("connection {name:?} does not serve {service}"),
                    None => format!("no connection serves {service}"),
                },
            )
        })
    }

    /// The session of a caller on `connection` within this client connection, opened (and
    /// admitted) on first use. An AWS key names a stored user; a bearer token was verified
    /// already.
    async fn session(
        &self,
        conn: &ClientConnection,
        caller: Caller,
        connection: &str,
        protocol: &'static str,
    ) -> Result<Arc<CallSession>, Refusal> {
        let user = match &caller {
            Caller::StoredUser(name) => name.clone(),
            Caller::Verified(identity, _) => identity.user.clone(),
        };
        let user = user.as_str();
        let mut sessions = conn.sessions.lock().await;
        let key = (user.to_owned(), connection.to_owned());
        if let Some(open) = sessions.get(&key) {
            return Ok(open.clone());
        }
        let refuse = |failure: &AuthFailure| {
            self.pipeline
                .auth_failed(user, connection, &conn.addr, protocol, failure);
            Refusal(StatusCode::FORBIDDEN, "AccessDenied", failure.to_string())
        };
        let (identity, role) = match caller {
            Caller::Verified(identity, role) => (identity, role),
            Caller::StoredUser(name) => {
                let store = self.store.clone();
                let found = tokio::task::spawn_blocking(move || store.get_user(&name))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                let row = match found {
                    Ok(Some(row)) => row,
                    Ok(None) => return Err(refuse(&AuthFailure::BadCredentials(user.to_owned()))),
                    Err(e) => return Err(refuse(&AuthFailure::Unavailable(e))),
                };
                let identity = Identity {
                    user: row.name.clone(),
                    groups: row.groups.clone(),
                    credential: None,
                    actor: row.actor,
                };
                (identity, row.role)
            }
        };
        let identity = self
            .pipeline
            .admit(identity, role, connection)
            .await
            .map_err(|f| refuse(&f))?;
        let masking = match &self.masking {
            Some(rules) => rules.for_session(connection, &identity).map_err(|e| {
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("the masking rules cannot be applied: {e}"),
                )
            })?,
            None => None,
        };
        let info = SessionInfo {
            id: {
                let bytes: [u8; 8] = rand::random();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            },
            identity,
            connection: connection.to_owned(),
            protocol,
            client_addr: conn.addr.clone(),
            tls: false,
            application_name: None,
            client_settings: Vec::new(),
            agent_context: None,
            fail_fast_reviews: false,
            served_by: None,
        };
        let control = Arc::new(EndFlag::default());
        self.pipeline
            .session_opened(&info, control.clone())
            .await
            .map_err(|e| {
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("the call cannot be recorded, so it is not made: {e}"),
                )
            })?;
        info!(session = %info.id, user, connection, protocol, "API session opened");
        let session = Arc::new(CallSession {
            info,
            next_id: AtomicU64::new(1),
            control,
            masking,
        });
        sessions.insert(key, session.clone());
        Ok(session)
    }
}

/// Records `outcome(ids[0])`, and for every other id the same status alone.
fn record_outcomes(
    pipeline: &GatewayPipeline,
    session: &SessionInfo,
    ids: &[u64],
    outcome: impl FnOnce(u64) -> Outcome,
) {
    let Some((first, rest)) = ids.split_first() else {
        return;
    };
    let outcome = outcome(*first);
    for id in rest {
        pipeline.outcome(
            session,
            Outcome {
                request_id: *id,
                status: outcome.status.clone(),
                duration: outcome.duration,
                masked: Vec::new(),
                transfer: None,
            },
        );
    }
    pipeline.outcome(session, outcome);
}

/// Who a call comes from, as far as its credential told.
enum Caller {
    /// An AWS key's user, looked up when the session opens.
    StoredUser(String),
    /// A bearer token's holder, verified.
    Verified(Identity, Role),
}

/// The request body as it arrived: read whole (services that do not declare its hash) or
/// still streaming.
enum Upload {
    Buffered(Bytes),
    Streaming(Incoming),
}

/// A query as the record keeps it: the values of parameters whose names say they carry a
/// secret (`api_key`, `token`, `password`, …) are replaced, so a client's or an API's
/// credential passed in a URL is not written down.
pub(crate) fn recorded_query(query: &str) -> String {
    const SECRET_NAMES: &[&str] = &[
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "credential",
        "signature",
        "session",
        "sig",
        "pass",
        "jwt",
        "bearer",
        "otp",
        "code",
    ];
    // `;` separates parameters too, for some servers.
    query
        .split(['&', ';'])
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => {
                let lower = percent_encoding::percent_decode_str(name)
                    .decode_utf8_lossy()
                    .to_ascii_lowercase();
                if SECRET_NAMES.iter().any(|s| lower.contains(s)) {
                    format!("{name}=[redacted]")
                } else {
                    pair.to_owned()
                }
            }
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `path?query` without the query parameters of a presigned URL's signature.
fn without_presigning(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !sluice_aws::PRESIGNING.contains(&name)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// The path and query to send to the target: path-style (`/bucket/key`) also for a call
/// that came virtual-hosted, since the target's host name is not the gateway's.
fn path_style(
    uri: &hyper::Uri,
    op: &sluice_aws::Operation,
    virtual_host: Option<&str>,
    headers: &hyper::HeaderMap,
) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if op.service != "s3" {
        return path_and_query;
    }
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .unwrap_or("");
    let bucket = virtual_host
        .and_then(|base| host.strip_suffix(base))
        .and_then(|prefix| prefix.strip_suffix('.'))
        .filter(|b| !b.is_empty());
    match bucket {
        Some(bucket) => format!("/{bucket}{path_and_query}"),
        None => path_and_query,
    }
}
