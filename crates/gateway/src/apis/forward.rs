//! The embedded agent's side of an AWS call: resolve the real credential, sign the request
//! again with it, and send it to the service (or the configured endpoint), streaming both
//! bodies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use sluice_agent::SecretRef;
use sluice_aws::{Credentials, PayloadHash};
use tokio::net::TcpStream;

use super::body::{BoxBody, UploadError};
use sluice_aws::ChunkError;

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `kind: aws` connection as the agent serves it.
pub struct AwsTarget {
    pub name: String,
    pub region: String,
    pub services: Vec<String>,
    /// `scheme://host[:port]`; `None`: AWS's endpoint for the service and region.
    pub endpoint: Option<Uri>,
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    pub session_token: Option<SecretRef>,
    /// The role to sign as (STS AssumeRole with the credential above), if any.
    pub role: Option<super::assume_role::AssumeRole>,
    /// How the target's certificate is checked (the connection's `ca_file`, else the
    /// Mozilla roots).
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for AwsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsTarget")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

/// Why a call could not be sent (shown to the client without secrets).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the connection's credential cannot be read (see the gateway's log)")]
    Credential,
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("the target did not answer: {0}")]
    Send(String),
    #[error("cannot sign the request: {0}")]
    Sign(String),
    /// The client's upload failed its check on the way (the target got no whole body).
    #[error("{message}")]
    Upload { code: &'static str, message: String },
    /// What the remote agent serving the connection said went wrong.
    #[error("{0}")]
    Agent(String),
}

/// Where a target listens, from its URL.
pub(super) struct Address {
    pub https: bool,
    /// The name its certificate is checked against.
    pub host: String,
    /// `host:port`, to connect to.
    pub authority: String,
    /// The `Host` header: the port only when it is not the scheme's.
    pub host_header: String,
}

impl Address {
    pub fn of(uri: &Uri) -> Address {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Address {
            https,
            authority: format!("{host}:{port}"),
            host_header: match uri.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            },
            host,
        }
    }
}

impl AwsTarget {
    /// Where requests for `service` go.
    pub(super) fn endpoint(&self, service: &str) -> Address {
        if let Some(uri) = &self.endpoint {
            return Address::of(uri);
        }
        let host = format!("{service}.{}.amazonaws.com", self.region);
        Address {
            https: true,
            authority: format!("{host}:443"),
            host_header: host.clone(),
            host,
        }
    }

    /// The credential requests are signed with: the connection's own, or the role's.
    async fn credentials(&self) -> Result<Credentials, ForwardError> {
        let base = self.base_credentials()?;
        match &self.role {
            Some(role) => role.credentials(&base, &self.region, &self.tls).await,
            None => Ok(base),
        }
    }

    fn base_credentials(&self) -> Result<Credentials, ForwardError> {
        let resolve = |s: &SecretRef| {
            s.resolve().map_err(|e| {
                // Where the credential should be is for the operator's log, not the client.
                tracing::error!(connection = %self.name, error = %e, "cannot read the AWS credential");
                ForwardError::Credential
            })
        };
        Ok(Credentials {
            access_key_id: resolve(&self.access_key_id)?,
            secret_access_key: resolve(&self.secret_access_key)?,
            session_token: self.session_token.as_ref().map(resolve).transpose()?,
        })
    }
}

/// Headers that belong to the client's hop or its signature, never forwarded.
pub(super) const DROPPED: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "expect",
    "host",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-decoded-content-length",
    "x-amz-trailer",
];

/// Sends one call to `target`: `path_and_query` as the client sent it (path-style),
/// `headers` the client's (its signature and hop headers are dropped), `body` the payload
/// to forward with `length` bytes when known.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    target: &AwsTarget,
    service: &str,
    method: Method,
    path_and_query: &str,
    client_headers: &HeaderMap,
    body: BoxBody,
    length: Option<u64>,
    payload: &PayloadHash,
) -> Result<Response<Incoming>, ForwardError> {
    let credentials = target.credentials().await?;
    let address = target.endpoint(service);
    // An unsigned aws-chunked upload goes on as it came, with what describes its chunks and
    // its trailing checksum.
    let passes_chunks = *payload == PayloadHash::StreamingUnsigned;
    let mut headers = HeaderMap::new();
    for (name, value) in client_headers {
        let chunk_header = matches!(
            name.as_str(),
            "x-amz-decoded-content-length" | "x-amz-trailer"
        );
        if (passes_chunks && chunk_header) || !DROPPED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    // A chunk-signed upload reaches the target decoded (its chunk signatures were checked
    // here), without the trailing checksum it may have announced.
    if !passes_chunks {
        if client_headers.contains_key("x-amz-decoded-content-length") {
            headers.remove("x-amz-sdk-checksum-algorithm");
        }
        without_aws_chunked(&mut headers);
    }
    headers.insert(
        hyper::header::HOST,
        HeaderValue::from_str(&address.host_header)
            .map_err(|e| ForwardError::Sign(e.to_string()))?,
    );
    if let Some(length) = length {
        headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let uri: Uri = path_and_query
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ForwardError::Sign(e.to_string()))?;
    // Content-Length is part of what S3 checks but not signed by the CLI either; the rest
    // of what the client sent is signed again with the real credential.
    sluice_aws::sign(
        &method,
        &uri,
        &mut headers,
        &sluice_aws::SigningScope {
            credentials: &credentials,
            region: &target.region,
            service,
        },
        payload,
        SystemTime::now(),
    )
    .map_err(|e| ForwardError::Sign(e.to_string()))?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;

    deliver(&address, &target.tls, request).await
}

/// Takes `aws-chunked` out of the `Content-Encoding` of a body that goes on decoded.
fn without_aws_chunked(headers: &mut HeaderMap) {
    let Some(encoding) = headers.get(hyper::header::CONTENT_ENCODING).cloned() else {
        return;
    };
    let rest: Vec<&str> = encoding
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && *e != "aws-chunked")
        .collect();
    if rest.is_empty() {
        headers.remove(hyper::header::CONTENT_ENCODING);
    } else if let Ok(value) = HeaderValue::from_str(&rest.join(",")) {
        headers.insert(hyper::header::CONTENT_ENCODING, value);
    }
}

/// Connects to `authority` (TLS checked against `tls` for `host` when `https`) and makes
/// one exchange.
pub(super) async fn deliver(
    address: &Address,
    tls: &Arc<rustls::ClientConfig>,
    request: Request<BoxBody>,
) -> Result<Response<Incoming>, ForwardError> {
    let unreachable = |e: String| ForwardError::Connect(address.authority.clone(), e);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address.authority))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if address.https {
        let name =
            ServerName::try_from(address.host.clone()).map_err(|e| unreachable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<T>(io: T, request: Request<BoxBody>) -> Result<Response<Incoming>, ForwardError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ForwardError::Send(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to the AWS target ended");
        }
    });
    sender.send_request(request).await.map_err(|e| failure(&e))
}

/// Why an exchange failed: the client's upload failing its check, or the target.
pub(super) fn failure(e: &(dyn std::error::Error + 'static)) -> ForwardError {
    let mut cause = e;
    loop {
        if let Some(upload) = cause.downcast_ref::<UploadError>() {
            let code = match upload {
                UploadError::HashMismatch => "XAmzContentSHA256Mismatch",
                UploadError::Chunk(
                    ChunkError::BadSignature(_) | ChunkError::BadTrailerSignature,
                ) => "SignatureDoesNotMatch",
                UploadError::Chunk(_) => "IncompleteBody",
                UploadError::Client(_) => "RequestTimeout",
            };
            return ForwardError::Upload {
                code,
                message: upload.to_string(),
            };
        }
        match cause.source() {
            Some(next) => cause = next,
            None => return ForwardError::Send(cause.to_string()),
        }
    }
}
