//! The AWS frontend on `listen.http`: AWS clients (the CLI, SDKs) point
//! `AWS_ENDPOINT_URL` here and sign with a sluice key pair. Each request's signature is
//! checked, the call named (`s3:DeleteObject prod/k`), judged by policy and recorded like
//! a statement, and then sent on, signed again with the connection's real credential.
//! Bodies stream both ways.
//!
//! A client TCP connection is a session per user and connection it uses, as a database
//! connection is; each call is one request in it.

mod body;
mod errors;
mod forward;
mod http;
pub mod keys;
mod masking;

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
use tracing::{debug, info, warn};

use crate::pipeline::GatewayPipeline;
use body::{BoxBody, Counted, Dechunked, HashChecked};
use errors::{error, Shape};
pub use forward::AwsTarget;
pub use http::{HttpTarget, InjectedHeader};

/// The largest body read whole: services other than S3 sign the body's hash without
/// declaring it, so it must be read before the signature can be checked.
const MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;
/// How long a header-signed request's signature counts as used (its validity window).
const REPLAY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Signatures remembered at most, to bound memory under a flood.
const MAX_REMEMBERED: usize = 200_000;

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
    /// Bearer tokens of `kind: http` callers.
    tokens: sluice_auth::Tokens,
    virtual_host: Option<String>,
    masking: Option<Arc<Masking>>,
    seen: Mutex<SeenSignatures>,
}

/// Header-signed requests already served, so a captured request cannot be sent again
/// while its signature is still within the clock-skew window. (Presigned URLs are meant
/// to be used more than once until they expire.)
#[derive(Default)]
struct SeenSignatures {
    at: HashMap<String, Instant>,
}

impl SeenSignatures {
    /// `false` when `signature` was seen within the window.
    fn first_use(&mut self, signature: &str, now: Instant) -> bool {
        if self.at.len() >= MAX_REMEMBERED {
            self.at
                .retain(|_, t| now.duration_since(*t) < REPLAY_WINDOW);
        }
        match self.at.get(signature) {
            Some(t) if now.duration_since(*t) < REPLAY_WINDOW => false,
            _ => {
                self.at.insert(signature.to_owned(), now);
                true
            }
        }
    }
}

/// One client TCP connection: its sessions by (user, connection).
struct ClientConnection {
    addr: String,
    sessions: tokio::sync::Mutex<HashMap<(String, String), Arc<CallSession>>>,
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
}

impl SessionControl for EndFlag {
    fn end(&self, message: &str) {
        *self.message.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.to_owned());
    }
}

impl EndFlag {
    fn ended(&self) -> Option<String> {
        self.message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// An HTTP client cannot be told anything while its call is held; it waits for the answer.
struct Waiting;

impl HoldChannel for Waiting {
    fn notice(&self, _message: &str) {}

    fn withdrawn(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
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

impl ApiFrontend {
    pub fn new(
        pipeline: Arc<GatewayPipeline>,
        store: Arc<Store>,
        sealer: Sealer,
        targets: Vec<AwsTarget>,
        http_targets: Vec<HttpTarget>,
        virtual_host: Option<String>,
        masking: Option<Arc<Masking>>,
    ) -> ApiFrontend {
        let tokens = sluice_auth::Tokens::new(store.clone());
        ApiFrontend {
            tokens,
            pipeline,
            store,
            sealer: Arc::new(sealer),
            targets,
            http_targets,
            virtual_host,
            masking,
            seen: Mutex::new(SeenSignatures::default()),
        }
    }

    /// Accepts AWS clients until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, addr) = listener.accept().await?;
            let this = self.clone();
            tokio::spawn(async move { this.connection(tcp, addr.to_string()).await });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, addr: String) {
        let _ = tcp.set_nodelay(true);
        let client = Arc::new(ClientConnection {
            addr,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
        });
        let (this, conn) = (self.clone(), client.clone());
        let service = service_fn(move |request| {
            let (this, conn) = (this.clone(), conn.clone());
            async move { Ok::<_, Infallible>(this.handle(request, &conn).await) }
        });
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await
        {
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
        let (parts, body) = request.into_parts();
        let info = sluice_aws::sigv4::parse(&parts.uri, &parts.headers)?;
        *shape = Shape::for_request(&info.service, target_header);
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
        // Services other than S3 sign the body's hash without declaring it.
        let (body, computed) = if info.payload.is_none() {
            let bytes = Limited::new(body, MAX_BUFFERED_BODY)
                .collect()
                .await
                .map_err(|e| {
                    Refusal(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        format!("the request body could not be read whole (at most {MAX_BUFFERED_BODY} bytes): {e}"),
                    )
                })?
                .to_bytes();
            let hash = PayloadHash::Sha256(hex::encode(Sha256::digest(&bytes)));
            (Upload::Buffered(bytes), Some(hash))
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
        if !info.presigned() {
            let first = self
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_use(&info.signature, Instant::now());
            if !first {
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
        let request_id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let text = match &op.source {
            Some(source) => format!("{} {} from {source}", op.qualified_action(), op.resource),
            None => format!("{} {}", op.qualified_action(), op.resource),
        };
        let call = CallRequest {
            id: request_id,
            kind: RequestKind::Execute,
            text,
            params: Vec::new(),
            statement_name: None,
            refusal: None,
            call: Some(ApiCall {
                service: op.service.clone(),
                action: op.action.clone(),
                resource: op.resource.clone(),
                source: op.source.clone(),
            }),
        };
        let decision = self
            .pipeline
            .requests(&session.info, vec![call], &Waiting)
            .await
            .into_iter()
            .next()
            .unwrap_or(Decision::Deny {
                reason: "no decision was made".into(),
            });
        let started = Instant::now();
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
        let (upstream_body, length, upstream_payload): (BoxBody, Option<u64>, PayloadHash) =
            match (body, &declared) {
                (Upload::Buffered(bytes), _) => {
                    let length = bytes.len() as u64;
                    (full(bytes), Some(length), declared.clone())
                }
                (Upload::Streaming(body), PayloadHash::Sha256(hash)) => (
                    HashChecked::new(body, hash).boxed(),
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
                        ChunkDecoder::signed(verified),
                        header_u64("x-amz-decoded-content-length"),
                    )
                    .boxed(),
                    header_u64("x-amz-decoded-content-length"),
                    PayloadHash::Unsigned,
                ),
                (Upload::Streaming(body), PayloadHash::StreamingUnsigned) => (
                    Dechunked::new(
                        body,
                        ChunkDecoder::unsigned(),
                        header_u64("x-amz-decoded-content-length"),
                    )
                    .boxed(),
                    header_u64("x-amz-decoded-content-length"),
                    PayloadHash::Unsigned,
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
        let answer = forward::send(
            target,
            &info.service,
            parts.method.clone(),
            &path_and_query,
            &parts.headers,
            upstream_body,
            length,
            &upstream_payload,
        )
        .await;
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                warn!(connection = %target.name, error = %e, "AWS call failed");
                self.failed(&session, request_id, started, &bytes_in, &e);
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
            request_id,
            &op.resource,
            started,
            bytes_in,
            response,
        )
        .await
    }

    /// Records a call that got no answer from its target.
    fn failed(
        &self,
        session: &CallSession,
        request_id: u64,
        started: Instant,
        bytes_in: &AtomicU64,
        error: &forward::ForwardError,
    ) {
        self.pipeline.outcome(
            &session.info,
            Outcome {
                request_id,
                status: OutcomeStatus::Error {
                    code: "502".into(),
                    message: error.to_string(),
                    rows: 0,
                },
                duration: started.elapsed(),
                masked: Vec::new(),
                transfer: Some(Transfer {
                    status: 502,
                    bytes_in: bytes_in.load(Ordering::Relaxed),
                    bytes_out: 0,
                }),
            },
        );
    }

    /// The target's answer on its way to the client: hop headers dropped, masked when the
    /// session's rules cover it, counted, and its `result` recorded when it ends.
    async fn answer(
        &self,
        session: &CallSession,
        request_id: u64,
        resource: &str,
        started: Instant,
        bytes_in: Arc<AtomicU64>,
        response: Response<Incoming>,
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
        let kind = session
            .masking
            .as_ref()
            .filter(|_| head.status.is_success())
            .and_then(|m| masking::maskable(&head.headers, resource).map(|k| (m, k)));
        let answer_body: BoxBody = if let Some((masking, kind)) = kind {
            let whole = match Limited::new(answer_body, masking::MAX_MASKED_BODY)
                .collect()
                .await
            {
                Ok(whole) => whole.to_bytes(),
                Err(e) => {
                    let message = format!(
                        "the answer cannot be masked (over {} bytes, or cut off: {e}), so it is not passed on; read it in smaller ranges",
                        masking::MAX_MASKED_BODY
                    );
                    self.pipeline.outcome(
                        &session.info,
                        Outcome {
                            request_id,
                            status: OutcomeStatus::Error {
                                code: status.to_string(),
                                message: message.clone(),
                                rows: 0,
                            },
                            duration: started.elapsed(),
                            masked: Vec::new(),
                            transfer: Some(Transfer {
                                status,
                                bytes_in: bytes_in.load(Ordering::Relaxed),
                                bytes_out: 0,
                            }),
                        },
                    );
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
                .map_err(|e| -> body::BoxError { Box::new(e) })
                .boxed()
        };
        let pipeline = self.pipeline.clone();
        let info_for_end = session.info.clone();
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
            pipeline.outcome(
                &info_for_end,
                Outcome {
                    request_id,
                    status,
                    duration: started.elapsed(),
                    masked,
                    transfer: Some(transfer),
                },
            );
        });
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

/// `path?query` without the query parameters of a presigned URL's signature.
fn without_presigning(path_and_query: &str) -> String {
    const SIGNING: &[&str] = &[
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    ];
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !SIGNING.contains(&name)
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
